//! The Qwen2.5-Coder-0.5B chat model over HTTP: the README's first example, streamed and
//! whole, with prompt tokens counted as llama-server counts them.

mod common;
use common::*;
use serde_json::{json, Value};

fn capital_question(stream: bool) -> Value {
    json!({
        "model": QWEN_MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "max_tokens": 16,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": stream},
    })
}

#[tokio::test]
async fn qwen_answers_paris_with_the_prompt_tokens_llama_server_counts() {
    let (status, body) = post(
        qwen_server(),
        "/v1/chat/completions",
        capital_question(false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], QWEN_MODEL);
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert!(text.contains("Paris"), "{body}");
    // llama-server (llama.cpp b0.3.36) renders the same messages with the GGUF's template
    // and counts 26 prompt tokens (measured 2026-12-03).
    assert_eq!(body["usage"]["prompt_tokens"], 26, "{body}");
}

#[tokio::test]
async fn qwen_streams_the_same_greedy_answer() {
    let (status, whole) = post(
        qwen_server(),
        "/v1/chat/completions",
        capital_question(false),
    )
    .await;
    assert_eq!(status, 200, "{whole}");
    let (status, events) = post_stream(
        qwen_server(),
        "/v1/chat/completions",
        capital_question(true),
    )
    .await;
    assert_eq!(status, 200, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        streamed,
        whole["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("-")
    );
}
