//! Costs of constrained decoding on a model's real vocabulary (Qwen2.5's 151k tokens by
//! default): building the vocabulary trie (once per model, at load), compiling a typical
//! tool list of 5 functions and a nested JSON schema (once per request, before it is queued),
//! and computing one step's token mask (once per constrained row and step, while the forward
//! runs). Prints one markdown table; medians over `--rounds`.
//!
//! `cargo run --release --example grammar_bench -- --help`

use clap::Parser;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiergate::backend::gguf_tokenizer::tokenizer_from_gguf;
use tiergate::infer::grammar::{tool_calls_lark, Answer, Constraint, GrammarLimits, Grammars};

#[derive(Parser, Debug)]
#[command(about = "Grammar trie, compile and mask times on a real vocabulary")]
struct Args {
    /// A GGUF file whose tokenizer to use (default: the installed Qwen2.5-Coder-0.5B).
    #[arg(long)]
    gguf: Option<std::path::PathBuf>,
    /// Timed repetitions of each compile; the median is reported.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

fn five_tools() -> Vec<(String, Value)> {
    let s = |t: &str| json!({"type": t});
    let obj = |props: Value, required: Value| json!({"type": "object", "properties": props, "required": required, "additionalProperties": false});
    vec![
        (
            "get_weather".into(),
            obj(
                json!({"city": s("string"), "unit": {"enum": ["celsius", "fahrenheit"]}}),
                json!(["city", "unit"]),
            ),
        ),
        (
            "search_web".into(),
            obj(
                json!({"query": s("string"), "max_results": s("integer")}),
                json!(["query"]),
            ),
        ),
        (
            "send_email".into(),
            obj(
                json!({"to": {"type": "array", "items": s("string")}, "subject": s("string"), "body": s("string")}),
                json!(["to", "subject", "body"]),
            ),
        ),
        (
            "create_event".into(),
            obj(
                json!({"title": s("string"), "start": {"type": "string", "format": "date-time"}, "attendees": {"type": "array", "items": obj(json!({"name": s("string"), "email": s("string")}), json!(["name"]))}}),
                json!(["title", "start"]),
            ),
        ),
        (
            "get_stock_price".into(),
            obj(
                json!({"ticker": {"type": "string", "pattern": "^[A-Z]{1,5}$"}}),
                json!(["ticker"]),
            ),
        ),
    ]
}

fn person_schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}}, "required": ["city", "zip"]},
        "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "age", "role", "address", "tags"], "additionalProperties": false})
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let gguf = args.gguf.unwrap_or_else(|| {
        tiergate::models::default_cache_dir()
            .join("models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    });
    let mut file = std::fs::File::open(&gguf)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    let tokenizer = Arc::new(tokenizer_from_gguf(&content)?);
    let eos = tokenizer.token_to_id("<|im_end|>").unwrap_or(0);
    let vocab = tokenizer.get_vocab_size(true);

    let started = Instant::now();
    let grammars = Grammars::new(tokenizer.clone(), &[eos], GrammarLimits::default())?;
    let trie = started.elapsed();

    let tools = five_tools();
    let cases: Vec<(&str, Constraint)> = vec![
        (
            "5 tools, tool_choice required",
            Constraint::Lark(tool_calls_lark(&tools, true, None)),
        ),
        (
            "5 tools, tool_choice auto",
            Constraint::Lark(tool_calls_lark(&tools, true, Some(Answer::Text))),
        ),
        (
            "nested JSON schema (5 fields)",
            Constraint::JsonSchema(person_schema()),
        ),
        ("json_object", Constraint::JsonObject),
    ];
    println!(
        "vocabulary: {vocab} tokens ({}); trie built in {} ms",
        gguf.display(),
        ms(trie)
    );
    println!();
    // A compile includes the first step's mask (a request pays both before it is queued).
    println!("| grammar | compile p50 ms | compile max ms | mask p50 µs (20 steps) |");
    println!("|---|---:|---:|---:|");
    for (name, constraint) in cases {
        let mut compiles = Vec::new();
        for _ in 0..args.rounds {
            let t = Instant::now();
            let g = grammars.compile(&constraint).map_err(anyhow::Error::msg)?;
            compiles.push(t.elapsed());
            drop(g);
        }
        // Masks along a greedy walk where the raw logits prefer low token ids: the grammar
        // alone shapes the output.
        let mut g = grammars.compile(&constraint).map_err(anyhow::Error::msg)?;
        let mut masks = Vec::new();
        let mut logits: Vec<f32> = (0..vocab).map(|i| -(i as f32) * 1e-5).collect();
        for _ in 0..20 {
            let mut l = logits.clone();
            let t = Instant::now();
            g.prepare();
            masks.push(t.elapsed());
            g.mask(&mut l).map_err(anyhow::Error::msg)?;
            let token = tiergate::infer::sampling::argmax(&l);
            if token == eos || g.commit(token).map_err(anyhow::Error::msg)? {
                break;
            }
            logits[token as usize] -= 1.0;
        }
        let max = compiles.iter().max().copied().unwrap_or_default();
        println!(
            "| {name} | {} | {} | {:.0} |",
            ms(median(compiles)),
            ms(max),
            median(masks).as_secs_f64() * 1e6
        );
    }
    Ok(())
}
