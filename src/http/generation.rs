//! Running a generation request and shaping its output as a chat completion or a text
//! completion, whole (JSON) or streamed (SSE ending with `data: [DONE]`).

use super::dto::Usage;
use super::meter::Meter;
use crate::error::ApiError;
use crate::infer::{FinishReason, GenEvent, GenStream, GenerateModel, InferError, Prepared};
use crate::ledger::Outcome;
use crate::tenancy::{headers, RateStatus};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Completion,
}

/// Identity of one response, repeated in each of its chunks.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub shape: Shape,
    pub include_usage: bool,
}

impl Call {
    pub fn new(model: &str, shape: Shape, include_usage: bool) -> Self {
        let prefix = match shape {
            Shape::Chat => "chatcmpl",
            Shape::Completion => "cmpl",
        };
        Call {
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created: unix_now(),
            model: model.to_string(),
            shape,
            include_usage,
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Queues the admitted request; errors before the first token become ordinary HTTP errors,
/// errors after it become an error event at the end of the stream. `meter` is ended with
/// the outcome, or by its drop if the client leaves first.
pub async fn respond(
    model: &GenerateModel,
    prepared: Prepared,
    call: Call,
    stream: bool,
    mut meter: Meter,
    status: RateStatus,
) -> Result<Response, ApiError> {
    let gen = match model.enqueue(prepared).await {
        Ok(gen) => gen,
        Err(e) => {
            meter.fail(&e);
            return Err(e.into());
        }
    };
    meter.running(gen.progress.clone());
    let prompt_tokens = gen.prompt_tokens;
    let mut response = if stream {
        sse(gen, call, meter)
    } else {
        collect(gen, call, meter).await?
    };
    headers::insert_status(response.headers_mut(), &status);
    if let Ok(v) = prompt_tokens.to_string().parse() {
        response.headers_mut().entry("x-prompt-tokens").or_insert(v);
    }
    Ok(response)
}

async fn collect(mut gen: GenStream, call: Call, meter: Meter) -> Result<Response, ApiError> {
    let mut text = String::new();
    let (reason, completion) = loop {
        match gen.next().await {
            Some(GenEvent::Delta(t)) => text.push_str(&t),
            Some(GenEvent::Finished {
                reason,
                completion_tokens,
            }) => break (reason, completion_tokens),
            Some(GenEvent::Failed(e)) => {
                meter.fail(&e);
                return Err(e.into());
            }
            Some(GenEvent::Admitted) => {}
            None => {
                meter.fail(&InferError::ShuttingDown);
                return Err(InferError::ShuttingDown.into());
            }
        }
    };
    let bill = meter.end(Outcome::Ok, completion as u64, None);
    let usage = Usage::new(gen.prompt_tokens, completion);
    let choice = match call.shape {
        Shape::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": reason.as_str(),
        }),
        Shape::Completion => json!({
            "index": 0, "text": text, "logprobs": null, "finish_reason": reason.as_str(),
        }),
    };
    let object = match call.shape {
        Shape::Chat => "chat.completion",
        Shape::Completion => "text_completion",
    };
    let mut response = Json(json!({
        "id": call.id,
        "object": object,
        "created": call.created,
        "model": call.model,
        "system_fingerprint": null,
        "choices": [choice],
        "usage": usage,
    }))
    .into_response();
    if let Some(bill) = bill {
        bill.insert_headers(response.headers_mut());
    }
    Ok(response)
}

struct StreamState {
    gen: GenStream,
    call: Call,
    pending: VecDeque<Event>,
    done: bool,
    /// Taken when the stream ends; still here if the client leaves first (its drop bills).
    meter: Option<Meter>,
}

fn sse(gen: GenStream, call: Call, meter: Meter) -> Response {
    let mut pending = VecDeque::new();
    if call.shape == Shape::Chat {
        pending.push_back(chunk(
            &call,
            Some(json!({"role": "assistant", "content": "", "refusal": null})),
            None,
        ));
    }
    let state = StreamState {
        gen,
        call,
        pending,
        done: false,
        meter: Some(meter),
    };
    let events = futures_util::stream::unfold(state, next_event);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn next_event(mut st: StreamState) -> Option<(Result<Event, Infallible>, StreamState)> {
    loop {
        if let Some(event) = st.pending.pop_front() {
            return Some((Ok(event), st));
        }
        if st.done {
            return None;
        }
        match st.gen.next().await {
            Some(GenEvent::Admitted) => {}
            Some(GenEvent::Delta(text)) => {
                let delta = match st.call.shape {
                    Shape::Chat => json!({"content": text}),
                    Shape::Completion => json!(text),
                };
                st.pending.push_back(chunk(&st.call, Some(delta), None));
            }
            Some(GenEvent::Finished {
                reason,
                completion_tokens,
            }) => st.finish(reason, completion_tokens),
            Some(GenEvent::Failed(e)) => st.fail(e),
            None => st.fail(InferError::ShuttingDown),
        }
    }
}

impl StreamState {
    fn finish(&mut self, reason: FinishReason, completion_tokens: usize) {
        if let Some(meter) = self.meter.take() {
            meter.end(Outcome::Ok, completion_tokens as u64, None);
        }
        // A stream's cost is known only at its end, after the headers: the final usage
        // chunk (include_usage) and the ledger carry it.
        let empty = match self.call.shape {
            Shape::Chat => json!({}),
            Shape::Completion => json!(""),
        };
        self.pending
            .push_back(chunk(&self.call, Some(empty), Some(reason.as_str())));
        if self.call.include_usage {
            let usage = Usage::new(self.gen.prompt_tokens, completion_tokens);
            let mut last = chunk_value(&self.call, None, None);
            last["choices"] = json!([]);
            last["usage"] = json!(usage);
            self.pending
                .push_back(Event::default().data(last.to_string()));
        }
        self.pending.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }

    fn fail(&mut self, error: InferError) {
        if let Some(meter) = self.meter.take() {
            meter.fail(&error);
        }
        let error = ApiError::from(error);
        self.pending
            .push_back(Event::default().data(error.body_json()));
        self.pending.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }
}

fn chunk(call: &Call, delta: Option<Value>, finish: Option<&str>) -> Event {
    Event::default().data(chunk_value(call, delta, finish).to_string())
}

/// One streamed chunk. With `include_usage`, OpenAI sends `"usage": null` on every chunk but
/// the last, which carries the totals and no choices.
fn chunk_value(call: &Call, delta: Option<Value>, finish: Option<&str>) -> Value {
    let choice = match (call.shape, delta) {
        (_, None) => None,
        (Shape::Chat, Some(d)) => {
            Some(json!({"index": 0, "delta": d, "logprobs": null, "finish_reason": finish}))
        }
        (Shape::Completion, Some(t)) => {
            Some(json!({"index": 0, "text": t, "logprobs": null, "finish_reason": finish}))
        }
    };
    let object = match call.shape {
        Shape::Chat => "chat.completion.chunk",
        Shape::Completion => "text_completion",
    };
    let mut value = json!({
        "id": call.id,
        "object": object,
        "created": call.created,
        "model": call.model,
        "system_fingerprint": null,
        "choices": choice.into_iter().collect::<Vec<_>>(),
    });
    if call.include_usage {
        value["usage"] = Value::Null;
    }
    value
}
