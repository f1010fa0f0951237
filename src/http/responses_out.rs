//! Chat's answer in the shapes of the Responses API: a whole chat completion becomes a
//! Response object, and chat's chunks become the Responses stream events in OpenAI's order
//! (`EventMachine`). Both are functions of JSON values, tested without a model.

use super::generation::unix_now;
use crate::error::ApiError;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

/// What every Response object of one request shares: its identity and the request's
/// settings it repeats (`echo`).
#[derive(Debug, Clone)]
pub struct Shell {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub echo: Map<String, Value>,
}

impl Shell {
    pub fn new(model: &str, echo: Map<String, Value>) -> Self {
        Shell {
            id: new_id("resp"),
            created_at: unix_now(),
            model: model.to_string(),
            echo,
        }
    }

    /// The Response at `status`, without output or usage yet.
    fn object(&self, status: &str) -> Map<String, Value> {
        let fields = [
            ("id", json!(self.id)),
            ("object", json!("response")),
            ("created_at", json!(self.created_at)),
            ("status", json!(status)),
            ("completed_at", Value::Null),
            ("error", Value::Null),
            ("incomplete_details", Value::Null),
            ("model", json!(self.model)),
            ("output", json!([])),
            ("usage", Value::Null),
        ];
        let mut object: Map<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        object.extend(self.echo.clone());
        object
    }

    /// The finished Response: chat's `length` finish makes it incomplete, as OpenAI reports
    /// a response cut by `max_output_tokens`.
    fn finished(&self, output: Vec<Value>, usage: Value, finish: Option<&str>) -> Value {
        let incomplete = finish == Some("length");
        let mut object = self.object(if incomplete {
            "incomplete"
        } else {
            "completed"
        });
        if incomplete {
            object.insert(
                "incomplete_details".into(),
                json!({"reason": "max_output_tokens"}),
            );
        } else {
            object.insert("completed_at".into(), json!(unix_now()));
        }
        object.insert("output".into(), Value::Array(output));
        object.insert("usage".into(), usage);
        Value::Object(object)
    }

