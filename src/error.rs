//! The API's error type and its only mapping to HTTP: OpenAI's error shape
//! `{"error": {"message", "type", "param", "code"}}`, with `Retry-After` where retrying helps.
//! Server-side failures answer a generic message; the detail goes to the log.

use crate::infer::InferError;
use crate::tenancy::headers::go_duration;
use crate::tenancy::{Denied, LimitKind, Tenant};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<Duration>,
    /// Sent as `x-should-retry`: false where retrying cannot help (budget spent, a request
    /// larger than any bucket), which the official SDKs obey.
    pub should_retry: Option<bool>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
pub struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            should_retry: None,
        }
    }

    /// 429 for a tenant over one of its limits, worded as OpenAI words it.
    pub fn rate_limited(denied: &Denied, tenant: &Tenant) -> Self {
        let t = &tenant.terms;
        let wait = denied.wait.max(Duration::from_millis(1));
        let retry_in = format!("Please try again in {}.", go_duration(wait));
        let (kind, code, message) = match denied.kind {
            LimitKind::Requests => (
                "requests",
                "rate_limit_exceeded",
                format!(
                    "Rate limit reached for requests per minute (RPM): Limit {}, tier {}. {retry_in}",
                    t.requests_per_minute, tenant.tier
                ),
            ),
            LimitKind::Tokens => (
                "tokens",
                "rate_limit_exceeded",
                format!(
                    "Rate limit reached for tokens per minute (TPM): Limit {}, Remaining {}, tier {}. {retry_in}",
                    t.tokens_per_minute, denied.status.remaining_tokens, tenant.tier
                ),
            ),
            LimitKind::TooLarge => (
                "tokens",
                "rate_limit_exceeded",
                format!(
                    "Request too large for tier {}: prompt + max_tokens exceed the token burst of {}. \
                     Lower max_tokens or shorten the prompt.",
                    tenant.tier,
                    if t.burst_tokens > 0 { t.burst_tokens } else { t.tokens_per_minute }
                ),
            ),
            LimitKind::Concurrency => (
                "requests",
                "rate_limit_exceeded",
                format!(
                    "Too many concurrent requests: limit {} for tier {}. Retry when one finishes.",
                    t.max_concurrent, tenant.tier
                ),
            ),
            LimitKind::Unavailable => return Self::limiter_unavailable(denied.wait),
            LimitKind::Budget => (
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your monthly budget for this grant. Contact the compute centre."
                    .to_string(),
            ),
        };
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, message).with_code(code);
        match denied.kind {
            LimitKind::Budget | LimitKind::TooLarge => e.should_retry = Some(false),
            LimitKind::Concurrency => e.retry_after = Some(Duration::from_secs(1)),
            _ => e.retry_after = Some(wait),
        }
        e
    }

    /// 503 while the shared limit store cannot decide: no request passes unchecked.
    fn limiter_unavailable(wait: Duration) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "Tenant limits cannot be checked right now; retry shortly",
        )
        .with_code("limiter_unavailable");
        e.retry_after = Some(wait.max(Duration::from_secs(1)));
        e
    }

    /// 400 for a request that is well-formed JSON but asks for something invalid.
    pub fn invalid(message: impl Into<String>, param: &str) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param.to_string());
        e
    }

    /// 400 for a field we recognise but do not implement, naming it.
    pub fn unsupported(param: &str, what: &str) -> Self {
        let mut e = Self::invalid(
            format!("`{param}` is not supported by this server: {what}"),
            param,
        );
        e.code = Some("unsupported_parameter");
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body alone, for errors that must travel inside an SSE stream.
    pub fn body_json(&self) -> String {
        serde_json::to_string(&Body {
            error: Detail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error"}}"#.into()
        })
    }
}

impl From<InferError> for ApiError {
    fn from(err: InferError) -> Self {
        use StatusCode as S;
        let (message, code) = (err.to_string(), err.code());
        let unavailable = |retry| {
            let mut e = ApiError::new(S::SERVICE_UNAVAILABLE, "server_error", message.clone())
                .with_code(code);
            e.retry_after = Some(retry);
            e
        };
        match err {
            InferError::UnknownModel(_) | InferError::NoReplicas { .. } => {
                ApiError::not_found(message).with_code(code)
            }
            InferError::WrongKind { .. } => ApiError::invalid(message, "model").with_code(code),
            InferError::ContextLength { message, param } => {
                ApiError::invalid(message, param).with_code(code)
            }
            // OpenAI sends no code for a plain invalid request.
            InferError::Invalid { message, param } => {
                let mut e = ApiError::new(S::BAD_REQUEST, "invalid_request_error", message);
                e.param = param.map(str::to_string);
                e
            }
            InferError::Overloaded { retry_after, .. }
            | InferError::QueueTimeout { retry_after, .. } => unavailable(retry_after),
            // A loading replica or a restarting gateway: seconds, not the queue's backlog.
            InferError::NotReady(_) | InferError::ShuttingDown | InferError::Interrupted => {
                unavailable(Duration::from_secs(5))
            }
            InferError::RequestTimeout(_) => {
                ApiError::new(S::GATEWAY_TIMEOUT, "server_error", message).with_code(code)
            }
            InferError::Backend(detail) => {
                tracing::error!(error = %detail, "model failure");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "The model failed to process the request",
                )
                .with_code(code)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body_json(),
        )
            .into_response();
        if let Some(retry) = self.retry_after {
            let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            headers.insert(
                "retry-after-ms",
                HeaderValue::from(retry.as_millis() as u64),
            );
        }
        if let Some(retry) = self.should_retry {
            response.headers_mut().insert(
                "x-should-retry",
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_maps_to_503_with_retry_after() {
        let err: ApiError = InferError::Overloaded {
            model: "m".into(),
            retry_after: Duration::from_millis(1500),
        }
        .into();
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()["retry-after-ms"], "1500");
    }

    #[test]
    fn queue_timeout_carries_the_queues_backlog_estimate() {
        let err: ApiError = InferError::QueueTimeout {
            model: "m".into(),
            waited: Duration::from_secs(30),
            retry_after: Duration::from_millis(12_300),
        }
        .into();
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "13");
        assert_eq!(response.headers()["retry-after-ms"], "12300");
    }

    #[test]
    fn backend_failure_hides_its_detail() {
        let err: ApiError = InferError::Backend("/secret/path exploded".into()).into();
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!err.body_json().contains("secret"));
    }

    #[test]
    fn body_has_the_openai_shape() {
        let body: serde_json::Value =
            serde_json::from_str(&ApiError::unsupported("n", "only n=1").body_json())
                .expect("json");
        let e = &body["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"], "n");
        assert_eq!(e["code"], "unsupported_parameter");
        assert!(e["message"].as_str().is_some_and(|m| m.contains("`n`")));
    }
}
