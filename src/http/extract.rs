//! A JSON body extractor whose rejections use our error shape and the API's words: malformed
//! JSON 400 `invalid_json`; a field of the wrong type, a value its type cannot hold, or a
//! missing required field 400 with `param` the field's path (`messages[2].content`); a body
//! over the limit 413; a body that does not arrive within its deadline 408.
//!
//! The body is parsed once into a `serde_json::Value`, then each request struct is read from
//! it with `serde_path_to_error`, which knows where a failure happened. serde's own message
//! speaks of Rust (`expected usize`, `untagged enum PromptField`), so only its kind and its
//! `expected` part are kept, translated; what the client sent is described from the body.

use crate::conn::BodyDeadline;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

pub struct ApiJson<T>(pub T);

/// A request body read from parsed JSON. A body made of several structs reads each of them
/// from the same object: `#[serde(flatten)]` would lose the path of a bad field and report it
/// in Rust's words.
pub trait RequestBody: DeserializeOwned {
    fn from_json(body: &Value) -> Result<Self, ApiError> {
        read(body)
    }
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: RequestBody,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Set by the connection layer; a router driven without it (unit tests) has no limit.
        let deadline = req.extensions().get::<BodyDeadline>().copied();
        let read = Bytes::from_request(req, state);
        let read = match deadline {
            Some(BodyDeadline(at)) => tokio::time::timeout_at(at, read)
                .await
                .map_err(|_| body_timeout())?,
            None => read.await,
        };
        let bytes = read.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "The request body is larger than this server accepts",
                )
                .with_code("request_too_large")
            } else {
                ApiError::invalid(format!("Cannot read the request body: {rejection}"), "body")
            }
        })?;
        // Any JSON document is a `Value`: this fails only on malformed JSON.
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("We could not parse the JSON body of your request: {e}"),
            )
            .with_code("invalid_json")
        })?;
        T::from_json(&body).map(ApiJson)
    }
}

/// 408 for a body that did not arrive in time (`connections.body_read_timeout_secs`); the
/// connection is closed after it, since the rest of the body is never read.
fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request_error",
        "The request body did not arrive in time",
    )
    .with_code("request_timeout")
}

/// Reads `T` from the whole `body`; a field that does not fit is a 400 naming its path.
pub fn read<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    // serde would read an array as the struct's fields in order; refuse it as it refuses any
    // other field that is not an object.
    if !body.is_object() {
        return Err(shape_error(body, &[], "invalid type: _, expected a map"));
    }
    serde_path_to_error::deserialize(body).map_err(|e| {
        let segments: Vec<&Segment> = e.path().iter().collect();
        shape_error(body, &segments, &e.inner().to_string())
    })
}

/// The 400 for serde's `message` about the value at `path` of `body`.
fn shape_error(body: &Value, path: &[&Segment], message: &str) -> ApiError {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        // The path is the object that lacks the field.
        let param = join(path, Some(field));
        return ApiError::invalid(format!("Missing required parameter: '{param}'."), &param)
            .with_code("missing_required_parameter");
    }
    let (kind, expected) = match message.split_once(": ") {
        Some(("invalid type", rest)) => ("type", expected_in(rest)),
        Some(("invalid value", rest)) => ("value", expected_in(rest)),
        // The only other messages our request types produce are the `expecting` texts of
        // their untagged enums, written in the API's words.
        _ => ("type", message.to_string()),
    };
    let param = join(path, None);
    let subject = if param.is_empty() {
        "the request body".to_string()
    } else {
        format!("'{param}'")
    };
    let got = value_at(body, path)
        .map(|v| format!(", but got {} instead", describe(v, kind == "value")))
        .unwrap_or_default();
    let mut e = ApiError::invalid(
        format!("Invalid {kind} for {subject}: expected {expected}{got}."),
        &param,
    );
    if param.is_empty() {
        e.param = None;
    }
    e.with_code(if kind == "type" {
        "invalid_type"
    } else {
        "invalid_value"
    })
}

/// The `expected …` part of "string \"x\", expected usize", in the API's words.
fn expected_in(rest: &str) -> String {
    let expected = rest.rsplit_once(", expected ").map_or("", |(_, e)| e);
    api_words(expected)
}

/// serde's name for what a Rust type accepts, as the API documents it.
fn api_words(expected: &str) -> String {
    let words = match expected {
        "usize" | "u64" => "an integer ≥ 0",
        "u32" => "an integer from 0 to 4294967295",
        "u16" => "an integer from 0 to 65535",
        "u8" => "an integer from 0 to 255",
        "isize" | "i64" | "i32" | "i16" | "i8" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" => "a boolean",
        "a string" | "a borrowed string" | "a character" => "a string",
        "a sequence" => "an array",
        "a map" => "an object",
        e if e.starts_with("struct ") => "an object",
        // An `expecting` text of ours, already in the API's words.
        e if e.starts_with("a ") || e.starts_with("an ") => e,
        _ => "another type",
    };
    words.to_string()
}

/// What the client sent, in JSON's terms (never the value itself).
fn describe(value: &Value, out_of_range: bool) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.as_i64().is_some_and(|i| i < 0) => "a negative number",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) if out_of_range => "an integer that is too large",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `messages[2].content`: keys joined by dots, indices in brackets; `field` appended.
fn join(path: &[&Segment], field: Option<&str>) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => push_key(&mut out, key),
            Segment::Unknown => push_key(&mut out, "?"),
        }
    }
    if let Some(field) = field {
        push_key(&mut out, field);
    }
    out
}

fn push_key(out: &mut String, key: &str) {
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(key);
}

fn value_at<'a>(body: &'a Value, path: &[&Segment]) -> Option<&'a Value> {
    path.iter().try_fold(body, |value, segment| match segment {
        Segment::Seq { index } => value.get(index),
        Segment::Map { key } => value.get(key.as_str()),
        Segment::Enum { .. } | Segment::Unknown => None,
    })
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
