//! `POST /v1/responses`, OpenAI's Responses API, served statelessly as a translation over
//! chat completions. The request body is rewritten into the chat body `ChatRequest` reads, so
//! every chat check applies and tenancy, limits, ledger and metrics are chat's; an error
//! about a chat field is renamed to the Responses field it came from (`ParamMap`). Chat's
//! answer is reshaped into a Response object or its stream of events (`responses_out.rs`).
//!
//! Nothing is stored: what would need a stored response or conversation
//! (`previous_response_id`, `conversation`, `GET /v1/responses/{id}`) is refused, and fields
//! we do not implement are accepted at their neutral values only, as on the chat path.

use super::answer::Answer;
use super::dto::ChatRequest;
use super::extract::{ApiJson, RequestBody};
use super::handlers::chat_generation;
use super::responses_out::{events, Shell};
use super::responses_params::{Origin, ParamMap};
use super::AppState;
use crate::account::Caller;
use crate::error::ApiError;
use axum::extract::{Extension, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::sync::Arc;

/// The body as parsed JSON; `read` has refused anything but an object.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct ResponsesBody(Value);

impl RequestBody for ResponsesBody {}

pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(ResponsesBody(body)): ApiJson<ResponsesBody>,
) -> Result<Response, ApiError> {
    let req = ResponsesRequest::from_json(&body)?;
    let params = req.params;
    let generated = chat_generation(&state, &caller, req.chat)
        .await
        .map_err(|e| params.rename(e))?;
    let mut response = match generated.answer {
        Answer::Whole(chat) => Json(req.shell.response_of(&chat)).into_response(),
        Answer::Chunks(chunks) => {
            let sse = events(req.shell, chunks).map(|event| {
                let kind = event["type"].as_str().unwrap_or("error").to_string();
                Ok::<_, Infallible>(Event::default().event(kind).data(event.to_string()))
            });
            Sse::new(sse)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
    };
    response.headers_mut().extend(generated.headers);
    Ok(response)
}

/// `GET` and `DELETE /v1/responses/{id}` (and its sub-routes): there is nothing to find.
pub async fn not_stored() -> ApiError {
    ApiError::not_found(
        "Responses are not stored by this server: each one is returned only to the request that \
         created it, and cannot be retrieved, listed, cancelled or deleted afterwards.",
    )
    .with_code("not_found")
}

/// A Responses request as the chat request that serves it.
pub struct ResponsesRequest {
    pub chat: ChatRequest,
    /// Where each part of the chat body came from, to name it in errors.
    pub params: ParamMap,
    /// The identity and the echoed settings of the Response.
    pub shell: Shell,
}

impl ResponsesRequest {
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
        refuse_non_neutral(body)?;
        let (messages, params) = messages(body)?;
        let chat_body = chat_body(body, messages)?;
        // Chat's own request checks, here too (`chat_generation` repeats them) so that a
        // request is judged whole before it reaches a model.
        let chat = ChatRequest::from_json(&chat_body)
            .and_then(|chat| {
                chat.unsupported.check()?;
                chat.ignored.check()?;
                chat.messages()?;
                Ok(chat)
            })
            .map_err(|e| params.rename(e))?;
        let shell = Shell::new(&chat.model, echo(body));
        Ok(ResponsesRequest {
            chat,
            params,
            shell,
        })
    }
}

/// Fields that need a stored state or a feature we lack, each with the values that ask for
/// nothing (`null` always does) and why anything else is refused.
type Neutral = (&'static str, fn(&Value) -> bool, &'static str);

const STATELESS: &str = "this server is stateless and keeps no responses or conversations; \
                         send the whole conversation in `input`";

const NEUTRAL: [Neutral; 9] = [
    ("previous_response_id", |_| false, STATELESS),
    ("conversation", |_| false, STATELESS),
    ("prompt", |_| false, "no stored prompt templates"),
    (
        "background",
        |v| v == false,
        "each response is returned to the request that asks for it",
    ),
    (
        "include",
        |v| v.as_array().is_some_and(Vec::is_empty),
        "no extra output data",
    ),
    (
        "truncation",
        |v| v == "disabled",
        "the input is never truncated; a longer one is a 400",
    ),
    ("reasoning", neutral_reasoning, "no reasoning models"),
    ("max_tool_calls", |_| false, "no limit on tool calls"),
    ("top_logprobs", |v| v == 0, "no log-probabilities"),
];

