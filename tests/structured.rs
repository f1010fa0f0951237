//! Structured outputs and tool calls over HTTP on both chat models: whatever the model would
//! have written, the answer parses and follows the schema; calls come back as `tool_calls`,
//! whole or streamed; bad schemas and tool lists are 400s naming the field.

mod common;
use common::*;
use serde_json::{json, Value};

fn person_format() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer"},
            "role": {"enum": ["admin", "user", "guest"]},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                        "required": ["city"], "additionalProperties": false},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
        },
        "required": ["name", "age", "role", "address", "tags"],
        "additionalProperties": false,
    }}})
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}}})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 30}},
                       "required": ["tz"], "additionalProperties": false}}})
}

fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(v["name"].is_string() && v["age"].is_i64(), "{text}");
    assert!(
        ["admin", "user", "guest"].contains(&v["role"].as_str().unwrap()),
        "{text}"
    );
    assert!(v["address"]["city"].is_string(), "{text}");
    assert!(v["tags"].as_array().unwrap().len() <= 3, "{text}");
}

#[tokio::test]
async fn json_schema_answers_parse_and_follow_the_schema_at_temperature_1() {
    for (server, model) in chat_models() {
        let body = json!({"model": model, "max_tokens": 120, "temperature": 1, "seed": 5, "n": 3,
            "messages": [{"role": "user", "content": "Describe a person."}],
            "response_format": person_format()});
        let (status, body) = post(server, "/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{body}");
        for choice in body["choices"].as_array().unwrap() {
            assert_eq!(choice["finish_reason"], "stop", "{model}: {choice}");
            check_person(choice["message"]["content"].as_str().unwrap());
        }
    }
}

#[tokio::test]
async fn json_object_answers_are_objects() {
    let body = json!({"model": CHAT_MODEL, "max_tokens": 60, "temperature": 0,
        "messages": [{"role": "user", "content": "Give me a JSON object about cats."}],
        "response_format": {"type": "json_object"}});
    let (status, body) = post(server(), "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with('{'), "{text}");
    if body["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(text).unwrap().is_object());
    }
}

#[tokio::test]
async fn a_completion_follows_a_regex() {
    let body = json!({"model": CHAT_MODEL, "prompt": "The date today is", "max_tokens": 20,
        "structured_outputs": {"regex": " [0-9]{4}-[0-9]{2}-[0-9]{2}"}});
    let (status, body) = post(server(), "/v1/completions", body).await;
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text.len(), 11, "{text}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

fn calls_of(choice: &Value) -> Vec<(String, Value)> {
    choice["message"]["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool_calls: {choice}"))
        .iter()
        .map(|c| {
            assert!(c["id"].as_str().unwrap().starts_with("call_"), "{c}");
            assert_eq!(c["type"], "function");
            let args = c["function"]["arguments"].as_str().unwrap();
            let args: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{e}: {args}"));
            (c["function"]["name"].as_str().unwrap().to_string(), args)
        })
        .collect()
}

fn tools_body(model: &str, choice: Value) -> Value {
    json!({"model": model, "max_tokens": 100, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [weather_tool(), time_tool()], "tool_choice": choice})
}

#[tokio::test]
async fn required_tool_choice_gives_calls_whose_arguments_validate() {
    for (server, model) in chat_models() {
        let (status, body) = post(
            server,
            "/v1/chat/completions",
            tools_body(model, json!("required")),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{model}: {choice}");
        for (name, args) in calls_of(choice) {
            match name.as_str() {
                "get_weather" => {
                    assert!(args["city"].is_string());
                    assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()));
                }
                "get_time" => assert!(args["tz"].is_string()),
                other => panic!("{other}"),
            }
        }
    }
}

#[tokio::test]
async fn a_named_function_is_the_one_called() {
    for (server, model) in chat_models() {
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        let (status, body) = post(server, "/v1/chat/completions", tools_body(model, named)).await;
        assert_eq!(status, 200, "{body}");
        let calls = calls_of(&body["choices"][0]);
        assert_eq!(calls.len(), 1, "{body}");
        assert_eq!(calls[0].0, "get_time");
    }
}

