//! Every sampling field a client sends, over HTTP on both chat models: log-probabilities
//! (chat and completions, echo), logit_bias, penalties and n > 1.

mod common;
use common::*;
use serde_json::{json, Value};

async fn complete(server: &Server, body: Value) -> Value {
    let (status, body) = post(server, "/v1/completions", body).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Token strings and log-probabilities of a completions choice.
fn token_logprobs(choice: &Value) -> Vec<(String, f64)> {
    let lp = &choice["logprobs"];
    let tokens = lp["tokens"].as_array().expect("tokens");
    let logprobs = lp["token_logprobs"].as_array().expect("token_logprobs");
    tokens
        .iter()
        .zip(logprobs)
        .map(|(t, l)| {
            (
                t.as_str().unwrap().to_string(),
                l.as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// The single token id of `text`, which must be one token.
async fn one_token(server: &Server, model: &str, text: &str) -> u32 {
    let (status, body) = post(
        server,
        "/tokenize",
        json!({"model": model, "prompt": text, "add_special_tokens": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ids = body["tokens"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{text:?} is not one token: {body}");
    ids[0].as_u64().unwrap() as u32
}

const PROMPT: &str = "The capital of France is";

#[tokio::test]
async fn completion_logprobs_agree_with_a_teacher_forced_forward_of_the_same_text() {
    for (server, model) in chat_models() {
        let generated = complete(
            server,
            json!({"model": model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 2}),
        )
        .await;
        let text = generated["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        let sampled = token_logprobs(&generated["choices"][0]);
        assert_eq!(sampled.len(), 6, "{generated}");
        // The same text as a prompt, echoed with its log-probabilities.
        let forced = complete(
            server,
            json!({"model": model, "prompt": format!("{PROMPT}{text}"), "max_tokens": 1,
                   "temperature": 0, "logprobs": 2, "echo": true}),
        )
        .await;
        let echoed = token_logprobs(&forced["choices"][0]);
        let prompt_part = &echoed[echoed.len() - 1 - sampled.len()..echoed.len() - 1];
        for ((tok, lp), (forced_tok, forced_lp)) in sampled.iter().zip(prompt_part) {
            assert_eq!(tok, forced_tok, "{model}: retokenized differently");
            assert!(
                (lp - forced_lp).abs() < 2e-3,
                "{model}: {tok:?} {lp} vs {forced_lp}"
            );
        }
        assert!(forced["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{PROMPT}{text}")));
        // Nothing predicts the first token.
        assert_eq!(
            forced["choices"][0]["logprobs"]["token_logprobs"][0],
            Value::Null
        );
    }
}

#[tokio::test]
async fn chat_top_logprobs_are_sorted_sum_to_at_most_one_and_hold_the_greedy_token() {
    for (server, model) in chat_models() {
        let (status, body) = post(
            server,
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "user", "content": "Name a colour."}],
                   "max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 5}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let content = body["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap();
        assert!(!content.is_empty(), "{body}");
        for entry in content {
            let top = entry["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 5, "{entry}");
            let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
            assert!(lps.windows(2).all(|w| w[0] >= w[1]), "{model}: {lps:?}");
            let mass: f64 = lps.iter().map(|l| l.exp()).sum();
            assert!(mass <= 1.0 + 1e-4, "{model}: {mass}");
            // Greedy: the sampled token is the most likely one.
            assert_eq!(entry["token"], top[0]["token"], "{model}: {entry}");
            assert_eq!(entry["logprob"], top[0]["logprob"]);
            let bytes: Vec<u8> = serde_json::from_value(entry["bytes"].clone()).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                entry["token"].as_str().unwrap()
            );
        }
    }
}

#[tokio::test]
async fn logit_bias_minus_100_bans_a_token_and_plus_100_forces_one() {
    for (server, model) in chat_models() {
        let body = |bias: Value| {
            json!({"model": model, "prompt": PROMPT, "max_tokens": 3, "temperature": 0,
                   "logprobs": 0, "logit_bias": bias})
        };
        let plain = complete(server, body(json!({}))).await;
        let first = token_logprobs(&plain["choices"][0])[0].0.clone();
        let banned = one_token(server, model, &first).await;
        let without = complete(server, body(json!({banned.to_string(): -100}))).await;
        let tokens = token_logprobs(&without["choices"][0]);
        assert!(
            tokens.iter().all(|(t, _)| *t != first),
            "{model}: {tokens:?}"
        );

        let forced = one_token(server, model, " banana").await;
        let with = complete(server, body(json!({forced.to_string(): 100}))).await;
        let tokens = token_logprobs(&with["choices"][0]);
        assert!(
            tokens.iter().all(|(t, _)| t == " banana"),
            "{model}: {tokens:?}"
        );
    }
}

/// How often the most repeated token appears in a greedy completion of a repeating prompt.
async fn most_repeats(server: &Server, model: &str, penalty: (&str, f64)) -> usize {
    let mut body = json!({"model": model, "prompt": "Repeat after me: go go go go go go go go",
                          "max_tokens": 16, "temperature": 0, "logprobs": 0});
    body[penalty.0] = json!(penalty.1);
    let body = complete(server, body).await;
    let mut counts = std::collections::HashMap::new();
    for (token, _) in token_logprobs(&body["choices"][0]) {
        *counts.entry(token).or_insert(0) += 1;
    }
    counts.into_values().max().unwrap_or(0)
}

#[tokio::test]
async fn penalties_reduce_repeated_tokens_on_a_repeating_prompt() {
    for (server, model) in chat_models() {
        let base = most_repeats(server, model, ("frequency_penalty", 0.0)).await;
        // Frequency and repetition penalties grow with each repeat: a run of one token ends.
        for penalty in [("frequency_penalty", 2.0), ("repetition_penalty", 1.8)] {
            let penalized = most_repeats(server, model, penalty).await;
            assert!(
                penalized < base,
                "{model} {penalty:?}: {penalized} vs {base}"
            );
        }
        // Presence lowers a seen token once, by a constant: never more repeats (Qwen's lead
        // for " go" here exceeds 2, so its count may stay).
        let presence = most_repeats(server, model, ("presence_penalty", 2.0)).await;
        assert!(presence <= base, "{model}: {presence} vs {base}");
    }
}

fn n_body(model: &str, n: usize, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Write a short poem."}],
           "max_tokens": 8, "temperature": 1.0, "seed": 7, "n": n, "stream": stream,
           "stream_options": {"include_usage": stream}})
}

fn texts(body: &Value) -> Vec<String> {
    body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i);
            c["message"]["content"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn n_four_with_a_seed_gives_four_reproducible_choices_and_counts_the_prompt_once() {
    for (server, model) in chat_models() {
        let (status, first) = post(server, "/v1/chat/completions", n_body(model, 4, false)).await;
        assert_eq!(status, 200, "{first}");
        let (_, again) = post(server, "/v1/chat/completions", n_body(model, 4, false)).await;
        let (_, single) = post(server, "/v1/chat/completions", n_body(model, 1, false)).await;
        let choices = texts(&first);
        assert_eq!(choices.len(), 4);
        assert_eq!(choices, texts(&again), "{model}: not reproducible");
        assert!(
            choices.iter().any(|c| c != &choices[0]),
            "{model}: {choices:?}"
        );
        // Choice 0 is what the same request with n = 1 gives.
        assert_eq!(choices[0], texts(&single)[0]);
        let usage = &first["usage"];
        assert_eq!(usage["prompt_tokens"], single["usage"]["prompt_tokens"]);
        // Every choice's tokens: 8 for each that ran to the limit, 1..=8 for the others.
        let at_limit = first["choices"].as_array().unwrap().iter();
        let at_limit = at_limit.filter(|c| c["finish_reason"] == "length").count() as u64;
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!((8 * at_limit.max(1)..=32).contains(&completion), "{usage}");
    }
}

#[tokio::test]
async fn streamed_choices_interleave_by_index_and_match_the_whole_response() {
    let (server, model) = chat_models()[0];
    let (_, whole) = post(server, "/v1/chat/completions", n_body(model, 3, false)).await;
    let (status, events) =
        post_stream(server, "/v1/chat/completions", n_body(model, 3, true)).await;
    assert_eq!(status, 200, "{events:?}");
    let mut streamed = vec![String::new(); 3];
    let mut finished = 0;
    for chunk in events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
    {
        for c in chunk["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            streamed[i] += c["delta"]["content"].as_str().unwrap_or("");
            finished += c["finish_reason"].is_string() as usize;
        }
        if chunk["usage"].is_object() {
            assert_eq!(chunk["usage"], whole["usage"]);
        }
    }
    assert_eq!(finished, 3);
    assert_eq!(streamed, texts(&whole));
}

#[tokio::test]
async fn echo_shows_the_prompt_before_the_completion() {
    let (server, model) = chat_models()[0];
    let body = complete(
        server,
        json!({"model": model, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "echo": true}),
    )
    .await;
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with(PROMPT) && text.len() > PROMPT.len(),
        "{body}"
    );
    assert_eq!(body["choices"][0]["logprobs"], Value::Null);
}

#[tokio::test]
async fn out_of_range_sampling_fields_get_400_naming_the_field() {
    let (server, model) = chat_models()[0];
    let chat = |extra: Value| {
        let mut body = chat_body("hi", 2);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body["model"] = json!(model);
        body
    };
    let cases = [
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"logprobs": 3}), "logprobs"),
        (json!({"n": 0}), "n"),
        (json!({"n": 9}), "n"),
        (json!({"logit_bias": {"abc": 1}}), "logit_bias"),
        (json!({"logit_bias": {"99999999": 1}}), "logit_bias"),
        (json!({"logit_bias": {"5": 101}}), "logit_bias"),
        (json!({"presence_penalty": 2.5}), "presence_penalty"),
        (json!({"frequency_penalty": -3}), "frequency_penalty"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"min_p": 1.5}), "min_p"),
    ];
    for (extra, param) in cases {
        let (status, body) = post(server, "/v1/chat/completions", chat(extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(error_of(&body)["param"], param, "{extra}: {body}");
    }
    let (status, body) = post(
        server,
        "/v1/completions",
        json!({"model": model, "prompt": "x", "logprobs": 21}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body)["param"], "logprobs");
    assert_still_serving(server).await;
}

#[tokio::test]
async fn completions_serve_n_choices_with_their_own_logprobs() {
    let (server, model) = chat_models()[0];
    let body = complete(
        server,
        json!({"model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0.9,
               "seed": 5, "n": 2, "logprobs": 1}),
    )
    .await;
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{body}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let tokens = token_logprobs(c);
        assert_eq!(tokens.len(), 4, "{c}");
        let text: String = tokens.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(text, c["text"].as_str().unwrap());
    }
    assert_eq!(body["usage"]["completion_tokens"], 8);
}