fn neutral_reasoning(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        o.iter()
            .all(|(k, v)| v.is_null() || (k == "effort" && v == "none"))
    })
}

fn refuse_non_neutral(body: &Value) -> Result<(), ApiError> {
    for (field, neutral, why) in NEUTRAL {
        if body.get(field).is_some_and(|v| !v.is_null() && !neutral(v)) {
            return Err(ApiError::unsupported(field, why));
        }
    }
    Ok(())
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid(format!("Missing required parameter: '{param}'."), param)
        .with_code("missing_required_parameter")
}

fn wrong_type(param: &str, expected: &str) -> ApiError {
    ApiError::invalid(
        format!("Invalid type for '{param}': expected {expected}."),
        param,
    )
    .with_code("invalid_type")
}

/// `instructions` and `input` as chat messages, with the origin of each.
fn messages(body: &Value) -> Result<(Vec<Value>, ParamMap), ApiError> {
    let mut out = Vec::new();
    let mut map = ParamMap::default();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            out.push(json!({"role": "system", "content": text}));
            map.push(Origin::Instructions);
        }
        Some(_) => return Err(wrong_type("instructions", "a string")),
    }
    match body.get("input") {
        None | Some(Value::Null) => return Err(missing("input")),
        Some(Value::String(text)) => {
            out.push(json!({"role": "user", "content": text}));
            map.push(Origin::InputText);
        }
        Some(Value::Array(items)) => {
            for (j, item) in items.iter().enumerate() {
                push_item(item, j, &mut out, &mut map)?;
            }
        }
        Some(_) => return Err(wrong_type("input", "a string or an array of input items")),
    }
    Ok((out, map))
}

/// Appends the chat message of input item `j` (or its tool call to the previous message).
fn push_item(
    item: &Value,
    j: usize,
    out: &mut Vec<Value>,
    map: &mut ParamMap,
) -> Result<(), ApiError> {
    let param = format!("input[{j}]");
    if !item.is_object() {
        return Err(wrong_type(&param, "an object"));
    }
    match item.get("type").and_then(Value::as_str) {
        None | Some("message") => {
            let role = item
                .get("role")
                .ok_or_else(|| missing(&format!("{param}.role")))?;
            out.push(json!({"role": role, "content": content(item.get("content"))}));
            map.push(Origin::Message(j));
        }
        Some("function_call") => {
            let call = json!({
                "id": string_field(item, "call_id", &param)?,
                "type": "function",
                "function": {
                    "name": string_field(item, "name", &param)?,
                    "arguments": string_field(item, "arguments", &param)?,
                },
            });
            if let (Some(Origin::Calls(items)), Some(last)) = (map.last_mut(), out.last_mut()) {
                items.push(j);
                if let Some(calls) = last["tool_calls"].as_array_mut() {
                    calls.push(call);
                }
            } else {
                out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                map.push(Origin::Calls(vec![j]));
            }
        }
        Some("function_call_output") => {
            let id = string_field(item, "call_id", &param)?;
            let output = item
                .get("output")
                .ok_or_else(|| missing(&format!("{param}.output")))?;
            out.push(json!({"role": "tool", "tool_call_id": id, "content": content(Some(output))}));
            map.push(Origin::CallOutput(j));
        }
        Some(_) => {
            return Err(ApiError::unsupported(
                &format!("{param}.type"),
                "only message, function_call and function_call_output items are served",
            ))
        }
    }
    Ok(())
}

fn string_field<'a>(item: &'a Value, field: &str, param: &str) -> Result<&'a str, ApiError> {
    match item.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(missing(&format!("{param}.{field}"))),
        Some(_) => Err(wrong_type(&format!("{param}.{field}"), "a string")),
    }
}

/// Message content in chat's words: `input_text` and `output_text` parts become `text`
/// parts; any other part or value is left for chat's checks to refuse by its path.
fn content(content: Option<&Value>) -> Value {
    match content {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part["type"].as_str() {
                Some("input_text" | "output_text") => {
                    json!({"type": "text", "text": part.get("text").cloned().unwrap_or(Value::Null)})
                }
                _ => part.clone(),
            })
            .collect(),
        other => other.cloned().unwrap_or(Value::Null),
    }
}

