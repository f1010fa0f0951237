use super::*;

fn shell() -> Shell {
    let echo = [("instructions".to_string(), json!("be kind"))];
    Shell::new("m", echo.into_iter().collect())
}

fn chat_completion(message: Value, finish: &str) -> Value {
    json!({
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    })
}

#[test]
fn whole_chat_completion_becomes_a_completed_response() {
    let chat = chat_completion(json!({"role": "assistant", "content": "Hello"}), "stop");
    let r = shell().response_of(&chat);
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().is_some_and(|id| id.starts_with("resp_")));
    assert_eq!(r["status"], "completed");
    assert_eq!(r["instructions"], "be kind");
    assert_eq!(r["incomplete_details"], Value::Null);
    let item = &r["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert!(item["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["text"], "Hello");
    let usage = &r["usage"];
    assert_eq!(
        (
            &usage["input_tokens"],
            &usage["output_tokens"],
            &usage["total_tokens"]
        ),
        (&json!(10), &json!(4), &json!(14))
    );
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
}

#[test]
fn length_finish_is_incomplete_with_reason_max_output_tokens() {
    let chat = chat_completion(json!({"role": "assistant", "content": "Hel"}), "length");
    let r = shell().response_of(&chat);
    assert_eq!(r["status"], "incomplete");
    assert_eq!(
        r["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(r["output"][0]["status"], "incomplete");
}

#[test]
fn tool_calls_become_function_call_items() {
    let calls = json!([{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]);
    let chat = chat_completion(
        json!({"role": "assistant", "content": null, "tool_calls": calls}),
        "tool_calls",
    );
    let r = shell().response_of(&chat);
    assert_eq!(r["output"].as_array().map(Vec::len), Some(1));
    let item = &r["output"][0];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["call_id"], "call_1");
    assert_eq!(item["name"], "f");
    assert_eq!(item["arguments"], "{\"x\":1}");
    assert!(item["id"].as_str().is_some_and(|id| id.starts_with("fc_")));
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null})
}

fn usage_chunk() -> Value {
    json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})
}

/// Every event of `chunks` through a fresh machine, start to finish.
fn run(chunks: &[Value]) -> Vec<Value> {
    let mut m = EventMachine::new(shell());
    let mut events = m.start();
    for c in chunks {
        events.extend(m.chunk(c));
    }
    events.extend(m.finish());
    events
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

#[test]
fn text_stream_events_come_in_openai_order() {
    let events = run(&[
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": "Hel"}), None),
        chunk(json!({"content": "lo"}), None),
        chunk(json!({}), Some("stop")),
        usage_chunk(),
    ]);
    let expected = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ];
    assert_eq!(types(&events), expected);
    let numbers: Vec<u64> = events
        .iter()
        .filter_map(|e| e["sequence_number"].as_u64())
        .collect();
    assert_eq!(numbers, (0..expected.len() as u64).collect::<Vec<_>>());
    assert_eq!(events[0]["response"]["status"], "in_progress");
    assert_eq!(events[2]["item"]["content"], json!([]));
    assert_eq!(events[6]["text"], "Hello");
    let done = &events[9]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["usage"]["output_tokens"], 2);
}

#[test]
fn every_event_of_one_item_names_the_same_item_id() {
    let events = run(&[chunk(json!({"content": "a"}), Some("stop")), usage_chunk()]);
    let id = events[2]["item"]["id"].clone();
    for e in &events[3..7] {
        assert_eq!(e["item_id"], id, "{e}");
    }
    assert_eq!(events[7]["item"]["id"], id);
    assert_eq!(events[8]["response"]["output"][0]["id"], id);
}

#[test]
fn streamed_tool_calls_open_one_item_each_and_join_their_arguments() {
    let open = |index: u64, id: &str, name: &str| json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]});
    let args = |index: u64, piece: &str| json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]});
    let events = run(&[
        chunk(open(0, "call_a", "f"), None),
        chunk(args(0, "{\"x\":"), None),
        chunk(args(0, "1}"), None),
        chunk(open(1, "call_b", "g"), None),
        chunk(args(1, "{}"), None),
        chunk(json!({}), Some("tool_calls")),
        usage_chunk(),
    ]);
    let call = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ];
    let mut expected = vec!["response.created", "response.in_progress"];
    expected.extend(call);
    expected.extend([call[0], call[1], call[3], call[4]]);
    expected.push("response.completed");
    assert_eq!(types(&events), expected);
    assert_eq!(events[2]["item"]["arguments"], "");
    assert_eq!(events[5]["arguments"], "{\"x\":1}");
    let output = &events.last().expect("completed")["response"]["output"];
    assert_eq!(output[0]["call_id"], "call_a");
    assert_eq!(output[1]["call_id"], "call_b");
    assert_eq!(output[1]["arguments"], "{}");
    assert_eq!(output[1]["id"], events[7]["item"]["id"]);
}

#[test]
fn text_before_a_tool_call_is_closed_first() {
    let call = json!({"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]});
    let events = run(&[
        chunk(json!({"content": "Let me check."}), None),
        chunk(call, Some("tool_calls")),
    ]);
    let t = types(&events);
    let message_done = t.iter().position(|x| *x == "response.output_item.done");
    let call_added = t.iter().rposition(|x| *x == "response.output_item.added");
    assert!(message_done < call_added, "{t:?}");
    let output = &events.last().expect("completed")["response"]["output"];
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[1]["type"], "function_call");
    assert_eq!(events[call_added.unwrap_or(0)]["output_index"], 1);
}

#[test]
fn a_stream_without_output_still_has_an_empty_message() {
    let events = run(&[chunk(json!({}), Some("stop"))]);
    let done = &events.last().expect("completed")["response"];
    assert_eq!(done["output"][0]["type"], "message");
    assert_eq!(done["output"][0]["content"][0]["text"], "");
}

#[test]
fn length_finish_in_a_stream_ends_with_response_incomplete() {
    let events = run(&[
        chunk(json!({"content": "a"}), Some("length")),
        usage_chunk(),
    ]);
    let last = events.last().expect("event");
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");
}

#[tokio::test]
async fn an_error_in_the_chunks_ends_the_stream_with_an_error_event() {
    let chunks: Vec<Result<Value, ApiError>> = vec![
        Ok(chunk(json!({"content": "a"}), None)),
        Err(crate::infer::InferError::ShuttingDown.into()),
        Ok(chunk(json!({"content": "never"}), None)),
    ];
    let stream = futures_util::stream::iter(chunks).boxed();
    let events: Vec<Value> = events(shell(), stream).collect().await;
    let last = events.last().expect("events");
    assert_eq!(last["type"], "error");
    assert_eq!(last["code"], "shutting_down");
    assert!(last["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(last["sequence_number"], events.len() as u64 - 1);
    assert!(!events.iter().any(|e| e["delta"] == "never"));
}
