//! Running a generation request and shaping its output as a chat completion or a text
//! completion, whole or as a stream of chunks: one choice per `n`, each with its text, finish
//! reason and, when asked, log-probabilities. Both are JSON values (`answer.rs`) until the
//! last step, so that `/v1/responses` can reshape chat's.

use super::answer::{Answer, Generated};
use super::dto::Usage;
use super::logprobs::{self, CompletionLogprobs};
use super::tool_calls::{CallParser, Piece};
use crate::account::Meter;
use crate::error::ApiError;
use crate::infer::{
    FinishReason, GenEvent, GenStream, GenerateModel, InferError, Prepared, TokenLogprob,
};
use crate::outcome::Outcome;
use crate::tenancy::{headers, RateStatus};
use axum::http::{HeaderMap, HeaderValue};
use futures_util::stream::StreamExt;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use tokenizers::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Completion,
}

/// Identity of one response, repeated in each of its chunks, and what it shows.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub shape: Shape,
    pub include_usage: bool,
    /// Log-probabilities were asked for.
    pub logprobs: bool,
    /// Completions' `echo`: the prompt's text, shown before each choice's completion.
    pub echo: Option<String>,
    /// The output may hold tool calls; `Some(true)`: or an answer instead (`tool_choice:
    /// "auto"`).
    pub tools: Option<bool>,
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
            logprobs: false,
            echo: None,
            tools: None,
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Queues the admitted request; errors before the first token are returned here (ordinary
/// HTTP errors), errors after it end the stream of chunks. `meter` is ended with the
/// outcome, or by its drop if the client leaves first.
pub async fn respond(
    model: &GenerateModel,
    prepared: Prepared,
    call: Call,
    stream: bool,
    mut meter: Meter,
    status: RateStatus,
) -> Result<Generated, ApiError> {
    let gen = match model.enqueue(prepared).await {
        Ok(gen) => gen,
        Err(e) => {
            meter.fail(&e);
            return Err(e.into());
        }
    };
    meter.running(gen.progress.clone());
    let prompt_tokens = gen.prompt_tokens;
    let choices = Choices::new(&call, gen.n, model.tokenizer.clone());
    let (answer, mut head) = if stream {
        (chunks(gen, call, choices, meter), HeaderMap::new())
    } else {
        let (body, head) = collect(gen, call, choices, meter).await?;
        (Answer::Whole(body), head)
    };
    headers::insert_status(&mut head, &status);
    head.entry("x-prompt-tokens")
        .or_insert(HeaderValue::from(prompt_tokens));
    Ok(Generated {
        answer,
        headers: head,
    })
}

/// What each choice has produced and not yet shown (a stream takes it chunk by chunk).
struct Choice {
    text: String,
    chat: Vec<TokenLogprob>,
    completion: CompletionLogprobs,
    finish: Option<FinishReason>,
    tokens: usize,
    /// Splits the text into the answer and tool calls, when tools were offered.
    parser: Option<CallParser>,
    /// Every call so far, whole: `{id, type, function: {name, arguments}}`.
    calls: Vec<Value>,
    /// Call pieces not yet streamed.
    pieces: Vec<Piece>,
}

impl Choice {
    fn push_text(&mut self, text: &str) {
        let pieces = match &mut self.parser {
            Some(p) => p.push(text),
            None => return self.text.push_str(text),
        };
        self.take(pieces);
    }

    fn take(&mut self, pieces: Vec<Piece>) {
        for piece in pieces {
            match &piece {
                Piece::Text(t) => {
                    self.text.push_str(t);
                    continue;
                }
                Piece::Call { id, name, .. } => self.calls.push(json!({
                    "id": id, "type": "function", "function": {"name": name, "arguments": ""},
                })),
                Piece::Arguments { index, text } => {
                    if let Some(Value::String(args)) =
                        self.calls[*index].pointer_mut("/function/arguments")
                    {
                        args.push_str(text);
                    }
                }
            }
            self.pieces.push(piece);
        }
    }

    /// OpenAI's finish reason: a choice that ended in calls finished for them.
    fn finish_reason(&self) -> Option<&'static str> {
        match self.finish {
            Some(FinishReason::Stop) if !self.calls.is_empty() => Some("tool_calls"),
            f => f.map(FinishReason::as_str),
        }
    }
}