/// The chat body: `messages` plus each Responses field in chat's name and shape. Fields the
/// Responses API does not have are left out, as chat ignores fields it does not know.
fn chat_body(body: &Value, messages: Vec<Value>) -> Result<Value, ApiError> {
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(messages));
    const SAME: [&str; 9] = [
        "model",
        "stream",
        "temperature",
        "top_p",
        "user",
        "metadata",
        "store",
        "parallel_tool_calls",
        "service_tier",
    ];
    for field in SAME {
        if let Some(v) = body.get(field) {
            chat.insert(field.into(), v.clone());
        }
    }
    if let Some(v) = body.get("max_output_tokens") {
        chat.insert("max_completion_tokens".into(), v.clone());
    }
    // The Response's usage is known from chat's last chunk only when asked for.
    if body["stream"] == true {
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(tools) = body.get("tools") {
        chat.insert("tools".into(), chat_tools(tools)?);
    }
    if let Some(choice) = body.get("tool_choice") {
        chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
    }
    if let Some(format) = text_format(body)? {
        chat.insert("response_format".into(), format);
    }
    Ok(Value::Object(chat))
}

/// Responses' flat function tools as chat's `{"type": "function", "function": {...}}`.
fn chat_tools(tools: &Value) -> Result<Value, ApiError> {
    let Some(list) = tools.as_array() else {
        return Ok(tools.clone()); // chat's type check names `tools`
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {
                let function: Map<String, Value> = ["name", "description", "parameters", "strict"]
                    .into_iter()
                    .filter_map(|k| Some((k.to_string(), tool.get(k)?.clone())))
                    .collect();
                out.push(json!({"type": "function", "function": function}));
            }
            None => return Err(missing(&format!("tools[{i}].type"))),
            Some(_) => {
                return Err(ApiError::unsupported(
                    &format!("tools[{i}].type"),
                    "only function tools are served",
                ))
            }
        }
    }
    Ok(Value::Array(out))
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::Object(o) if o.get("type").is_some_and(|t| t == "function") => {
            let name = string_field(choice, "name", "tool_choice")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        Value::Object(_) => Err(ApiError::unsupported(
            "tool_choice",
            "only none, auto, required or a function",
        )),
        other => Ok(other.clone()),
    }
}

/// `text.format` as chat's `response_format`; `text.verbosity` only at its default.
fn text_format(body: &Value) -> Result<Option<Value>, ApiError> {
    let text = match body.get("text") {
        None | Some(Value::Null) => return Ok(None),
        Some(t @ Value::Object(_)) => t,
        Some(_) => return Err(wrong_type("text", "an object")),
    };
    if !(text["verbosity"].is_null() || text["verbosity"] == "medium") {
        return Err(ApiError::unsupported(
            "text.verbosity",
            "the model's output length is not steered",
        ));
    }
    let format = &text["format"];
    let chat = match format["type"].as_str() {
        _ if format.is_null() => return Ok(None),
        Some("json_schema") => {
            let schema: Map<String, Value> = ["name", "schema", "strict", "description"]
                .into_iter()
                .filter_map(|k| Some((k.to_string(), format.get(k)?.clone())))
                .collect();
            json!({"type": "json_schema", "json_schema": schema})
        }
        // `text`, `json_object`, and anything else for chat to judge.
        _ => format.clone(),
    };
    Ok(Some(chat))
}

/// The request's settings that the Response repeats, with OpenAI's defaults where absent.
fn echo(body: &Value) -> Map<String, Value> {
    let given = |field: &str, default: Value| match body.get(field) {
        None | Some(Value::Null) => default,
        Some(v) => v.clone(),
    };
    let mut text = given("text", json!({}));
    if text["format"].is_null() {
        text["format"] = json!({"type": "text"});
    }
    if text["verbosity"].is_null() {
        text["verbosity"] = json!("medium");
    }
    let fields = [
        ("instructions", given("instructions", Value::Null)),
        ("max_output_tokens", given("max_output_tokens", Value::Null)),
        ("metadata", given("metadata", json!({}))),
        (
            "parallel_tool_calls",
            given("parallel_tool_calls", json!(true)),
        ),
        ("temperature", given("temperature", json!(1.0))),
        ("top_p", given("top_p", json!(1.0))),
        ("tool_choice", given("tool_choice", json!("auto"))),
        ("tools", given("tools", json!([]))),
        ("text", text),
        ("user", given("user", Value::Null)),
        ("truncation", json!("disabled")),
        ("reasoning", json!({"effort": null, "summary": null})),
        ("service_tier", given("service_tier", json!("default"))),
        ("background", json!(false)),
        ("previous_response_id", Value::Null),
        ("top_logprobs", json!(0)),
    ];
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

#[cfg(test)]
#[path = "responses_tests.rs"]
mod tests;
