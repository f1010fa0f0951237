//! `POST /v1/responses` over HTTP on the real SmolLM2 model: the Response object, its stream
//! of events, what reaches the prompt, and what a stateless server refuses. Chat completions
//! of the same conversation are the reference for text and token counts.

mod common;
use common::*;
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";

fn responses_body(extra: Value) -> Value {
    let mut body =
        json!({"model": CHAT_MODEL, "input": QUESTION, "temperature": 0, "max_output_tokens": 8});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// The first message item's text of a Response.
fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|part| part["text"].as_str().map(str::to_string))
        .collect()
}

/// `(event, data)` of each SSE event of a streamed response.
async fn stream_events(body: Value) -> Vec<(String, Value)> {
    let resp = client()
        .post(server().url("/v1/responses"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    assert!(!text.contains("[DONE]"), "{text}");
    let mut events = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event:") {
            name = n.trim().to_string();
        } else if let Some(data) = line.strip_prefix("data:") {
            let data: Value = serde_json::from_str(data.trim()).expect("event data is JSON");
            events.push((std::mem::take(&mut name), data));
        }
    }
    events
}

#[tokio::test]
async fn string_input_answers_a_response_matching_the_chat_completion() {
    let (status, r) = post(server(), "/v1/responses", responses_body(json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().is_some_and(|id| id.starts_with("resp_")));
    assert_eq!(r["model"], CHAT_MODEL);
    let (_, chat) = post(server(), "/v1/chat/completions", chat_body(QUESTION, 8)).await;
    assert_eq!(output_text(&r), chat["choices"][0]["message"]["content"]);
    assert!(!output_text(&r).is_empty(), "{r}");
    let usage = &r["usage"];
    // llama-server counts 37 prompt tokens for this question with SmolLM2's template.
    assert_eq!(usage["input_tokens"], 37, "{r}");
    assert_eq!(usage["output_tokens"], chat["usage"]["completion_tokens"]);
    let total =
        usage["input_tokens"].as_u64().unwrap_or(0) + usage["output_tokens"].as_u64().unwrap_or(0);
    assert_eq!(usage["total_tokens"], total);
}

#[tokio::test]
async fn stream_sends_openai_events_in_order_ending_in_completed_with_the_deltas_text() {
    let events = stream_events(responses_body(json!({"stream": true}))).await;
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "event name is the data's type");
        assert_eq!(data["sequence_number"], i as u64);
    }
    let types: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = types
        .iter()
        .filter(|t| **t == "response.output_text.delta")
        .count();
    assert!(deltas >= 1, "{types:?}");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]);
    let last = types.last().copied().unwrap_or_default();
    assert!(
        ["response.completed", "response.incomplete"].contains(&last),
        "{types:?}"
    );
    expected.push(last);
    assert_eq!(types, expected);

    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    let done = &events.last().expect("events").1["response"];
    assert_eq!(output_text(done), text);
    let (_, whole) = post(server(), "/v1/responses", responses_body(json!({}))).await;
    assert_eq!(
        text,
        output_text(&whole),
        "greedy: the stream says what the whole answer says"
    );
    assert_eq!(done["usage"], whole["usage"]);
    assert_eq!(done["id"], events[0].1["response"]["id"]);
}

#[tokio::test]
async fn instructions_reach_the_prompt_as_a_system_message() {
    let instructions = "You answer in one word.";
    let with = responses_body(json!({"instructions": instructions, "max_output_tokens": 1}));
    let (status, r) = post(server(), "/v1/responses", with).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["instructions"], instructions);
    let chat = json!({
        "model": CHAT_MODEL,
        "messages": [{"role": "system", "content": instructions}, {"role": "user", "content": QUESTION}],
        "max_tokens": 1,
    });
    let (_, chat) = post(server(), "/v1/chat/completions", chat).await;
    assert_eq!(r["usage"]["input_tokens"], chat["usage"]["prompt_tokens"]);
    assert_ne!(
        r["usage"]["input_tokens"], 37,
        "the default system message was replaced"
    );
}

#[tokio::test]
async fn max_output_tokens_cut_is_incomplete_with_reason_max_output_tokens() {
    let body = responses_body(
        json!({"input": "Count from one to fifty in words.", "max_output_tokens": 3}),
    );
    let (status, r) = post(server(), "/v1/responses", body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r["usage"]["output_tokens"], 3);
    assert_eq!(r["max_output_tokens"], 3);
}

#[tokio::test]
async fn previous_response_id_is_400_naming_it() {
    let body = responses_body(json!({"previous_response_id": "resp_123"}));
    let (status, r) = post(server(), "/v1/responses", body).await;
    assert_eq!(status, 400);
    let e = error_of(&r);
    assert_eq!(e["param"], "previous_response_id");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("stateless")),
        "{r}"
    );
}

#[tokio::test]
async fn store_true_is_400_naming_store() {
    let (status, r) = post(
        server(),
        "/v1/responses",
        responses_body(json!({"store": true})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&r)["param"], "store");
}

#[tokio::test]
async fn a_bad_input_item_is_400_naming_it_not_the_chat_message() {
    let input = json!([{"role": "user", "content": "hi"}, {"role": "user", "content": 5}]);
    let body = responses_body(json!({"instructions": "x", "input": input}));
    let (status, r) = post(server(), "/v1/responses", body).await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&r)["param"], "input[1].content");
}