    /// A whole chat completion (its first choice: `n` is always 1) as a Response.
    pub fn response_of(&self, chat: &Value) -> Value {
        let choice = &chat["choices"][0];
        let message = &choice["message"];
        let finish = choice["finish_reason"].as_str();
        let status = item_status(finish);
        let text = message["content"].as_str().unwrap_or("");
        let calls = message["tool_calls"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let mut output = Vec::new();
        // A response without tool calls always has its message, even an empty one.
        if !text.is_empty() || calls.is_empty() {
            output.push(message_item(&new_id("msg"), text, status, true));
        }
        for call in calls {
            let function = &call["function"];
            let item = Item {
                id: new_id("fc"),
                status,
                kind: Kind::Call {
                    call_id: call["id"].as_str().unwrap_or_default().to_string(),
                    name: function["name"].as_str().unwrap_or_default().to_string(),
                    arguments: function["arguments"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                },
            };
            output.push(item.value());
        }
        self.finished(output, usage(&chat["usage"]), finish)
    }
}

fn item_status(finish: Option<&str>) -> &'static str {
    if finish == Some("length") {
        "incomplete"
    } else {
        "completed"
    }
}

/// Chat's `usage` in the Responses API's words.
fn usage(chat: &Value) -> Value {
    if !chat.is_object() {
        return Value::Null;
    }
    let input = chat["prompt_tokens"].as_u64().unwrap_or(0);
    let output = chat["completion_tokens"].as_u64().unwrap_or(0);
    let cached = chat["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// A message item; `with_part: false` is how `output_item.added` shows it, before its part.
fn message_item(id: &str, text: &str, status: &str, with_part: bool) -> Value {
    let content: Vec<Value> = with_part.then(|| output_text(text)).into_iter().collect();
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// One output item of a stream, as far as it has come.
struct Item {
    id: String,
    status: &'static str,
    kind: Kind,
}

enum Kind {
    Message {
        text: String,
    },
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Item {
    fn value(&self) -> Value {
        match &self.kind {
            Kind::Message { text } => message_item(&self.id, text, self.status, true),
            Kind::Call {
                call_id,
                name,
                arguments,
            } => json!({
                "type": "function_call", "id": self.id, "call_id": call_id, "name": name,
                "arguments": arguments, "status": self.status,
            }),
        }
    }
}

/// Turns chat chunks into Responses events. Items come one after the other: text opens a
/// message, each new tool call closes what is open and opens a `function_call` item; the end
/// closes the last item and sends the whole Response. Every event carries its `type` and the
/// next `sequence_number`.
pub struct EventMachine {
    shell: Shell,
    sequence: u64,
    items: Vec<Item>,
    /// Output index of the item receiving deltas.
    open: Option<usize>,
    /// Chat's tool-call `index` and the output index of its item.
    calls: Vec<(u64, usize)>,
    finish: Option<String>,
    usage: Value,
    out: Vec<Value>,
}

impl EventMachine {
    pub fn new(shell: Shell) -> Self {
        EventMachine {
            shell,
            sequence: 0,
            items: Vec::new(),
            open: None,
            calls: Vec::new(),
            finish: None,
            usage: Value::Null,
            out: Vec::new(),
        }
    }

    /// The next event: `fields` with its `type` and `sequence_number`.
    fn event(&mut self, kind: &str, fields: Value) -> Value {
        let mut event = json!({"type": kind, "sequence_number": self.sequence});
        if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
            event.extend(fields);
        }
        self.sequence += 1;
        event
    }

    fn emit(&mut self, kind: &str, fields: Value) {
        let event = self.event(kind, fields);
        self.out.push(event);
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<Value> {
        let response = Value::Object(self.shell.object("in_progress"));
        self.emit("response.created", json!({"response": response}));
        self.emit("response.in_progress", json!({"response": response}));
        std::mem::take(&mut self.out)
    }

    /// The events of one chat chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<Value> {
        if chunk["usage"].is_object() {
            self.usage = usage(&chunk["usage"]);
        }
        if let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) {
            let delta = &choice["delta"];
            if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                self.text(text);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                self.tool_call(call);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish = Some(reason.to_string());
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Closes what is open and sends `response.completed` (or `response.incomplete`).
    pub fn finish(&mut self) -> Vec<Value> {
        self.close();
        if self.items.is_empty() {
            self.add(Kind::Message {
                text: String::new(),
            });
            self.close();
        }
        let output = self.items.iter().map(Item::value).collect();
        let response = self
            .shell
            .finished(output, self.usage.clone(), self.finish.as_deref());
        let kind = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(kind, json!({"response": response}));
        std::mem::take(&mut self.out)
    }

    /// The `error` event that ends a stream which failed after it started.
    pub fn error(&mut self, error: &ApiError) -> Value {
        self.event(
            "error",
            json!({"code": error.code, "message": error.message, "param": error.param}),
        )
    }

    /// Opens a new item; returns its output index.
    fn add(&mut self, kind: Kind) -> usize {
        let index = self.items.len();
        let prefix = match kind {
            Kind::Message { .. } => "msg",
            Kind::Call { .. } => "fc",
        };
        let item = Item {
            id: new_id(prefix),
            status: "in_progress",
            kind,
        };
        let added = match &item.kind {
            Kind::Message { .. } => message_item(&item.id, "", item.status, false),
            Kind::Call { .. } => item.value(),
        };
        let id = item.id.clone();
        let is_message = matches!(item.kind, Kind::Message { .. });
        self.items.push(item);
        self.open = Some(index);
        self.emit(
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        );
        if is_message {
            self.emit(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text("")}),
            );
        }
        index
    }

    fn text(&mut self, piece: &str) {
        let index = match self.open {
            Some(i) if matches!(self.items[i].kind, Kind::Message { .. }) => i,
            _ => {
                self.close();
                self.add(Kind::Message {
                    text: String::new(),
                })
            }
        };
        let item = &mut self.items[index];
        if let Kind::Message { text } = &mut item.kind {
            text.push_str(piece);
        }
        let id = item.id.clone();
        self.emit(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": piece, "logprobs": []}),
        );
    }

    /// A streamed tool call: its first piece (with `id` and name) opens an item, the next
    /// ones add to its arguments.
    fn tool_call(&mut self, call: &Value) {
        let key = call["index"].as_u64().unwrap_or(0);
        let known = self.calls.iter().find(|(k, _)| *k == key).map(|&(_, i)| i);
        let index = match known {
            Some(i) => i,
            None => {
                self.close();
                let call_id = call["id"]
                    .as_str()
                    .map_or_else(|| new_id("call"), str::to_string);
                let name = call["function"]["name"].as_str().unwrap_or_default();
                let i = self.add(Kind::Call {
                    call_id,
                    name: name.to_string(),
                    arguments: String::new(),
                });
                self.calls.push((key, i));
                i
            }
        };
        let Some(piece) = call["function"]["arguments"]
            .as_str()
            .filter(|p| !p.is_empty())
        else {
            return;
        };
        let item = &mut self.items[index];
        if let Kind::Call { arguments, .. } = &mut item.kind {
            arguments.push_str(piece);
        }
        let id = item.id.clone();
        self.emit(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": piece}),
        );
    }

    /// Ends the open item: its `.done` events, then `response.output_item.done`.
    fn close(&mut self) {
        let Some(index) = self.open.take() else {
            return;
        };
        let item = &mut self.items[index];
        item.status = item_status(self.finish.as_deref());
        let (id, done) = (item.id.clone(), item.value());
        match &item.kind {
            Kind::Message { text } => {
                let text = text.clone();
                let at = json!({"item_id": id, "output_index": index, "content_index": 0});
                let mut text_done = at.clone();
                text_done["text"] = json!(text);
                text_done["logprobs"] = json!([]);
                self.emit("response.output_text.done", text_done);
                let mut part_done = at;
                part_done["part"] = output_text(&text);
                self.emit("response.content_part.done", part_done);
            }
            Kind::Call { arguments, .. } => {
                let fields = json!({"item_id": id, "output_index": index, "arguments": arguments});
                self.emit("response.function_call_arguments.done", fields);
            }
        }
        self.emit(
            "response.output_item.done",
            json!({"output_index": index, "item": done}),
        );
    }
}

/// The events of a streamed Response over chat's `chunks`; an error in them is the last
/// event. Dropping this stream drops `chunks`, which cancels the generation.
pub fn events(
    shell: Shell,
    chunks: BoxStream<'static, Result<Value, ApiError>>,
) -> impl Stream<Item = Value> + Send {
    let mut machine = EventMachine::new(shell);
    let pending: VecDeque<Value> = machine.start().into();
    let state = (machine, chunks, pending, false);
    futures_util::stream::unfold(
        state,
        |(mut machine, mut chunks, mut pending, mut done)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((event, (machine, chunks, pending, done)));
                }
                if done {
                    return None;
                }
                match chunks.next().await {
                    Some(Ok(chunk)) => pending.extend(machine.chunk(&chunk)),
                    Some(Err(error)) => {
                        pending.push_back(machine.error(&error));
                        done = true;
                    }
                    None => {
                        pending.extend(machine.finish());
                        done = true;
                    }
                }
            }
        },
    )
}

#[cfg(test)]
#[path = "responses_out_tests.rs"]
mod tests;
