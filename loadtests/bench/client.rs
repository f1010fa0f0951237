//! One timed request to an OpenAI-compatible server (ours, llama.cpp's llama-server,
//! LiteLLM, vLLM…). TTFT is the time to the first chunk that carries text; each later text
//! chunk adds one inter-token gap (servers send one token per chunk when they can).
//! Output tokens come from the usage the server reports (`stream_options.include_usage` for
//! streams) and otherwise from the number of text chunks.

use super::scenario::{Endpoint, Scenario};
use super::sse::SseParser;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL without `/v1`, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Sent as `Authorization: Bearer …` when set (a tenant's key for tiergate; LiteLLM needs one too).
    pub api_key: Option<String>,
    /// Reuse connections between requests. Off by default: llama-server closes a connection
    /// after some streamed responses, and a request that the client writes into such a
    /// connection just before it sees the close fails ("connection closed before message
    /// completed") although the server did nothing wrong. A fresh connection costs well under
    /// a millisecond on 127.0.0.1 but a round trip over a network, so turn it on there.
    pub keep_alive: bool,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Answered with this non-2xx HTTP status.
    Status(u16),
    /// Still running after the scenario's `timeout_secs`.
    Timeout,
    /// Connection refused or reset, or a body that was not JSON.
    Transport,
    /// A 200 stream that carried an `error` object (a failure after the first token).
    StreamError,
}

impl Outcome {
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Status(code) => code.to_string(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Transport => "transport".into(),
            Outcome::StreamError => "stream_error".into(),
        }
    }
}

/// The measurements of one request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub outcome: Outcome,
    /// Time to the first text chunk; `None` without streaming.
    pub ttft: Option<Duration>,
    /// Gaps between consecutive text chunks.
    pub itl: Vec<Duration>,
    pub e2e: Duration,
    pub output_tokens: u64,
    /// Whether `output_tokens` came from the server's usage rather than from counting chunks.
    pub tokens_from_usage: bool,
    pub prompt_tokens: Option<u64>,
    /// What went wrong, for a failed request: the error chain or the start of the body.
    pub detail: Option<String>,
    /// When to retry, from a refusal's `retry-after-ms` (else `retry-after`, in seconds).
    pub retry_after: Option<Duration>,
}

/// The JSON body of request `i` of a scenario. `ignore_eos` makes every request produce
/// `max_tokens` tokens and `cache_prompt: false` stops llama-server reusing the previous
/// prompt's KV cache, so all servers do the same work; servers that do not know these fields
/// ignore them.
pub fn request_body(s: &Scenario, i: usize) -> Value {
    let mut body = json!({
        "model": s.model,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "stream": s.stream,
        "ignore_eos": true,
        "cache_prompt": false,
    });
    match s.endpoint {
        Endpoint::Chat => body["messages"] = json!([{"role": "user", "content": s.prompt(i)}]),
        Endpoint::Completions => body["prompt"] = json!(s.prompt(i)),
    }
    if s.stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    for (k, v) in &s.extra {
        body[k] = v.clone();
    }
    body
}

/// Sends request `i` of the scenario and times it; never fails, errors become the outcome.
pub async fn send(client: &reqwest::Client, target: &Target, s: &Scenario, i: usize) -> Sample {
    let start = Instant::now();
    let mut tally = Tally::new(start);
    let limit = Duration::from_secs_f64(s.timeout_secs);
    let exchange = exchange(client, target, s, i, &mut tally);
    let (outcome, detail) = match tokio::time::timeout(limit, exchange).await {
        Err(_) => (
            Outcome::Timeout,
            Some(format!("no end after {} s", s.timeout_secs)),
        ),
        Ok(Err((outcome, detail))) => (outcome, Some(detail)),
        Ok(Ok(())) => match tally.error.take() {
            Some(error) => (Outcome::StreamError, Some(error)),
            None => (Outcome::Ok, None),
        },
    };
    let mut sample = tally.into_sample(outcome, start.elapsed());
    sample.detail = detail;
    sample
}

/// A failed exchange: its outcome and what to tell the operator about it.
type Failure = (Outcome, String);

/// reqwest's own message is terse ("error sending request"); the causes say what happened.
fn transport(e: reqwest::Error) -> Failure {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    (Outcome::Transport, text)
}

async fn exchange(
    client: &reqwest::Client,
    target: &Target,
    s: &Scenario,
    i: usize,
    tally: &mut Tally,
) -> Result<(), Failure> {
    let url = format!("{}{}", target.url.trim_end_matches('/'), s.endpoint.path());
    let mut req = client.post(url).json(&request_body(s, i));
    if let Some(key) = &target.api_key {
        req = req.bearer_auth(key);
    }
    let mut resp = req.send().await.map_err(transport)?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        tally.retry_after = retry_after(resp.headers());
        let body = resp.text().await.unwrap_or_default();
        return Err((Outcome::Status(status), body.chars().take(300).collect()));
    }
    if !s.stream {
        let body: Value = resp.json().await.map_err(transport)?;
        tally.on_body(&body);
        return Ok(());
    }
    let mut parser = SseParser::default();
    while let Some(bytes) = resp.chunk().await.map_err(transport)? {
        // Every event in this network chunk reached the client now, whatever the server
        // meant: that is the latency a client sees.
        let at = Instant::now();
        for data in parser.push(&bytes) {
            tally.on_data(&data, at);
        }
    }
    let at = Instant::now();
    for data in parser.finish() {
        tally.on_data(&data, at);
    }
    Ok(())
}