#[tokio::test]
async fn streamed_tool_calls_reassemble_to_the_whole_answer() {
    let mut whole = tools_body(QWEN_MODEL, json!("required"));
    let (status, body) = post(qwen_server(), "/v1/chat/completions", whole.clone()).await;
    assert_eq!(status, 200, "{body}");
    let expected: Vec<(String, Value)> = calls_of(&body["choices"][0]);
    whole["stream"] = json!(true);
    let (status, events) = post_stream(qwen_server(), "/v1/chat/completions", whole).await;
    assert_eq!(status, 200);
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = Value::Null;
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(e).unwrap();
        let choice = &chunk["choices"][0];
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
        for tc in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                // The first piece of a call carries its id and name.
                let id = tc["id"].as_str().expect("id first").to_string();
                let name = tc["function"]["name"]
                    .as_str()
                    .expect("name first")
                    .to_string();
                calls.push((id, name, String::new()));
            }
            calls[i]
                .2
                .push_str(tc["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(finish, "tool_calls");
    let got: Vec<(String, Value)> = calls
        .into_iter()
        .map(|(_, name, args)| (name, serde_json::from_str(&args).expect("arguments parse")))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn auto_may_answer_in_text_after_a_tool_result() {
    for (server, model) in chat_models() {
        let body = json!({"model": model, "max_tokens": 40, "temperature": 0,
        "tools": [weather_tool()],
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
        ]});
        let (status, body) = post(server, "/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{model}: {body}");
        let message = &body["choices"][0]["message"];
        // Either shape is the model's choice; whichever it took is well formed.
        if message["tool_calls"].is_array() {
            calls_of(&body["choices"][0]);
        } else {
            assert!(
                message["content"]
                    .as_str()
                    .is_some_and(|t| !t.contains("<tool_call>")),
                "{body}"
            );
        }
    }
}

async fn refused(body: Value) -> Value {
    let (status, body) = post(server(), "/v1/chat/completions", body).await;
    assert_eq!(status, 400, "{body}");
    error_of(&body).clone()
}

fn chat(extra: Value) -> Value {
    let mut body = chat_body("Hi", 5);
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn an_invalid_schema_is_a_400_naming_it() {
    let format =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "banana"}}});
    let e = refused(chat(json!({"response_format": format}))).await;
    assert_eq!(e["param"], "response_format.json_schema.schema");
    assert_still_serving(server()).await;
}

#[tokio::test]
async fn an_unknown_tool_choice_name_is_a_400() {
    let choice = json!({"type": "function", "function": {"name": "nope"}});
    let e = refused(chat(
        json!({"tools": [weather_tool()], "tool_choice": choice}),
    ))
    .await;
    assert_eq!(e["param"], "tool_choice");
}

#[tokio::test]
async fn duplicate_tool_names_are_a_400() {
    let e = refused(chat(json!({"tools": [weather_tool(), weather_tool()]}))).await;
    assert_eq!(e["param"], "tools[1].function.name");
}

#[tokio::test]
async fn a_tool_message_without_its_call_is_a_400() {
    let body = json!({"model": CHAT_MODEL, "max_tokens": 5, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "tool", "tool_call_id": "call_missing", "content": "42"}]});
    let e = refused(body).await;
    assert_eq!(e["param"], "messages[1].tool_call_id");
}

#[tokio::test]
async fn a_grammar_over_the_size_limit_is_a_400() {
    let props: serde_json::Map<String, Value> = (0..600)
        .map(|i| (format!("field_number_{i}"), json!({"type": "string"})))
        .collect();
    let format = json!({"type": "json_schema", "json_schema": {"name": "big",
        "schema": {"type": "object", "properties": props}}});
    let e = refused(chat(json!({"response_format": format}))).await;
    assert_eq!(e["param"], "response_format.json_schema.schema");
    assert!(e["message"].as_str().unwrap().contains("at most"), "{e}");
}
