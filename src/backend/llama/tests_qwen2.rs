//! Tests on the real Qwen2.5-Coder-0.5B-Instruct GGUF (`tiergate models fetch` installs it):
//! parity with candle-transformers' own `quantized_qwen2` on the same requantized weights,
//! and the same bit-identity guarantees the llama tests pin (batched, chunked).

use super::tests_gguf::{
    argmax, assert_logits_follow, candle_greedy, greedy_alone, max_diff, ours_forced,
    reference_for, Q8_0Copy,
};
use super::*;
use crate::backend::gguf_tokenizer::{test_model_file, tokenizer_from_gguf};
use std::path::PathBuf;

fn model_path() -> PathBuf {
    test_model_file(
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    )
}

fn encode(text: &str) -> Vec<u32> {
    let mut file = std::fs::File::open(model_path()).expect("open model");
    let content = gguf_file::Content::read(&mut file).expect("GGUF header");
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    tok.encode(text, false).expect("encode").get_ids().to_vec()
}

/// The ChatML prompt the model's template renders for a short system message and a question.
fn chat(question: &str) -> Vec<u32> {
    encode(&format!(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ))
}

fn prompts() -> [Vec<u32>; 2] {
    [
        chat("What is the capital of France?"),
        encode("def fibonacci(n):"),
    ]
}

fn load(path: &Path, format: Option<GgmlDType>, slots: usize) -> LlamaModel {
    let opts = LlamaOptions {
        max_slots: slots,
        max_seq_len: 256,
        cpu_weight_format: format,
    };
    load_gguf(path, &Device::Cpu, &opts).expect("load qwen2")
}

/// On the Q8_0 copy, our candle-op forward runs candle's own Q8_0 matmul: the same kernels
/// as `quantized_qwen2`, so greedy tokens must match exactly and logits closely; our default
/// path (the plain forward on the int8 kernel) is fed candle's tokens and must follow within
/// the quantization-noise bound the llama tests state (`tests_gguf`), and agree on the argmax
/// wherever candle's top two are more than 1.0 apart.
#[test]
fn qwen2_matches_candle_quantized_qwen2_on_the_same_q8_0_weights() {
    let q8 = Q8_0Copy::of(&model_path());
    let mut reference = reference_for(q8.path(), &Device::Cpu);
    let opts = LlamaOptions {
        max_slots: 2,
        max_seq_len: 256,
        cpu_weight_format: None,
    };
    let mut candle_ops = load_gguf_with_kernel(q8.path(), &Device::Cpu, &opts, None).expect("load");
    let mut plain = load(q8.path(), None, 2);
    assert!(plain.cpu.is_some() || Isa::best_simd().is_none());
    let mut clear = 0;
    for (slot, prompt) in prompts().iter().enumerate() {
        let (want_tokens, want) = candle_greedy(reference.as_mut(), &Device::Cpu, prompt, 12);
        let (tokens, got) = greedy_alone(&mut candle_ops, slot, prompt, 12);
        let diff = max_diff(&got[0], &want[0]);
        assert!(
            diff < 1e-3,
            "prompt {slot}: candle-op logits differ by {diff}"
        );
        assert_eq!(tokens, want_tokens, "prompt {slot}");
        let forced = ours_forced(&mut plain, slot, prompt, &want_tokens);
        clear += assert_logits_follow(&forced, &want, 2.5, slot);
    }
    assert!(clear >= 12, "only {clear} of 24 steps had a clear winner");
}

/// A prompt prefilled in chunks next to another sequence gives the bits of one prefill
/// alone, and decode rows batched give the bits of each row alone (plain forward, Q8_0).
#[test]
fn qwen2_rows_are_bit_identical_alone_batched_and_chunked() {
    let mut model = load(&model_path(), Some(GgmlDType::Q8_0), 3);
    let [prompt, other] = prompts();
    let whole = model.prefill(0, &prompt).expect("prefill");
    model.prefill(2, &other).expect("other");
    let mut chunked = Vec::new();
    for chunk in [&prompt[..7], &prompt[7..20], &prompt[20..]] {
        chunked = model.prefill(1, chunk).expect("chunk");
        model.decode(&[(2, 13)]).expect("interleaved decode");
    }
    assert_eq!(max_diff(&whole, &chunked), 0.0);
    let next = argmax(&whole);
    let alone = model.decode(&[(0, next)]).expect("alone").remove(0);
    let rows = model.decode(&[(2, 7), (1, next)]).expect("batched");
    assert_eq!(max_diff(&alone, &rows[1]), 0.0);
}

/// The default CPU format (Q8_0, requantized from the file's Q5_0/Q4_K/Q6_K at load) answers
/// the README's question.
#[test]
fn qwen2_q8_0_says_paris_is_the_capital_of_france() {
    let mut model = load(&model_path(), Some(GgmlDType::Q8_0), 1);
    let (tokens, _) = greedy_alone(&mut model, 0, &chat("What is the capital of France?"), 10);
    let mut file = std::fs::File::open(model_path()).expect("open");
    let content = gguf_file::Content::read(&mut file).expect("header");
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    let text = tok.decode(&tokens, true).expect("decode");
    assert!(text.contains("Paris"), "{text:?}");
}

#[test]
fn qwen2_tokenizer_round_trips_and_splits_like_qwen() {
    let mut file = std::fs::File::open(model_path()).expect("open");
    let content = gguf_file::Content::read(&mut file).expect("header");
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    for text in [
        "Hello world",
        "  leading spaces and trailing  ",
        "digits 1234567890 and 3.14159",
        "naïve café, Grüße, 日本語, emoji 🙂🚀",
        "fn main() {\n    println!(\"hi\");\n}\n\n",
        "<|im_start|>user\nHi<|im_end|>\n",
    ] {
        let ids = tok.encode(text, false).expect("encode").get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).expect("decode"), text, "{ids:?}");
    }
    let enc = tok.encode("Hello world 2024", false).expect("encode");
    // Qwen splits digits one by one and keeps the space with the following word.
    assert_eq!(
        enc.get_tokens(),
        ["Hello", "Ġworld", "Ġ", "2", "0", "2", "4"]
    );
    assert_eq!(encode("<|im_start|>"), [151644]);
    assert_eq!(encode("<|im_end|>"), [151645]);
}
