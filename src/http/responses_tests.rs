use super::*;
use crate::http::responses_params::replace_word;
use axum::http::StatusCode;

fn body(extra: Value) -> Value {
    let mut body = json!({"model": "m", "input": "hi"});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// The chat body a Responses body becomes.
fn chat_of(extra: Value) -> Value {
    let body = body(extra);
    let (messages, _) = messages(&body).expect("messages translate");
    chat_body(&body, messages).expect("chat body")
}

fn error_of(extra: Value) -> ApiError {
    match ResponsesRequest::from_json(&body(extra)) {
        Ok(_) => panic!("accepted"),
        Err(e) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
            e
        }
    }
}

#[test]
fn string_input_becomes_one_user_message() {
    let chat = chat_of(json!({}));
    assert_eq!(chat["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(chat["model"], "m");
}

#[test]
fn instructions_become_a_leading_system_message() {
    let chat = chat_of(json!({"instructions": "Be brief."}));
    assert_eq!(
        chat["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(chat["messages"][1]["role"], "user");
}

#[test]
fn input_text_and_output_text_parts_become_text_parts() {
    let input = json!([
        {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "b"}]},
    ]);
    let chat = chat_of(json!({"input": input}));
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
        ])
    );
}

#[test]
fn consecutive_function_calls_join_one_assistant_message() {
    let input = json!([
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
    ]);
    let chat = chat_of(json!({"input": input}));
    let calls = json!([
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]);
    assert_eq!(chat["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(chat["messages"][1]["role"], "assistant");
    assert_eq!(chat["messages"][1]["tool_calls"], calls);
}

#[test]
fn function_call_output_becomes_a_tool_message() {
    let input = json!([
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]);
    let chat = chat_of(json!({"input": input}));
    assert_eq!(
        chat["messages"][1],
        json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
    );
}

#[test]
fn function_call_without_call_id_is_400_naming_it() {
    let input = json!([{"type": "function_call", "name": "f", "arguments": "{}"}]);
    let e = error_of(json!({"input": input}));
    assert_eq!(e.param.as_deref(), Some("input[0].call_id"));
}

#[test]
fn other_input_item_types_are_400_naming_the_type() {
    let e = error_of(json!({"input": [{"type": "item_reference", "id": "x"}]}));
    assert_eq!(e.param.as_deref(), Some("input[0].type"));
}

#[test]
fn flat_function_tools_become_chat_tools() {
    let tool = json!({"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true});
    let chat = chat_of(json!({"tools": [tool]}));
    let function =
        json!({"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true});
    assert_eq!(
        chat["tools"],
        json!([{"type": "function", "function": function}])
    );
}

#[test]
fn web_search_tool_is_400_naming_its_type() {
    let e = error_of(json!({"tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}));
    assert_eq!(e.param.as_deref(), Some("tools[1].type"));
    assert_eq!(e.code, Some("unsupported_parameter"));
}

#[test]
fn tool_choice_function_becomes_chat_shape_and_strings_pass() {
    let chat = chat_of(json!({"tool_choice": {"type": "function", "name": "f"}}));
    assert_eq!(
        chat["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(
        chat_of(json!({"tool_choice": "required"}))["tool_choice"],
        "required"
    );
}

#[test]
fn json_schema_text_format_becomes_response_format() {
    let format =
        json!({"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": true});
    let chat = chat_of(json!({"text": {"format": format}}));
    let expected = json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}});
    assert_eq!(chat["response_format"], expected);
    let plain = chat_of(json!({"text": {"format": {"type": "json_object"}}}));
    assert_eq!(plain["response_format"], json!({"type": "json_object"}));
}

#[test]
fn max_output_tokens_becomes_max_completion_tokens() {
    let chat = chat_of(json!({"max_output_tokens": 7}));
    assert_eq!(chat["max_completion_tokens"], 7);
    assert!(chat.get("max_output_tokens").is_none());
}

#[test]
fn a_stream_asks_chat_for_its_usage() {
    let chat = chat_of(json!({"stream": true}));
    assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    assert!(chat_of(json!({})).get("stream_options").is_none());
}

#[test]
fn unknown_fields_are_ignored_and_chat_only_fields_not_passed() {
    let req = ResponsesRequest::from_json(&body(json!({"frobnicate": 1, "n": 3, "seed": 1})))
        .unwrap_or_else(|e| panic!("{}", e.message));
    assert!(req.chat.sampling.n.is_none() && req.chat.sampling.seed.is_none());
}

#[test]
fn previous_response_id_is_400_saying_the_server_is_stateless() {
    let e = error_of(json!({"previous_response_id": "resp_1"}));
    assert_eq!(e.param.as_deref(), Some("previous_response_id"));
    assert!(e.message.contains("stateless") && e.message.contains("input"));
}

#[test]
fn store_true_is_400_naming_store() {
    assert_eq!(
        error_of(json!({"store": true})).param.as_deref(),
        Some("store")
    );
}

#[test]
fn non_neutral_values_are_400_naming_the_field() {
    let cases = [
        ("background", json!(true)),
        ("include", json!(["message.output_text.logprobs"])),
        ("truncation", json!("auto")),
        ("reasoning", json!({"effort": "high"})),
        ("conversation", json!("conv_1")),
    ];
    for (field, value) in cases {
        let e = error_of(json!({field: value}));
        assert_eq!(e.param.as_deref(), Some(field), "{field}");
    }
}

#[test]
fn neutral_values_are_accepted() {
    let neutral = json!({
        "background": false, "include": [], "truncation": "disabled", "store": false,
        "reasoning": {"effort": null, "summary": null}, "previous_response_id": null,
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "metadata": {"k": "v"},
    });
    if let Err(e) = ResponsesRequest::from_json(&body(neutral)) {
        panic!("{}", e.message);
    }
}

#[test]
fn missing_input_is_400_missing_required_parameter() {
    let e = ResponsesRequest::from_json(&json!({"model": "m"})).err();
    let e = e.expect("refused");
    assert_eq!(e.param.as_deref(), Some("input"));
    assert_eq!(e.code, Some("missing_required_parameter"));
}

#[test]
fn empty_input_is_400_naming_input_not_messages() {
    let e = error_of(json!({"input": []}));
    assert_eq!(e.param.as_deref(), Some("input"));
    assert!(!e.message.contains("messages"), "{}", e.message);
}

#[test]
fn chat_errors_name_the_input_item_they_came_from() {
    let input = json!([{"role": "user", "content": "a"}, {"role": "user", "content": 5}]);
    let e = error_of(json!({"instructions": "x", "input": input}));
    assert_eq!(e.param.as_deref(), Some("input[1].content"));
    assert!(e.message.contains("'input[1].content'"), "{}", e.message);
}

#[test]
fn negative_max_output_tokens_names_max_output_tokens() {
    let e = error_of(json!({"max_output_tokens": -1}));
    assert_eq!(e.param.as_deref(), Some("max_output_tokens"));
    assert!(
        !e.message.contains("max_completion_tokens"),
        "{}",
        e.message
    );
}

#[test]
fn tool_call_and_call_output_paths_map_back_to_their_items() {
    let input = json!([
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "r"},
    ]);
    let (_, map) = messages(&body(json!({"instructions": "s", "input": input}))).expect("ok");
    let cases = [
        ("messages[0].content", "instructions"),
        ("messages[1].content", "input[0].content"),
        (
            "messages[2].tool_calls[1].function.arguments",
            "input[2].arguments",
        ),
        ("messages[2].tool_calls[0].id", "input[1].call_id"),
        ("messages[3].content", "input[3].output"),
        ("messages[3].role", "input[3].type"),
        ("tools[2].function.parameters", "tools[2].parameters"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("max_tokens", "max_output_tokens"),
        ("temperature", "temperature"),
    ];
    for (chat, responses) in cases {
        assert_eq!(map.param(chat), responses, "{chat}");
    }
}

#[test]
fn replace_word_leaves_longer_names_alone() {
    assert_eq!(
        replace_word(
            "max_tokens and max_tokens_x",
            "max_tokens",
            "max_output_tokens"
        ),
        "max_output_tokens and max_tokens_x"
    );
}