/// Call pieces as a chunk's `delta.tool_calls`: one entry per call, the first carrying the
/// call's id and name, later ones pieces of its arguments.
fn tool_call_deltas(pieces: Vec<Piece>) -> Value {
    let mut out: Vec<Value> = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Call { index, id, name } => out.push(json!({
                "index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""},
            })),
            Piece::Arguments { index, text } => match out.last_mut() {
                Some(last) if last["index"] == index => {
                    if let Some(Value::String(args)) = last.pointer_mut("/function/arguments") {
                        args.push_str(&text);
                    }
                }
                _ => out.push(json!({"index": index, "function": {"arguments": text}})),
            },
            Piece::Text(_) => {}
        }
    }
    Value::Array(out)
}

struct Choices {
    shape: Shape,
    logprobs: bool,
    tokenizer: Arc<Tokenizer>,
    list: Vec<Choice>,
}

impl Choices {
    fn new(call: &Call, n: usize, tokenizer: Arc<Tokenizer>) -> Self {
        let list = (0..n)
            .map(|_| Choice {
                text: call.echo.clone().unwrap_or_default(),
                chat: Vec::new(),
                completion: CompletionLogprobs::default(),
                finish: None,
                tokens: 0,
                parser: call.tools.map(CallParser::new),
                calls: Vec::new(),
                pieces: Vec::new(),
            })
            .collect();
        Choices {
            shape: call.shape,
            logprobs: call.logprobs,
            tokenizer,
            list,
        }
    }

    /// Folds one event in; returns the choice it changed.
    fn apply(&mut self, event: GenEvent) -> Option<usize> {
        match event {
            GenEvent::Prompt { first, scores } => {
                // Echoed prompts carry their own log-probabilities, in every choice.
                for c in &mut self.list {
                    c.completion.push_unscored(&self.tokenizer, first);
                    for s in &scores {
                        c.completion.push(&self.tokenizer, s);
                    }
                }
                None
            }
            GenEvent::Delta {
                index,
                text,
                logprob,
            } => {
                let c = self.list.get_mut(index)?;
                c.push_text(&text);
                if let Some(lp) = logprob {
                    match self.shape {
                        Shape::Chat => c.chat.push(lp),
                        Shape::Completion => c.completion.push(&self.tokenizer, &lp),
                    }
                }
                Some(index)
            }
            GenEvent::Finished {
                index,
                reason,
                completion_tokens,
            } => {
                let c = self.list.get_mut(index)?;
                let rest = c.parser.as_mut().map(CallParser::finish);
                c.take(rest.unwrap_or_default());
                c.finish = Some(reason);
                c.tokens = completion_tokens;
                Some(index)
            }
            GenEvent::Admitted | GenEvent::Failed(_) => None,
        }
    }

    fn completion_tokens(&self) -> usize {
        self.list.iter().map(|c| c.tokens).sum()
    }

    /// The log-probabilities gathered for choice `i` since the last call.
    fn take_logprobs(&mut self, i: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let c = &mut self.list[i];
        match self.shape {
            Shape::Chat => logprobs::chat(&self.tokenizer, &std::mem::take(&mut c.chat)),
            Shape::Completion => c.completion.take(),
        }
    }

