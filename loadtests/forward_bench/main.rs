//! Step times of the real SmolLM2-135M forward: the plain-Rust CPU forward against the
//! candle-op forward, both on the int8 kernel with Q8_0 weights (the server's default).
//! Prints one markdown table: decode steps at each batch size, and one long prefill.
//!
//! `cargo run --release --example forward_bench -- --help`. Threads come from candle's pool
//! (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the CPUs), as in the server. The two
//! forwards are timed interleaved, round after round, and each reports its median round, so
//! that load from other processes hits them alike; compare ratios within one run.

use candle_core::quantized::GgmlDType;
use candle_core::Device;
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tiergate::backend::llama::{load_gguf, LlamaModel, LlamaOptions};
use tiergate::backend::Generator;

#[derive(Parser, Debug)]
#[command(about = "plain-Rust CPU forward vs candle-op forward, SmolLM2-135M Q8_0")]
struct Args {
    /// GGUF file; default: the fetched SmolLM2-135M-Instruct in the model cache.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Decode batch sizes (sequences per step).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 8])]
    batch: Vec<usize>,
    /// Tokens already in each sequence when decode steps are timed.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Decode steps per round.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    /// Prompt length of the timed prefill (0: none). One chunk at the server's 512.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Timed rounds; the median round is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// Arbitrary in-vocabulary token ids (what they say does not change the arithmetic's cost).
fn tokens(n: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + salt * 104_729) % 48_000 + 100) as u32)
        .collect()
}

/// Prefills `batch` slots with `context` tokens (untimed), then times `steps` decode steps.
fn decode_round(model: &mut LlamaModel, batch: usize, args: &Args) -> Duration {
    for slot in 0..batch {
        model.release(slot);
        model
            .prefill(slot, &tokens(args.context, slot))
            .expect("prefill");
    }
    let step: Vec<(usize, u32)> = (0..batch).map(|s| (s, 1000 + s as u32)).collect();
    let start = Instant::now();
    for _ in 0..args.steps {
        model.decode(&step).expect("decode");
    }
    start.elapsed() / args.steps as u32
}

fn prefill_round(model: &mut LlamaModel, len: usize) -> Duration {
    model.release(0);
    let prompt = tokens(len, 99);
    let start = Instant::now();
    model.prefill(0, &prompt).expect("prefill");
    start.elapsed()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Median old and new time of `round`, run interleaved `rounds` times.
fn compare(
    models: &mut [LlamaModel; 2],
    rounds: usize,
    mut round: impl FnMut(&mut LlamaModel) -> Duration,
) -> [Duration; 2] {
    let mut times = [Vec::new(), Vec::new()];
    for m in models.iter_mut() {
        round(m); // warm-up: KV buffers, page faults, caches
    }
    for _ in 0..rounds {
        for (m, t) in models.iter_mut().zip(&mut times) {
            t.push(round(m));
        }
    }
    let [a, b] = times;
    [median(a), median(b)]
}

fn main() {
    let args = Args::parse();
    let path = args.model.clone().unwrap_or_else(|| {
        tiergate::models::default_cache_dir()
            .join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let max_batch = args.batch.iter().copied().max().unwrap_or(1);
    let opts = LlamaOptions {
        max_slots: max_batch.max(1),
        max_seq_len: (args.context + args.steps * (args.rounds + 1)).max(args.prefill) + 1,
        cpu_weight_format: Some(GgmlDType::Q8_0),
    };
    let load = || load_gguf(&path, &Device::Cpu, &opts).expect("load model");
    let mut models = [load().with_candle_forward(), load()];
    println!(
        "threads: {}, context {} tokens, {} steps per round, median of {} rounds\n",
        candle_core::utils::get_num_threads(),
        args.context,
        args.steps,
        args.rounds
    );
    println!("| step | candle-op forward | plain-Rust forward | speed-up |");
    println!("|---|---|---|---|");
    let row = |label: String, [old, new]: [Duration; 2], tokens: usize| {
        let per_s = |d: Duration| tokens as f64 / d.as_secs_f64();
        println!(
            "| {label} | {:.2} ms ({:.0} tok/s) | {:.2} ms ({:.0} tok/s) | {:.2}× |",
            old.as_secs_f64() * 1e3,
            per_s(old),
            new.as_secs_f64() * 1e3,
            per_s(new),
            old.as_secs_f64() / new.as_secs_f64()
        );
    };
    for &batch in &args.batch {
        let t = compare(&mut models, args.rounds, |m| decode_round(m, batch, &args));
        row(format!("decode B={batch}"), t, batch);
    }
    if args.prefill > 0 {
        let t = compare(&mut models, args.rounds, |m| prefill_round(m, args.prefill));
        row(format!("prefill {} tokens", args.prefill), t, args.prefill);
    }
}
