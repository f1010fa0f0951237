//! The prefix cache on the real SmolLM2-135M-Instruct (Q8_0, plain-Rust CPU forward): a
//! sequence that starts from cached blocks gets the same logits, bit for bit, as one that
//! prefilled everything.

use super::tests_gguf::argmax;
use super::*;
use crate::backend::gguf_tokenizer::{test_model_path, tokenizer_from_gguf};
use crate::backend::kernels::Isa;
use crate::backend::prefix_cache::BLOCK_TOKENS;

const SCOPE: &str = "tenant:a";
/// Enough output that a whole block of it is stored (next-turn reuse reaches past the prompt).
const STEPS: usize = 20;

/// SmolLM2 on the CPU in Q8_0 (the plain forward) with a prefix cache of `budget` bytes.
fn load(budget: usize) -> LlamaModel {
    let opts = LlamaOptions {
        max_slots: 4,
        max_seq_len: 1024,
        cpu_weight_format: Some(GgmlDType::Q8_0),
    };
    let model = load_gguf_with_kernel(&test_model_path(), &Device::Cpu, &opts, Some(Isa::best()))
        .expect("load model");
    assert!(
        model.cpu.is_some(),
        "the plain-Rust forward runs this model"
    );
    model.with_prefix_cache(budget)
}

fn encode(text: &str) -> Vec<u32> {
    let mut file = std::fs::File::open(test_model_path()).expect("open model");
    let content = gguf_file::Content::read(&mut file).expect("GGUF header");
    let tok = tokenizer_from_gguf(&content).expect("tokenizer");
    tok.encode(text, false).expect("encode").get_ids().to_vec()
}

/// A chat prompt with a long shared system message (several blocks) and `question`.
fn prompt(question: &str) -> Vec<u32> {
    let rules =
        "Answer briefly, in plain English, and never invent facts you are unsure of. ".repeat(6);
    encode(&format!(
        "<|im_start|>system\nYou are a careful assistant. {rules}<|im_end|>\n\
         <|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ))
}

/// Greedy decoding in `slot` after prefilling `prompt[from..]` (the slot already holds
/// `from` positions): every step's logits, and the tokens.
fn greedy(
    model: &mut LlamaModel,
    slot: usize,
    prompt: &[u32],
    from: usize,
) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut logits = model.prefill(slot, &prompt[from..]).expect("prefill");
    let (mut all, mut tokens) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        let next = argmax(&logits);
        tokens.push(next);
        all.push(logits);
        logits = model.decode(&[(slot, next)]).expect("decode").remove(0);
    }
    (all, tokens)
}

/// Runs `prompt` in `slot` from scratch and leaves it in the cache; returns its tokens.
fn run_and_keep(model: &mut LlamaModel, slot: usize, prompt: &[u32]) -> Vec<u32> {
    let (_, out) = greedy(model, slot, prompt, 0);
    let tokens: Vec<u32> = prompt.iter().chain(&out).copied().collect();
    model.keep_prefix(slot, SCOPE, &tokens);
    model.release(slot);
    tokens
}

#[test]
fn a_reused_prefix_gives_the_same_logits_bit_for_bit() {
    let mut model = load(256 << 20);
    run_and_keep(&mut model, 0, &prompt("What is the capital of France?"));
    let second = prompt("Name a large ocean.");
    let reused = model.reuse_prefix(1, SCOPE, &second).expect("reuse");
    assert!(
        reused >= 4 * BLOCK_TOKENS,
        "the system prompt is reused ({reused})"
    );
    assert_eq!(reused % BLOCK_TOKENS, 0);
    assert!(reused < second.len());
    let cached = greedy(&mut model, 1, &second, reused);
    let fresh = greedy(&mut model, 2, &second, 0);
    assert_eq!(cached, fresh);
}

#[test]
fn the_next_turn_reuses_the_previous_answer_bit_for_bit() {
    let mut model = load(256 << 20);
    let asked = prompt("Say something about the sea.");
    let first = run_and_keep(&mut model, 0, &asked);
    // The next turn: the whole first exchange, then more text.
    let mut next = first.clone();
    next.extend(encode(
        "<|im_end|>\n<|im_start|>user\nAnd the sky?<|im_end|>\n",
    ));
    let reused = model.reuse_prefix(1, SCOPE, &next).expect("reuse");
    // The answer's KV was computed by decode steps: all but its last token is stored.
    let stored = first.len() - 1;
    assert_eq!(reused, stored / BLOCK_TOKENS * BLOCK_TOKENS);
    assert!(reused > asked.len(), "part of the answer is reused");
    assert_eq!(
        greedy(&mut model, 1, &next, reused),
        greedy(&mut model, 2, &next, 0)
    );
}