    /// Choice `i` as a whole response shows it.
    fn whole(&mut self, i: usize) -> Value {
        let logprobs = self.take_logprobs(i);
        let c = &self.list[i];
        let finish = c.finish_reason();
        match self.shape {
            Shape::Chat => {
                let mut message = json!({"role": "assistant", "content": c.text, "refusal": null});
                if !c.calls.is_empty() {
                    message["tool_calls"] = json!(c.calls);
                    if c.text.is_empty() {
                        message["content"] = Value::Null;
                    }
                }
                json!({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
            }
            Shape::Completion => json!({
                "index": i, "text": c.text, "logprobs": logprobs, "finish_reason": finish,
            }),
        }
    }

    /// Choice `i`'s new text (and log-probabilities) as one streamed chunk's choice.
    fn delta(&mut self, i: usize) -> Value {
        let logprobs = self.take_logprobs(i);
        let c = &mut self.list[i];
        let text = std::mem::take(&mut c.text);
        let pieces = std::mem::take(&mut c.pieces);
        let finish = c.finish_reason();
        match self.shape {
            Shape::Chat => {
                let mut delta = json!({});
                if !text.is_empty() || (finish.is_none() && pieces.is_empty()) {
                    delta["content"] = json!(text);
                }
                if !pieces.is_empty() {
                    delta["tool_calls"] = tool_call_deltas(pieces);
                }
                json!({"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Shape::Completion => {
                json!({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }
}

async fn collect(
    mut gen: GenStream,
    call: Call,
    mut choices: Choices,
    meter: Meter,
) -> Result<(Value, HeaderMap), ApiError> {
    loop {
        match gen.next().await {
            Some(GenEvent::Failed(e)) => {
                meter.fail(&e);
                return Err(e.into());
            }
            Some(event) => {
                choices.apply(event);
            }
            None => break,
        }
    }
    if choices.list.iter().any(|c| c.finish.is_none()) {
        meter.fail(&InferError::ShuttingDown);
        return Err(InferError::ShuttingDown.into());
    }
    let completion = choices.completion_tokens();
    let bill = meter.end(Outcome::Ok, completion as u64, None);
    let usage = Usage::new(gen.prompt_tokens, completion).with_cached(gen.progress.cached());
    let list: Vec<Value> = (0..choices.list.len()).map(|i| choices.whole(i)).collect();
    let object = match call.shape {
        Shape::Chat => "chat.completion",
        Shape::Completion => "text_completion",
    };
    let body = json!({
        "id": call.id,
        "object": object,
        "created": call.created,
        "model": call.model,
        "system_fingerprint": null,
        "choices": list,
        "usage": usage,
    });
    let mut head = HeaderMap::new();
    if let Some(bill) = bill {
        bill.insert_headers(&mut head);
    }
    Ok((body, head))
}

struct StreamState {
    gen: GenStream,
    call: Call,
    choices: Choices,
    pending: VecDeque<Result<Value, ApiError>>,
    done: bool,
    /// Taken when the stream ends; still here if the client leaves first (its drop bills).
    meter: Option<Meter>,
}

fn chunks(gen: GenStream, call: Call, mut choices: Choices, meter: Meter) -> Answer {
    let mut pending = VecDeque::new();
    for i in 0..gen.n {
        // Chat opens each choice with its role; completions' echo shows the prompt first.
        let first = match call.shape {
            Shape::Chat => Some(json!({
                "index": i,
                "delta": {"role": "assistant", "content": "", "refusal": null},
                "logprobs": null,
                "finish_reason": null,
            })),
            Shape::Completion if call.echo.is_some() && !call.logprobs => Some(choices.delta(i)),
            Shape::Completion => None,
        };
        pending.extend(first.map(|c| Ok(chunk(&call, c))));
    }
    let state = StreamState {
        gen,
        call,
        choices,
        pending,
        done: false,
        meter: Some(meter),
    };
    Answer::Chunks(futures_util::stream::unfold(state, next_chunk).boxed())
}

async fn next_chunk(mut st: StreamState) -> Option<(Result<Value, ApiError>, StreamState)> {
    loop {
        if let Some(chunk) = st.pending.pop_front() {
            return Some((chunk, st));
        }
        if st.done {
            return None;
        }
        match st.gen.next().await {
            Some(GenEvent::Failed(e)) => st.fail(e),
            Some(event) => {
                if let Some(i) = st.choices.apply(event) {
                    let choice = st.choices.delta(i);
                    st.pending.push_back(Ok(chunk(&st.call, choice)));
                }
            }
            None if st.choices.list.iter().all(|c| c.finish.is_some()) => st.finish(),
            None => st.fail(InferError::ShuttingDown),
        }
    }
}

impl StreamState {
    fn finish(&mut self) {
        let completion_tokens = self.choices.completion_tokens();
        if let Some(meter) = self.meter.take() {
            meter.end(Outcome::Ok, completion_tokens as u64, None);
        }
        // A stream's cost is known only at its end, after the headers: the final usage
        // chunk (include_usage) and the ledger carry it.
        if self.call.include_usage {
            let usage = Usage::new(self.gen.prompt_tokens, completion_tokens)
                .with_cached(self.gen.progress.cached());
            let mut last = chunk_value(&self.call, None);
            last["usage"] = json!(usage);
            self.pending.push_back(Ok(last));
        }
        self.done = true;
    }

    fn fail(&mut self, error: InferError) {
        if let Some(meter) = self.meter.take() {
            meter.fail(&error);
        }
        self.pending.push_back(Err(ApiError::from(error)));
        self.done = true;
    }
}

fn chunk(call: &Call, choice: Value) -> Value {
    chunk_value(call, Some(choice))
}

/// One streamed chunk. With `include_usage`, OpenAI sends `"usage": null` on every chunk but
/// the last, which carries the totals and no choices.
fn chunk_value(call: &Call, choice: Option<Value>) -> Value {
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
