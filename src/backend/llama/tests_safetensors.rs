//! The safetensors path against candle-transformers' own `llama::Llama`, on a tiny random
//! model written to a temporary directory, both on the test device (f32: CPU bounds hold).

use super::*;
use crate::backend::device::test_device;
use candle_core::Tensor;
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::llama as reference;
use std::path::PathBuf;

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "tiergate-llama-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiny_config(tied: bool) -> String {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "vocab_size": 100,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
    })
    .to_string()
}

/// Builds candle's llama with random weights, saves them with the config, and returns it.
fn write_tiny_model(dir: &Path, json: &str) -> candle_core::Result<reference::Llama> {
    let cfg: reference::LlamaConfig =
        serde_json::from_str(json).map_err(candle_core::Error::wrap)?;
    let cfg = cfg.into_config(false);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &test_device());
    let model = reference::Llama::load(vb, &cfg)?;
    // Norm weights start at 1.0; make them random too so a mix-up between them shows.
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        if name.ends_with("norm.weight") {
            let noise = Tensor::randn(0f32, 0.2, var.shape(), &test_device())?;
            var.set(&(noise + 1.0)?)?;
        }
    }
    varmap.save(dir.join("model.safetensors"))?;
    std::fs::write(dir.join("config.json"), json)?;
    Ok(model)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn check_against_candle_llama(tied: bool) -> candle_core::Result<()> {
    let dir = TempDir::new(if tied { "tied" } else { "untied" });
    let json = tiny_config(tied);
    let want_model = write_tiny_model(&dir.0, &json)?;
    let cfg: reference::LlamaConfig =
        serde_json::from_str(&json).map_err(candle_core::Error::wrap)?;
    let mut cache =
        reference::Cache::new(true, DType::F32, &cfg.into_config(false), &test_device())?;
    let opts = LlamaOptions {
        max_slots: 2,
        max_seq_len: 64,
        cpu_weight_format: None,
    };
    let mut ours = load_safetensors(&dir.0, &test_device(), DType::F32, &opts).expect("load");

    let prompt = [1u32, 5, 17, 42, 99, 3, 8, 64];
    let input = Tensor::new(&prompt, &test_device())?.unsqueeze(0)?;
    let mut want: Vec<f32> = want_model
        .forward(&input, 0, &mut cache)?
        .squeeze(0)?
        .to_vec1()?;
    // Slot 1, so that slot numbering is exercised too.
    let mut got = ours.prefill(1, &prompt).expect("prefill");
    for step in 0..6 {
        let diff = max_diff(&got, &want);
        assert!(
            diff < 1e-4,
            "tied={tied} step {step}: logits differ by {diff}"
        );
        let next = argmax(&want);
        assert_eq!(argmax(&got), next, "tied={tied} step {step}");
        let input = Tensor::new(&[[next]], &test_device())?;
        let logits = want_model.forward(&input, prompt.len() + step, &mut cache)?;
        want = logits.squeeze(0)?.to_vec1()?;
        got = ours.decode(&[(1, next)]).expect("decode").remove(0);
    }
    Ok(())
}

#[test]
fn safetensors_logits_and_greedy_tokens_match_candle_llama() -> candle_core::Result<()> {
    check_against_candle_llama(false)
}

#[test]
fn tied_safetensors_logits_and_greedy_tokens_match_candle_llama() -> candle_core::Result<()> {
    check_against_candle_llama(true)
}

#[test]
fn safetensors_dir_without_weights_is_a_files_error() {
    let dir = TempDir::new("empty");
    std::fs::write(dir.0.join("config.json"), tiny_config(false)).expect("write config");
    let opts = LlamaOptions {
        max_slots: 1,
        max_seq_len: 16,
        cpu_weight_format: None,
    };
    let err = load_safetensors(&dir.0, &test_device(), DType::F32, &opts).err();
    assert!(matches!(err, Some(BackendError::Files(_))), "{err:?}");
}
