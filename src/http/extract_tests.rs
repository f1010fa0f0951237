use super::*;
use crate::http::dto::{ChatRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest};
use serde_json::json;

/// Words of Rust or serde that must never reach a client.
const RUST_WORDS: [&str; 10] = [
    "usize", "u32", "u64", "i64", "f32", "untagged", "enum", "struct", "sequence", "`",
];

/// The error `T` gives for `body`, checked to be a 400 free of Rust words.
fn error_for<T: RequestBody + std::fmt::Debug>(body: Value) -> ApiError {
    let e = T::from_json(&body).expect_err("the body does not fit");
    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
    assert_eq!(e.kind, "invalid_request_error");
    for word in RUST_WORDS {
        assert!(!e.message.contains(word), "{word:?} in {:?}", e.message);
    }
    e
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

#[test]
fn negative_max_tokens_names_the_field_not_the_value() {
    let e = error_for::<ChatRequest>(chat(json!({"max_tokens": -1})));
    assert_eq!(e.param.as_deref(), Some("max_tokens"));
    assert_eq!(
        e.message,
        "Invalid value for 'max_tokens': expected an integer ≥ 0, but got a negative number instead."
    );
}

#[test]
fn a_string_for_a_number_is_invalid_type() {
    let e = error_for::<ChatRequest>(chat(json!({"temperature": "hot"})));
    assert_eq!(e.param.as_deref(), Some("temperature"));
    assert_eq!(e.code, Some("invalid_type"));
    assert_eq!(
        e.message,
        "Invalid type for 'temperature': expected a number, but got a string instead."
    );
}

#[test]
fn a_bad_message_content_names_its_index() {
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "user", "content": 5},
    ]});
    let e = error_for::<ChatRequest>(body);
    assert_eq!(e.param.as_deref(), Some("messages[2].content"));
    assert!(e.message.contains("a string or an array of content parts"));
}

#[test]
fn an_object_prompt_says_what_a_prompt_may_be() {
    let e = error_for::<CompletionRequest>(json!({"model": "m", "prompt": {}}));
    assert_eq!(e.param.as_deref(), Some("prompt"));
    assert_eq!(
        e.message,
        "Invalid type for 'prompt': expected a string, an array of strings, an array of \
         integers or an array of arrays of integers, but got an object instead."
    );
}

#[test]
fn missing_fields_are_named_with_their_path() {
    let e = error_for::<ChatRequest>(json!({"messages": []}));
    assert_eq!(e.param.as_deref(), Some("model"));
    assert_eq!(e.code, Some("missing_required_parameter"));
    let e = error_for::<ChatRequest>(json!({"model": "m", "messages": [{"content": "x"}]}));
    assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    let e = error_for::<EmbeddingRequest>(json!({"model": "m"}));
    assert_eq!(e.param.as_deref(), Some("input"));
}

#[test]
fn fields_of_the_shared_parts_keep_their_path() {
    // Sampling and unsupported fields are separate structs read from the same body.
    let e = error_for::<CompletionRequest>(json!({"model": "m", "prompt": "p", "stop": [1]}));
    assert_eq!(e.param.as_deref(), Some("stop"));
    let e = error_for::<ChatRequest>(chat(json!({"n": "two"})));
    assert_eq!(e.param.as_deref(), Some("n"));
    let e = error_for::<ChatRequest>(chat(json!({"logit_bias": [1]})));
    assert_eq!(e.param.as_deref(), Some("logit_bias"));
    let e = error_for::<ChatRequest>(chat(json!({"metadata": {"k": 1}})));
    assert_eq!(e.param.as_deref(), Some("metadata.k"));
}

#[test]
fn a_token_id_out_of_range_is_an_invalid_value() {
    let e = error_for::<DetokenizeRequest>(json!({"model": "m", "tokens": [1, 5000000000u64]}));
    assert_eq!(e.param.as_deref(), Some("tokens[1]"));
    assert_eq!(
        e.message,
        "Invalid value for 'tokens[1]': expected an integer from 0 to 4294967295, but got an \
         integer that is too large instead."
    );
}

#[test]
fn a_body_that_is_not_an_object_has_no_param() {
    let e = error_for::<ChatRequest>(json!([1, 2]));
    assert_eq!(e.param, None);
    assert_eq!(
        e.message,
        "Invalid type for the request body: expected an object, but got an array instead."
    );
}

#[test]
fn null_reads_as_absent_in_every_part() {
    let nulls = [
        "stream",
        "stream_options",
        "stop",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "n",
        "user",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "metadata",
        "store",
        "service_tier",
    ];
    let mut body = chat(json!({}));
    for field in nulls {
        body[field] = Value::Null;
    }
    body["messages"][0]["name"] = Value::Null;
    body["messages"][0]["tool_calls"] = Value::Null;
    body["messages"][0]["refusal"] = Value::Null;
    let req = ChatRequest::from_json(&body).expect("nulls are absent");
    assert!(!req.stream);
    assert!(req.unsupported.check().is_ok() && req.ignored.check().is_ok());
}
