use std::path::PathBuf;

use super::*;

const REFERENCE_JSON: &str = include_str!("../../tests/reference/minilm_reference.json");

/// Written by tests/reference/make_minilm_reference.py (NumPy, no candle).
#[derive(Deserialize)]
struct Reference {
    model_safetensors_sha256: String,
    entries: Vec<ReferenceEntry>,
}

#[derive(Deserialize)]
struct ReferenceEntry {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    serde_json::from_str(REFERENCE_JSON).expect("minilm_reference.json parses")
}

fn model_dir() -> PathBuf {
    let cache = crate::models::default_cache_dir();
    let dir = cache.join("models").join("all-minilm-l6-v2");
    assert!(
        dir.join(WEIGHTS_FILE).is_file() && dir.join(TOKENIZER_FILE).is_file(),
        "all-MiniLM-L6-v2 is not installed in {}: run `tiergate models fetch` first",
        dir.display()
    );
    dir
}

/// On the test device (`TIERGATE_TEST_DEVICE`). Everything here is f32, which candle's CUDA
/// GEMM computes without TF32: only summation order differs from the CPU (~1e-6), so the
/// bounds below hold on both.
fn load_model() -> BertEmbedder {
    load(&model_dir(), &crate::backend::device::test_device()).expect("all-MiniLM-L6-v2 loads")
}

fn encode(tokenizer: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    tokenizer
        .encode(text, true)
        .expect("encodes")
        .get_ids()
        .to_vec()
}

fn encode_all(texts: &[&str]) -> Vec<Vec<u32>> {
    let tokenizer = load_tokenizer(&model_dir()).expect("tokenizer loads");
    texts.iter().map(|t| encode(&tokenizer, t)).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    // Vectors are unit length, so the dot product is the cosine.
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("model file reads");
    hex::encode(sha2::Sha256::digest(&bytes))
}

#[test]
fn embeddings_match_independent_numpy_reference() {
    let reference = reference();
    let dir = model_dir();
    assert_eq!(
        sha256_hex(&dir.join(WEIGHTS_FILE)),
        reference.model_safetensors_sha256,
        "model.safetensors differs from the one the reference was computed from"
    );
    let tokenizer = load_tokenizer(&dir).expect("tokenizer loads");
    let mut model = load_model();
    let mut inputs = Vec::new();
    for entry in &reference.entries {
        let ids = encode(&tokenizer, &entry.text);
        assert_eq!(ids, entry.ids, "token ids of {:?}", entry.text);
        inputs.push(ids);
    }
    // One padded batch: the reference embedded each text alone, so this also checks masking.
    let vectors = model.embed(&inputs).expect("embeds");
    for (entry, vector) in reference.entries.iter().zip(&vectors) {
        let diff = max_abs_diff(vector, &entry.embedding);
        assert!(diff < 1e-4, "{:?}: max abs diff {diff}", entry.text);
    }
}

#[test]
fn paraphrases_score_higher_than_unrelated_pairs() {
    let texts = [
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Stock markets fell sharply today.",
        "How do I reset my password?",
        "Steps to recover a forgotten account password.",
    ];
    let v = load_model().embed(&encode_all(&texts)).expect("embeds");
    let cats = cosine(&v[0], &v[1]);
    let passwords = cosine(&v[3], &v[4]);
    for unrelated in [
        cosine(&v[0], &v[2]),
        cosine(&v[3], &v[2]),
        cosine(&v[0], &v[3]),
    ] {
        assert!(
            cats > unrelated + 0.3,
            "cats {cats} vs unrelated {unrelated}"
        );
        assert!(
            passwords > unrelated + 0.3,
            "passwords {passwords} vs {unrelated}"
        );
    }
    // The values MODELS.md states, computed outside candle.
    assert!((cats - 0.7689).abs() < 1e-4, "cos(cat, cat) = {cats}");
    assert!((cosine(&v[0], &v[2]) - 0.0462).abs() < 1e-4);
}

