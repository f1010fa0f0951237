//! What 4-bit weights cost in quality: SmolLM2-135M with its projections requantized at
//! load to each format given (as manifest `default_dtype` does), compared on
//!
//! - greedy agreement against the first format (the reference, Q8_0 by default) over a
//!   fixed prompt set: tokens identical before the first divergence, tokens identical by
//!   position overall, and top-1 agreement when fed the reference's tokens (which, unlike
//!   the first two, does not stop meaning anything after one near-tie);
//! - perplexity on `loadtests/data/ppl.txt`, a short English text written for this repo.
//!
//! Not a timed test: `cargo run --release --example quant_quality -- --help`.

use clap::Parser;
use std::path::PathBuf;
use tiergate::backend::gguf_tokenizer::tokenizer_from_gguf;
use tiergate::backend::llama::{load_gguf, LlamaModel, LlamaOptions};
use tiergate::backend::Generator;

#[derive(Parser, Debug)]
#[command(about = "Greedy agreement and perplexity of SmolLM2 per weight format")]
struct Args {
    /// Weight formats, reference first: q8_0, q4_0, f32, native (the file's Q4_1).
    #[arg(long, value_delimiter = ',', default_values_t = ["q8_0".to_string(), "q4_0".to_string()])]
    formats: Vec<String>,
    /// Greedy tokens generated per prompt.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// The GGUF file; default: the fetched SmolLM2 in tiergate's cache.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Text to measure perplexity on.
    #[arg(long, default_value = "loadtests/data/ppl.txt")]
    text: PathBuf,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Eight prompts: chat turns and plain continuations, prose and code.
const PROMPTS: [&str; 8] = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nName three animals that live in the sea.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nExplain what a hash table is.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a short poem about rain.<|im_end|>\n<|im_start|>assistant\n",
    "The three primary colors are",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The best way to learn a new language is",
];

fn format(name: &str) -> Result<Option<candle_core::quantized::GgmlDType>, String> {
    use candle_core::quantized::GgmlDType;
    match name {
        "q8_0" => Ok(Some(GgmlDType::Q8_0)),
        "q4_0" => Ok(Some(GgmlDType::Q4_0)),
        "f32" => Ok(Some(GgmlDType::F32)),
        "native" => Ok(None),
        other => Err(format!("unknown format {other}")),
    }
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

/// Greedy tokens after `prompt`.
fn greedy(model: &mut LlamaModel, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut logits = model.prefill(0, prompt).expect("prefill");
    let mut tokens = Vec::with_capacity(steps);
    for _ in 0..steps {
        tokens.push(argmax(&logits));
        logits = model
            .decode(&[(0, tokens[tokens.len() - 1])])
            .expect("decode")[0]
            .clone();
    }
    model.release(0);
    tokens
}

/// Our argmax at every step when `tokens` are fed after `prompt`.
fn forced_argmax(model: &mut LlamaModel, prompt: &[u32], tokens: &[u32]) -> Vec<u32> {
    let mut picks = vec![argmax(&model.prefill(0, prompt).expect("prefill"))];
    for &next in &tokens[..tokens.len() - 1] {
        picks.push(argmax(&model.decode(&[(0, next)]).expect("decode")[0]));
    }
    model.release(0);
    picks
}

/// exp(mean negative log-likelihood) of every token after the first.
fn perplexity(model: &mut LlamaModel, tokens: &[u32]) -> f64 {
    let mut logits = model.prefill(0, &tokens[..1]).expect("prefill");
    let mut nll = 0f64;
    for (i, &next) in tokens[1..].iter().enumerate() {
        let max = logits.iter().fold(f32::MIN, |m, v| m.max(*v));
        let sum: f64 = logits.iter().map(|v| f64::from(v - max).exp()).sum();
        nll += sum.ln() - f64::from(logits[next as usize] - max);
        if i + 2 < tokens.len() {
            logits = model.decode(&[(0, next)]).expect("decode").remove(0);
        }
    }
    model.release(0);
    (nll / (tokens.len() - 1) as f64).exp()
}

/// Per format: its greedy tokens per prompt, and its model (for the forced runs).
struct Run {
    name: String,
    model: LlamaModel,
    greedy: Vec<Vec<u32>>,
    ppl: f64,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let path = args.model.clone().unwrap_or_else(|| {
        tiergate::models::default_cache_dir()
            .join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let mut file = std::fs::File::open(&path)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    let tok = tokenizer_from_gguf(&content)?;
    let encode = |text: &str| -> Result<Vec<u32>, BoxError> {
        Ok(tok.encode(text, false)?.get_ids().to_vec())
    };
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| encode(p))
        .collect::<Result<_, _>>()?;
    let text = encode(&std::fs::read_to_string(&args.text)?)?;
    let mut runs = Vec::new();
    for name in &args.formats {
        let opts = LlamaOptions {
            max_slots: 1,
            max_seq_len: (text.len() + 1).max(512),
            cpu_weight_format: format(name)?,
        };
        let mut model = load_gguf(&path, &candle_core::Device::Cpu, &opts)?;
        let greedy = prompts
            .iter()
            .map(|p| greedy(&mut model, p, args.tokens))
            .collect();
        let ppl = perplexity(&mut model, &text);
        eprintln!("{name}: perplexity {ppl:.3}");
        runs.push(Run {
            name: name.clone(),
            model,
            greedy,
            ppl,
        });
    }
    report(&args, &prompts, text.len(), &mut runs);
    Ok(())
}

fn report(args: &Args, prompts: &[Vec<u32>], text_tokens: usize, runs: &mut [Run]) {
    let (reference, others) = runs.split_first_mut().expect("one format at least");
    println!(
        "{} prompts x {} greedy tokens, reference {}; perplexity over {text_tokens} tokens of {}\n",
        prompts.len(),
        args.tokens,
        reference.name,
        args.text.display()
    );
    println!(
        "| format | perplexity | identical before first divergence | identical by position \
         | top-1 agreement, fed the reference's tokens |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| {} | {:.3} | (reference) | | |",
        reference.name, reference.ppl
    );
    let total = (prompts.len() * args.tokens) as f64;
    for run in others.iter_mut() {
        let (mut prefix, mut same, mut forced) = (0, 0, 0);
        let mut prefixes = Vec::new();
        for (p, prompt) in prompts.iter().enumerate() {
            let (want, got) = (&reference.greedy[p], &run.greedy[p]);
            let first = want.iter().zip(got).take_while(|(a, b)| a == b).count();
            prefixes.push(first.to_string());
            prefix += first;
            same += want.iter().zip(got).filter(|(a, b)| a == b).count();
            let picks = forced_argmax(&mut run.model, prompt, want);
            forced += picks.iter().zip(want).filter(|(a, b)| a == b).count();
        }
        println!(
            "| {} | {:.3} | {:.1}% ({} per prompt) | {:.1}% | {:.1}% |",
            run.name,
            run.ppl,
            100.0 * prefix as f64 / total,
            prefixes.join(", "),
            100.0 * same as f64 / total,
            100.0 * forced as f64 / total
        );
    }
}