#[tokio::test]
async fn stored_response_routes_are_404_saying_nothing_is_stored() {
    let url = server().url("/v1/responses/resp_123");
    for request in [client().get(&url), client().delete(&url)] {
        let resp = request.send().await.expect("request");
        assert_eq!(resp.status(), 404);
        let body: Value = resp.json().await.expect("json");
        let message = error_of(&body)["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains("not stored"), "{body}");
    }
}

#[tokio::test]
async fn responses_are_counted_under_their_own_route_label() {
    let (status, _) = post(
        server(),
        "/v1/responses",
        responses_body(json!({"max_output_tokens": 1})),
    )
    .await;
    assert_eq!(status, 200);
    let text = client()
        .get(server().metrics_url())
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let counted = text.lines().any(|l| {
        l.starts_with("tiergate_requests_total{")
            && l.contains("route=\"/v1/responses\"")
            && l.contains("outcome=\"ok\"")
    });
    assert!(counted, "{text}");
}

fn weather_tool() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                       "required": ["city"], "additionalProperties": false}})
}

fn weather_body(extra: Value) -> Value {
    let mut body = responses_body(json!({"input": "What is the weather in Paris?",
        "tools": [weather_tool()], "tool_choice": "required", "parallel_tool_calls": false,
        "max_output_tokens": 60}));
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// `(name, arguments)` of each `function_call` item of a Response.
fn calls_of(response: &Value) -> Vec<(String, String)> {
    let items = response["output"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter(|item| item["type"] == "function_call")
        .map(|item| {
            assert!(
                item["call_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("call_")),
                "{item}"
            );
            let name = item["name"].as_str().unwrap_or_default().to_string();
            (
                name,
                item["arguments"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn flat_function_tools_answer_function_call_items_as_chat_would() {
    let (status, r) = post(server(), "/v1/responses", weather_body(json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
    let calls = calls_of(&r);
    assert_eq!(
        calls.len(),
        1,
        "parallel_tool_calls: false reached chat: {r}"
    );
    let chat = json!({"model": CHAT_MODEL, "temperature": 0, "max_tokens": 60, "tool_choice": "required",
        "parallel_tool_calls": false,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
            "parameters": weather_tool()["parameters"]}}]});
    let (_, chat) = post(server(), "/v1/chat/completions", chat).await;
    let expected: Vec<(String, String)> = chat["choices"][0]["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let f = &c["function"];
            (
                f["name"].as_str().unwrap_or_default().to_string(),
                f["arguments"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(calls, expected);
    for (name, arguments) in &calls {
        assert_eq!(name, "get_weather");
        let args: Value = serde_json::from_str(arguments).expect("arguments are JSON");
        assert!(args["city"].is_string(), "{args}");
    }
}

#[tokio::test]
async fn streamed_function_calls_send_argument_deltas_that_join_to_the_whole_answer() {
    let (_, whole) = post(server(), "/v1/responses", weather_body(json!({}))).await;
    let events = stream_events(weather_body(json!({"stream": true}))).await;
    let types: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        types.last().copied(),
        Some("response.completed"),
        "{types:?}"
    );
    let added: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "response.output_item.added")
        .map(|(_, d)| &d["item"])
        .collect();
    assert!(
        added
            .iter()
            .all(|item| item["type"] == "function_call" && item["arguments"] == ""),
        "{added:?}"
    );
    let mut streamed: Vec<(String, String)> = Vec::new();
    for (name, data) in &events {
        let index = data["output_index"].as_u64().unwrap_or(0) as usize;
        match name.as_str() {
            "response.output_item.added" => streamed.push((
                data["item"]["name"].as_str().unwrap_or_default().into(),
                String::new(),
            )),
            "response.function_call_arguments.delta" => streamed[index]
                .1
                .push_str(data["delta"].as_str().unwrap_or_default()),
            "response.function_call_arguments.done" => {
                assert_eq!(data["arguments"], streamed[index].1.as_str())
            }
            _ => {}
        }
    }
    assert_eq!(streamed, calls_of(&whole));
    assert_eq!(
        calls_of(&events.last().expect("events").1["response"]),
        streamed
    );
}

#[tokio::test]
async fn a_function_call_output_in_the_input_is_served() {
    let input = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees and sunny"},
    ]);
    let body = weather_body(json!({"input": input, "tool_choice": "auto"}));
    let (status, r) = post(server(), "/v1/responses", body).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["usage"]["input_tokens"].as_u64().unwrap_or(0) > 37, "{r}");
    let unknown = json!([{"type": "function_call_output", "call_id": "call_9", "output": "x"}]);
    let (status, r) = post(
        server(),
        "/v1/responses",
        weather_body(json!({"input": unknown})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&r)["param"], "input[0].call_id");
}

#[tokio::test]
async fn a_json_schema_text_format_holds_the_output_text_to_the_schema() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"], "additionalProperties": false});
    let format = json!({"type": "json_schema", "name": "answer", "strict": true, "schema": schema});
    let body = responses_body(json!({"text": {"format": format}, "max_output_tokens": 40}));
    let (status, r) = post(server(), "/v1/responses", body).await;
    assert_eq!(status, 200, "{r}");
    let answer: Value =
        serde_json::from_str(&output_text(&r)).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert!(answer["city"].is_string(), "{answer}");
    assert_eq!(r["text"]["format"]["name"], "answer");
    let bad = json!({"type": "json_schema", "name": "x", "schema": {"type": "banana"}});
    let (status, r) = post(
        server(),
        "/v1/responses",
        responses_body(json!({"text": {"format": bad}})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&r)["param"], "text.format.schema");
}