#[test]
fn a_reused_sequence_decodes_batched_as_it_does_alone() {
    let mut model = load(256 << 20);
    run_and_keep(&mut model, 0, &prompt("What is two plus two?"));
    let (a, b) = (prompt("Name a color."), prompt("Name a fruit."));
    let alone_a = greedy(&mut model, 0, &a, 0);
    let alone_b = greedy(&mut model, 1, &b, 0);
    model.release(0);
    model.release(1);
    let from_a = model.reuse_prefix(2, SCOPE, &a).expect("reuse a");
    let from_b = model.reuse_prefix(3, SCOPE, &b).expect("reuse b");
    assert!(from_a > 0 && from_b > 0);
    let mut rows = vec![
        model.prefill(2, &a[from_a..]).expect("prefill a"),
        model.prefill(3, &b[from_b..]).expect("prefill b"),
    ];
    let mut batched = (vec![Vec::new(); 2], vec![Vec::new(); 2]);
    for _ in 0..STEPS {
        let next = [argmax(&rows[0]), argmax(&rows[1])];
        for i in 0..2 {
            batched.1[i].push(next[i]);
            batched.0[i].push(std::mem::take(&mut rows[i]));
        }
        rows = model.decode(&[(2, next[0]), (3, next[1])]).expect("decode");
    }
    assert_eq!((batched.0[0].clone(), batched.1[0].clone()), alone_a);
    assert_eq!((batched.0[1].clone(), batched.1[1].clone()), alone_b);
}

#[test]
fn another_scope_reuses_nothing() {
    let mut model = load(256 << 20);
    let p = prompt("Hello?");
    run_and_keep(&mut model, 0, &p);
    assert_eq!(model.reuse_prefix(1, "tenant:b", &p).expect("reuse"), 0);
    assert!(model.reuse_prefix(2, SCOPE, &p).expect("reuse") > 0);
}

#[test]
fn a_sequence_stopped_mid_prefill_leaves_only_whole_computed_blocks() {
    let mut model = load(256 << 20);
    let p = prompt("Why is the sky blue?");
    // One chunk of 20 positions computed, then the client left.
    model.prefill(0, &p[..BLOCK_TOKENS + 4]).expect("prefill");
    model.keep_prefix(0, SCOPE, &p);
    model.release(0);
    assert_eq!(
        model.reuse_prefix(1, SCOPE, &p).expect("reuse"),
        BLOCK_TOKENS
    );
    let (cached, fresh) = (
        greedy(&mut model, 1, &p, BLOCK_TOKENS),
        greedy(&mut model, 2, &p, 0),
    );
    assert_eq!(cached, fresh);
}

#[test]
fn a_budget_below_the_prompt_keeps_what_fits_and_still_serves() {
    // Room for two blocks of this model's KV.
    let block = model_block_bytes();
    let mut model = load(2 * block);
    let p = prompt("What is rain?");
    run_and_keep(&mut model, 0, &p);
    assert_eq!(model.prefix_stats().bytes, 2 * block);
    let q = prompt("What is snow?");
    assert_eq!(
        model.reuse_prefix(1, SCOPE, &q).expect("reuse"),
        2 * BLOCK_TOKENS
    );
    assert_eq!(
        greedy(&mut model, 1, &q, 2 * BLOCK_TOKENS),
        greedy(&mut model, 2, &q, 0)
    );
}

#[test]
fn a_budget_of_zero_caches_nothing() {
    let mut model = load(0);
    let p = prompt("Hi.");
    run_and_keep(&mut model, 0, &p);
    assert_eq!(model.prefix_stats(), PrefixStats::default());
    assert_eq!(model.reuse_prefix(1, SCOPE, &p).expect("reuse"), 0);
}

#[test]
fn the_last_prompt_token_is_always_prefilled() {
    let mut model = load(256 << 20);
    let p = prompt("Count to three.");
    let whole = &p[..p.len() / BLOCK_TOKENS * BLOCK_TOKENS];
    model.prefill(0, whole).expect("prefill");
    model.keep_prefix(0, SCOPE, whole);
    model.release(0);
    // A prompt of whole blocks, all cached: the last block is prefilled again.
    assert_eq!(
        model.reuse_prefix(1, SCOPE, whole).expect("reuse"),
        whole.len() - BLOCK_TOKENS
    );
}

/// Bytes of one cached block of SmolLM2's KV: 30 layers × (keys + values) × 3 KV heads × 64
/// × 16 positions × 4 bytes.
fn model_block_bytes() -> usize {
    30 * 2 * 3 * 64 * BLOCK_TOKENS * 4
}
