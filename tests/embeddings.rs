//! Embeddings over HTTP on the real all-MiniLM-L6-v2 model.

mod common;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

fn vectors(body: &Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .expect("floats")
                .iter()
                .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                .collect()
        })
        .collect()
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn paraphrases_score_higher_than_unrelated_sentences() {
    let input = [
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Stock markets fell sharply today.",
    ];
    let (status, body) = post(
        server(),
        "/v1/embeddings",
        json!({"model": EMBED_MODEL, "input": input}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = vectors(&body);
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|x| x.len() == 384));
    // Reference values computed outside our code (tests/reference): 0.7689 and 0.0462.
    assert!(
        (cos(&v[0], &v[1]) - 0.7689).abs() < 1e-3,
        "{}",
        cos(&v[0], &v[1])
    );
    assert!(
        (cos(&v[0], &v[2]) - 0.0462).abs() < 1e-3,
        "{}",
        cos(&v[0], &v[2])
    );
    assert_eq!(body["data"][2]["index"], 2);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 10);
}

#[tokio::test]
async fn a_single_string_input_gives_one_unit_vector() {
    let (status, body) = post(
        server(),
        "/v1/embeddings",
        json!({"model": EMBED_MODEL, "input": "hello"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = vectors(&body);
    assert_eq!(v.len(), 1);
    assert!((cos(&v[0], &v[0]) - 1.0).abs() < 1e-4);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["object"], "embedding");
}

#[tokio::test]
async fn base64_encoding_carries_the_same_floats() {
    let req = |fmt: &str| json!({"model": EMBED_MODEL, "input": ["base64 check"], "encoding_format": fmt});
    let (_, floats) = post(server(), "/v1/embeddings", req("float")).await;
    let (status, b64) = post(server(), "/v1/embeddings", req("base64")).await;
    assert_eq!(status, 200, "{b64}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().expect("string"))
        .expect("base64");
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, vectors(&floats)[0]);
}

#[tokio::test]
async fn too_long_input_is_400_unless_truncation_is_asked() {
    let long = "word ".repeat(400);
    let (status, body) = post(
        server(),
        "/v1/embeddings",
        json!({"model": EMBED_MODEL, "input": long}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body)["code"], "context_length_exceeded");
    let (status, body) = post(
        server(),
        "/v1/embeddings",
        json!({"model": EMBED_MODEL, "input": long, "truncate": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 256);
}

#[tokio::test]
async fn dimensions_other_than_the_models_are_rejected_naming_the_field() {
    let (status, body) = post(
        server(),
        "/v1/embeddings",
        json!({"model": EMBED_MODEL, "input": "x", "dimensions": 128}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body)["param"], "dimensions");
    let (status, _) = post(
        server(),
        "/v1/embeddings",
        json!({"model": EMBED_MODEL, "input": "x", "dimensions": 384}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn empty_input_is_rejected() {
    let (status, body) = post(
        server(),
        "/v1/embeddings",
        json!({"model": EMBED_MODEL, "input": []}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body)["param"], "input");
}

#[tokio::test]
async fn null_encoding_format_and_dimensions_read_as_absent() {
    let body = json!({"model": EMBED_MODEL, "input": "x", "encoding_format": null, "dimensions": null, "user": null});
    let (status, resp) = post(server(), "/v1/embeddings", body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(vectors(&resp)[0].len(), 384, "floats, full size");
}
