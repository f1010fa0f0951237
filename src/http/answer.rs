//! A generation's answer as JSON values, and its encoding for chat and text completions:
//! JSON, or SSE `data:` lines closed by `data: [DONE]`. `/v1/responses` encodes the same
//! values its own way (`responses_out.rs`).

use crate::error::ApiError;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::Value;
use std::convert::Infallible;

/// A generation's answer before its encoding, with the headers that go with it (rate status,
/// prompt tokens and, when whole, the bill).
pub struct Generated {
    pub answer: Answer,
    pub headers: HeaderMap,
}

pub enum Answer {
    /// The whole chat or text completion.
    Whole(Value),
    /// Its chunks as they come; an error ends the stream. Dropping it cancels the request.
    Chunks(BoxStream<'static, Result<Value, ApiError>>),
}

impl Generated {
    /// Chat and completions' encoding: JSON, or SSE `data:` lines closed by `data: [DONE]`
    /// (after an error too, as OpenAI does).
    pub fn into_response(self) -> Response {
        let mut response = match self.answer {
            Answer::Whole(body) => Json(body).into_response(),
            Answer::Chunks(chunks) => {
                let events = chunks
                    .map(|chunk| match chunk {
                        Ok(value) => value.to_string(),
                        Err(error) => error.body_json(),
                    })
                    .chain(futures_util::stream::once(async { "[DONE]".to_string() }))
                    .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
                Sse::new(events)
                    .keep_alive(KeepAlive::default())
                    .into_response()
            }
        };
        response.headers_mut().extend(self.headers);
        response
    }
}