/// The wait a refusal asks for: `retry-after-ms` (OpenAI's, exact) or else `retry-after` in
/// whole seconds (an HTTP date is not used by the servers we test and is ignored).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
}

/// Accumulates the timing and counts of one response as its events arrive.
#[derive(Debug)]
pub struct Tally {
    start: Instant,
    last_text: Option<Instant>,
    ttft: Option<Duration>,
    itl: Vec<Duration>,
    text_chunks: u64,
    usage_completion: Option<u64>,
    usage_prompt: Option<u64>,
    /// The message of an error event in a 200 stream.
    error: Option<String>,
    retry_after: Option<Duration>,
}

impl Tally {
    pub fn new(start: Instant) -> Self {
        Tally {
            start,
            last_text: None,
            ttft: None,
            itl: Vec::new(),
            text_chunks: 0,
            usage_completion: None,
            usage_prompt: None,
            error: None,
            retry_after: None,
        }
    }

    /// One SSE event's data, received at `at`.
    pub fn on_data(&mut self, data: &str, at: Instant) {
        if data.trim() == "[DONE]" {
            return;
        }
        // A payload that is not JSON is not an OpenAI chunk; ignore it rather than guess.
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        self.usage(&v);
        if let Some(error) = v.get("error").filter(|e| !e.is_null()) {
            let message = error["message"].as_str().map(str::to_string);
            self.error = Some(message.unwrap_or_else(|| error.to_string()));
        }
        let text = v["choices"][0]["delta"]["content"]
            .as_str()
            .or_else(|| v["choices"][0]["text"].as_str());
        if text.is_some_and(|t| !t.is_empty()) {
            match self.last_text {
                None => self.ttft = Some(at - self.start),
                Some(prev) => self.itl.push(at - prev),
            }
            self.last_text = Some(at);
            self.text_chunks += 1;
        }
    }

    /// A whole (non-streamed) response body.
    pub fn on_body(&mut self, v: &Value) {
        self.usage(v);
    }

    fn usage(&mut self, v: &Value) {
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            self.usage_completion = Some(n);
        }
        if let Some(n) = v["usage"]["prompt_tokens"].as_u64() {
            self.usage_prompt = Some(n);
        }
    }

    pub fn into_sample(self, outcome: Outcome, e2e: Duration) -> Sample {
        Sample {
            outcome,
            ttft: self.ttft,
            itl: self.itl,
            e2e,
            output_tokens: self.usage_completion.unwrap_or(self.text_chunks),
            tokens_from_usage: self.usage_completion.is_some(),
            prompt_tokens: self.usage_prompt,
            detail: None,
            retry_after: self.retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_chunk(text: &str) -> String {
        json!({"choices": [{"index": 0, "delta": {"content": text}}], "usage": null}).to_string()
    }

    #[test]
    fn chat_stream_with_usage_counts_tokens_from_usage() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Tally::new(t0);
        t.on_data(&chat_chunk(""), ms(5)); // role-only first chunk: no text
        t.on_data(&chat_chunk("Hel"), ms(40));
        t.on_data(&chat_chunk("lo"), ms(50));
        t.on_data(&chat_chunk("!"), ms(75));
        let usage = json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}});
        t.on_data(&usage.to_string(), ms(76));
        t.on_data("[DONE]", ms(76));
        let s = t.into_sample(Outcome::Ok, Duration::from_millis(80));
        assert_eq!(s.ttft, Some(Duration::from_millis(40)));
        assert_eq!(
            s.itl,
            [Duration::from_millis(10), Duration::from_millis(25)]
        );
        assert_eq!((s.output_tokens, s.tokens_from_usage), (4, true));
        assert_eq!(s.prompt_tokens, Some(9));
    }

    #[test]
    fn completion_stream_without_usage_counts_text_chunks() {
        let t0 = Instant::now();
        let mut t = Tally::new(t0);
        for word in ["a", "b", "c"] {
            t.on_data(&json!({"choices": [{"text": word}]}).to_string(), t0);
        }
        let s = t.into_sample(Outcome::Ok, Duration::ZERO);
        assert_eq!((s.output_tokens, s.tokens_from_usage), (3, false));
        assert_eq!(s.itl.len(), 2);
    }

    #[test]
    fn error_event_marks_the_stream_failed() {
        let mut t = Tally::new(Instant::now());
        t.on_data(r#"{"error": {"message": "boom"}}"#, Instant::now());
        assert_eq!(t.error.as_deref(), Some("boom"));
    }

    #[test]
    fn retry_after_prefers_milliseconds_and_ignores_dates() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut date = HeaderMap::new();
        date.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&date), None);
    }

    #[test]
    fn body_asks_for_the_same_work_from_every_server() {
        let mut s = Scenario::default();
        let chat = request_body(&s, 0);
        assert_eq!(chat["ignore_eos"], true);
        assert_eq!(chat["cache_prompt"], false);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        assert_eq!(chat["messages"][0]["role"], "user");
        s.endpoint = Endpoint::Completions;
        s.stream = false;
        let completion = request_body(&s, 0);
        assert!(completion["prompt"].is_string());
        assert!(completion.get("stream_options").is_none());
    }
}
