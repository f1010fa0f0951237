//! Bad input gets a clear OpenAI-shaped error with the right status, and loses nothing: after
//! each one the server still serves.

mod common;
use common::*;
use serde_json::json;

async fn expect_error(
    path: &str,
    body: serde_json::Value,
    status: u16,
    param: Option<&str>,
) -> serde_json::Value {
    let (got, resp) = post(server(), path, body).await;
    assert_eq!(got, status, "{resp}");
    let e = error_of(&resp).clone();
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{resp}");
    }
    assert_still_serving(server()).await;
    e
}

async fn raw_post(path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let resp = client()
        .post(server().url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON error body"))
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (status, body) = raw_post("/v1/chat/completions", b"{\"model\": ".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body)["code"], "invalid_json");
    assert_still_serving(server()).await;
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

#[tokio::test]
async fn missing_required_fields_are_400_naming_them() {
    for (path, body, field) in [
        (CHAT, json!({"model": CHAT_MODEL}), "messages"),
        (CHAT, json!({"messages": []}), "model"),
        (COMPLETIONS, json!({"model": CHAT_MODEL}), "prompt"),
        ("/v1/embeddings", json!({"model": EMBED_MODEL}), "input"),
    ] {
        let (status, resp) = post(server(), path, body).await;
        assert_eq!(status, 400, "{path}: {resp}");
        let e = error_of(&resp);
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"], field, "{resp}");
        assert_eq!(e["code"], "missing_required_parameter");
    }
    assert_still_serving(server()).await;
}

/// Words of Rust and serde that an error message must never show a client.
const RUST_WORDS: [&str; 8] = [
    "usize", "u32", "i64", "f32", "untagged", "enum", "struct", "Request",
];

/// A small chat request with `field` set to `value`.
fn chat_with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut body = chat_body("hi", 2);
    body[field] = value;
    body
}

#[tokio::test]
async fn wrong_types_are_400_naming_the_field_path_in_api_words() {
    let third_content_is_a_number = chat_with(
        "messages",
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "user", "content": 5},
        ]),
    );
    let cases = [
        (CHAT, chat_with("max_tokens", json!(-1)), "max_tokens"),
        (CHAT, chat_with("max_tokens", json!("ten")), "max_tokens"),
        (CHAT, chat_with("temperature", json!("hot")), "temperature"),
        (CHAT, chat_with("messages", json!("hi")), "messages"),
        (CHAT, third_content_is_a_number, "messages[2].content"),
        (CHAT, chat_with("stream", json!("yes")), "stream"),
        (CHAT, chat_with("n", json!("two")), "n"),
        (CHAT, chat_with("user", json!(7)), "user"),
        (
            COMPLETIONS,
            json!({"model": CHAT_MODEL, "prompt": {}}),
            "prompt",
        ),
        (
            COMPLETIONS,
            json!({"model": CHAT_MODEL, "prompt": "x", "stop": 3}),
            "stop",
        ),
        (
            "/v1/embeddings",
            json!({"model": EMBED_MODEL, "input": true}),
            "input",
        ),
    ];
    for (path, body, param) in cases {
        let (status, resp) = post(server(), path, body).await;
        assert_eq!(status, 400, "{path} {param}: {resp}");
        let e = error_of(&resp);
        assert_eq!(e["type"], "invalid_request_error", "{resp}");
        assert_eq!(e["param"], param, "{resp}");
        let message = e["message"].as_str().unwrap_or("");
        assert!(message.contains(&format!("'{param}'")), "{resp}");
        for word in RUST_WORDS {
            assert!(!message.contains(word), "{word:?} in {resp}");
        }
    }
    assert_still_serving(server()).await;
}

#[tokio::test]
async fn store_true_is_400_naming_store() {
    let body = chat_with("store", json!(true));
    let e = expect_error(CHAT, body, 400, Some("store")).await;
    assert_eq!(e["code"], "unsupported_parameter");
}

#[tokio::test]
async fn tool_calls_outside_an_assistant_message_are_400_naming_them() {
    let call =
        json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
    let body = chat_with(
        "messages",
        json!([{"role": "user", "content": "hi", "tool_calls": [call]}]),
    );
    expect_error(CHAT, body, 400, Some("messages[0].tool_calls")).await;
}

#[tokio::test]
async fn empty_completion_prompt_is_400_naming_prompt() {
    // An empty list of token ids is an empty prompt.
    let empty = json!({"model": CHAT_MODEL, "prompt": []});
    expect_error(COMPLETIONS, empty, 400, Some("prompt")).await;
}