#[test]
fn batching_with_padding_does_not_change_embeddings() {
    let inputs = encode_all(&[
        "The cat sits on the mat.",
        "The committee postponed its decision on the new railway line until the engineers \
         had finished surveying the flood plain.",
        "Order 66 shipped 3,141 units on 2024-07-15.",
        "Hi",
    ]);
    let mut model = load_model();
    let alone: Vec<Vec<f32>> = inputs
        .iter()
        .map(|ids| {
            model
                .embed(std::slice::from_ref(ids))
                .expect("embeds")
                .remove(0)
        })
        .collect();
    let batched = model.embed(&inputs).expect("embeds");
    // The same texts in another order and with a duplicate: position in the batch and
    // neighbours must not matter either.
    let reordered: Vec<Vec<u32>> = [3, 1, 0, 2, 0].iter().map(|&i| inputs[i].clone()).collect();
    let shuffled = model.embed(&reordered).expect("embeds");
    for (i, single) in alone.iter().enumerate() {
        let diff = max_abs_diff(single, &batched[i]);
        assert!(diff < 1e-5, "input {i}: batched differs by {diff}");
    }
    for (row, &i) in [3, 1, 0, 2, 0].iter().enumerate() {
        let diff = max_abs_diff(&alone[i], &shuffled[row]);
        assert!(diff < 1e-5, "input {i} at row {row}: differs by {diff}");
    }
}

#[test]
fn vectors_are_unit_length() {
    let reference = reference();
    let texts: Vec<&str> = reference.entries.iter().map(|e| e.text.as_str()).collect();
    let mut model = load_model();
    let vectors = model.embed(&encode_all(&texts)).expect("embeds");
    assert_eq!(vectors.len(), texts.len());
    for (text, v) in texts.iter().zip(&vectors) {
        assert_eq!(v.len(), model.spec().dim);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{text:?}: norm {norm}");
    }
}

#[test]
fn spec_reports_dimension_and_sentence_transformers_token_limit() {
    let model = load_model();
    assert_eq!(model.spec().dim, 384);
    // sentence_bert_config.json's 256, not the 512 position embeddings.
    assert_eq!(model.spec().max_tokens, 256);
}

#[test]
fn too_long_input_is_an_error_not_a_panic() {
    let mut model = load_model();
    let max = model.spec().max_tokens;
    let body = |n: usize| {
        let mut ids = vec![101];
        ids.extend(std::iter::repeat_n(1996, n - 2));
        ids.push(102);
        ids
    };
    let at_limit = model
        .embed(&[body(max)])
        .expect("exactly max_tokens is accepted");
    assert_eq!(at_limit.len(), 1);
    let err = model
        .embed(&[body(5), body(max + 1)])
        .expect_err("one token over the limit");
    assert!(
        matches!(err, BackendError::Input { index: 1, .. }),
        "unexpected error {err}"
    );
}

#[test]
fn empty_input_or_unknown_token_id_is_an_error() {
    let mut model = load_model();
    let err = model
        .embed(&[vec![101, 102], vec![]])
        .expect_err("empty input");
    assert!(matches!(err, BackendError::Input { index: 1, .. }), "{err}");
    let err = model
        .embed(&[vec![101, 30522, 102]])
        .expect_err("id past the vocabulary");
    assert!(matches!(err, BackendError::Input { index: 0, .. }), "{err}");
}

#[test]
fn empty_batch_returns_empty() {
    let mut model = load_model();
    assert!(model.embed(&[]).expect("empty batch is fine").is_empty());
}

#[test]
fn pooling_other_than_mean_is_rejected() {
    let parse = |json: &str| serde_json::from_str::<PoolingConfig>(json).expect("parses");
    let mean = parse(r#"{"word_embedding_dimension":384,"pooling_mode_mean_tokens":true}"#);
    assert!(check_pooling(&mean, 384).is_ok());
    assert!(check_pooling(&mean, 768).is_err());
    let cls = parse(r#"{"word_embedding_dimension":384,"pooling_mode_cls_token":true}"#);
    let err = check_pooling(&cls, 384).expect_err("cls pooling");
    assert!(err.contains("only mean pooling"), "{err}");
    let both = parse(
        r#"{"word_embedding_dimension":384,"pooling_mode_mean_tokens":true,
            "pooling_mode_max_tokens":true}"#,
    );
    assert!(check_pooling(&both, 384).is_err());
}

#[test]
fn pipelines_with_unsupported_modules_are_rejected() {
    let parse = |json: &str| serde_json::from_str::<Vec<ModuleEntry>>(json).expect("parses");
    let ok = parse(
        r#"[{"type":"sentence_transformers.models.Transformer"},
            {"type":"sentence_transformers.models.Pooling"},
            {"type":"sentence_transformers.models.Normalize"}]"#,
    );
    assert!(check_modules(&ok).is_ok());
    let dense = parse(r#"[{"type":"sentence_transformers.models.Dense"}]"#);
    assert!(check_modules(&dense).is_err());
}