#[tokio::test]
async fn unknown_model_is_404() {
    let mut body = chat_body("hi", 2);
    body["model"] = json!("gpt-nonexistent");
    let e = expect_error("/v1/chat/completions", body, 404, None).await;
    assert_eq!(e["code"], "model_not_found");
}

#[tokio::test]
async fn prompt_longer_than_the_context_is_400_context_length_exceeded() {
    // Over 4096 prompt tokens but under the 64 KiB body limit of the test server.
    let text = "9 ".repeat(5000);
    let e = expect_error(
        "/v1/completions",
        json!({"model": CHAT_MODEL, "prompt": text}),
        400,
        Some("prompt"),
    )
    .await;
    assert_eq!(e["code"], "context_length_exceeded");
}

#[tokio::test]
async fn prompt_plus_max_tokens_over_the_context_is_400() {
    let e = expect_error(
        "/v1/chat/completions",
        chat_body("hi", 4090),
        400,
        Some("max_tokens"),
    )
    .await;
    assert_eq!(e["code"], "context_length_exceeded");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let big = format!(
        "{{\"model\":\"{CHAT_MODEL}\",\"prompt\":\"{}\"}}",
        "a".repeat(100 * 1024)
    );
    let (status, body) = raw_post("/v1/completions", big.into_bytes()).await;
    assert_eq!(status, 413, "{body}");
    error_of(&body);
    assert_still_serving(server()).await;
}

#[tokio::test]
async fn unsupported_fields_are_400_naming_the_field() {
    for (field, value) in [
        ("best_of", json!(2)),
        ("echo", json!(true)),
        (
            "functions",
            json!([{"name": "f", "parameters": {"type": "object"}}]),
        ),
    ] {
        let mut body = chat_body("hi", 2);
        body[field] = value;
        let e = expect_error("/v1/chat/completions", body, 400, Some(field)).await;
        assert_eq!(e["code"], "unsupported_parameter");
    }
}

#[tokio::test]
async fn neutral_values_of_unsupported_fields_are_accepted() {
    let mut body = chat_body("hi", 2);
    body["n"] = json!(1);
    body["logprobs"] = json!(false);
    body["presence_penalty"] = json!(0);
    body["tools"] = json!([]);
    let (status, resp) = post(server(), "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{resp}");
}

#[tokio::test]
async fn out_of_range_sampling_values_are_400() {
    let mut body = chat_body("hi", 2);
    body["temperature"] = json!(5.0);
    expect_error("/v1/chat/completions", body, 400, Some("temperature")).await;
    let mut body = chat_body("hi", 2);
    body["top_p"] = json!(0.0);
    expect_error("/v1/chat/completions", body, 400, Some("top_p")).await;
}

#[tokio::test]
async fn image_content_parts_are_400() {
    let body = json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
    expect_error(
        "/v1/chat/completions",
        body,
        400,
        Some("messages[0].content[0]"),
    )
    .await;
}

#[tokio::test]
async fn wrong_kind_of_model_is_400() {
    let mut body = chat_body("hi", 2);
    body["model"] = json!(EMBED_MODEL);
    expect_error("/v1/chat/completions", body, 400, Some("model")).await;
    expect_error(
        "/v1/embeddings",
        json!({"model": CHAT_MODEL, "input": "x"}),
        400,
        Some("model"),
    )
    .await;
}

#[tokio::test]
async fn token_ids_outside_the_vocabulary_are_400() {
    expect_error(
        "/v1/completions",
        json!({"model": CHAT_MODEL, "prompt": [1, 999999]}),
        400,
        Some("prompt"),
    )
    .await;
    expect_error(
        "/detokenize",
        json!({"model": CHAT_MODEL, "tokens": [4294967295u32]}),
        400,
        Some("tokens"),
    )
    .await;
}

#[tokio::test]
async fn empty_messages_are_400() {
    expect_error(
        "/v1/chat/completions",
        json!({"model": CHAT_MODEL, "messages": []}),
        400,
        Some("messages"),
    )
    .await;
}

#[tokio::test]
async fn unknown_route_is_404_in_the_error_shape() {
    let resp = client()
        .get(server().url("/v1/nothing"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    error_of(&body);
}

#[tokio::test]
async fn errors_inside_a_stream_arrive_before_it_starts_as_plain_http_errors() {
    let mut body = chat_body("hi", 2);
    body["stream"] = json!(true);
    body["model"] = json!("nope");
    let (status, resp) = post(server(), "/v1/chat/completions", body).await;
    assert_eq!(status, 404, "{resp}");
}
