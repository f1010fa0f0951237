//! Micro-benchmark of the Q8_0 int8 kernel against candle's `QMatMul` on SmolLM2-135M's
//! projection shapes. Prints one markdown table: GMAC/s and weight GB/s per shape and batch.
//!
//! `cargo run --release --example kernel_bench -- --help`. Threads come from candle's pool
//! (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the CPUs), as in the server.
//! Variants are timed interleaved, round after round, and each reports its median round, so
//! that load from other processes hits them alike; compare ratios within one run.
//!
//! `--weights cold` (the default) cycles through copies of each matrix worth 4× a 32 MB L3,
//! so every call streams its weights from memory as a decode step does (143 MB per token
//! for SmolLM2); `--weights hot` reuses one copy, which stays in cache: the kernel's compute
//! speed.

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use clap::{Parser, ValueEnum};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tiergate::backend::kernels::q8_0::{PackedQ8_0, DEFAULT_PREFETCH};
use tiergate::backend::kernels::Isa;

#[derive(Parser, Debug)]
#[command(about = "Q8_0 int8 kernel vs candle QMatMul, SmolLM2-135M shapes")]
struct Args {
    /// Batch sizes (activation rows).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 8])]
    batch: Vec<usize>,
    /// Timed rounds per (shape, batch); the median round is reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Minimum time per round and variant, in milliseconds.
    #[arg(long, default_value_t = 100)]
    round_ms: u64,
    /// Whether weights come from memory (cold) or from cache (hot).
    #[arg(long, value_enum, default_value_t = Weights::Cold)]
    weights: Weights,
    /// Prefetch distances (bytes ahead on the weight stream; 0 = none) to time our kernel at.
    #[arg(long, value_delimiter = ',', default_values_t = [DEFAULT_PREFETCH, 0])]
    prefetch: Vec<usize>,
    /// Only shapes whose label contains this text.
    #[arg(long, default_value = "")]
    only: String,
    /// Also time the plain-Rust kernel (slow; the correctness fallback).
    #[arg(long)]
    portable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Weights {
    Cold,
    Hot,
}

/// Bytes of weight copies per variant in cold mode: 4× this machine's 32 MB L3.
const COLD_BYTES: usize = 128 << 20;

/// `(name, n, k)`: output rows × input width of each projection, plus the fused ones.
const SHAPES: [(&str, usize, usize); 7] = [
    ("q, o 576x576", 576, 576),
    ("k, v 192x576", 192, 576),
    ("gate, up 1536x576", 1536, 576),
    ("down 576x1536", 576, 1536),
    ("lm_head 49152x576", 49152, 576),
    ("q|k|v 960x576", 960, 576),
    ("gate|up 3072x576", 3072, 576),
];

type Run<'a> = Box<dyn Fn() + Send + Sync + 'a>;

/// One contender: a name, a closure computing one batch, and its rounds' times per call.
struct Variant<'a> {
    name: String,
    run: Run<'a>,
    times: Vec<Duration>,
}

/// Time per call: calls `run` until `min` has passed.
fn time_round(run: &(dyn Fn() + Send + Sync), min: Duration) -> Duration {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < min || calls == 0 {
        run();
        calls += 1;
    }
    start.elapsed() / calls
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Calls `f` on the copies in turn, one per call.
fn cycling<'a, T: Sync>(copies: &'a [T], f: impl Fn(&T) + Send + Sync + 'a) -> Run<'a> {
    let next = AtomicUsize::new(0);
    Box::new(move || f(&copies[next.fetch_add(1, Ordering::Relaxed) % copies.len()]))
}

/// The weights of one shape, in as many copies as the mode asks for.
struct Copies {
    bytes: usize,
    candle: Vec<QMatMul>,
    /// Per prefetch distance of `Args::prefetch`.
    ours: Vec<Vec<PackedQ8_0>>,
    portable: Vec<PackedQ8_0>,
}

fn copies(n: usize, k: usize, args: &Args) -> candle_core::Result<Copies> {
    let device = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (n, k), &device)?;
    let raw = QTensor::quantize(&w, GgmlDType::Q8_0)?.data()?.into_owned();
    let count = match args.weights {
        Weights::Cold => COLD_BYTES.div_ceil(raw.len()),
        Weights::Hot => 1,
    };
    let pack = || PackedQ8_0::from_q8_0_bytes(&raw, n, k);
    let mut c = Copies {
        bytes: raw.len(),
        candle: Vec::new(),
        ours: args.prefetch.iter().map(|_| Vec::new()).collect(),
        portable: Vec::new(),
    };
    for _ in 0..count {
        let storage = QStorage::from_data(raw.as_slice().into(), &device, GgmlDType::Q8_0)?;
        c.candle
            .push(QMatMul::from_qtensor(QTensor::new(storage, (n, k))?)?);
        for (copies, &distance) in c.ours.iter_mut().zip(&args.prefetch) {
            copies.push(pack()?.with_prefetch(distance));
        }
    }
    if args.portable {
        c.portable.push(pack()?.with_isa(Isa::Portable)?);
    }
    Ok(c)
}

fn main() -> candle_core::Result<()> {
    let args = Args::parse();
    let device = Device::Cpu;
    println!(
        "isa {:?}, candle threads {}, weights {:?}, rounds {} x >= {} ms\n",
        Isa::best(),
        candle_core::utils::get_num_threads(),
        args.weights,
        args.rounds,
        args.round_ms
    );
    println!("| shape | batch | variant | µs/call | best µs | GMAC/s | weight GB/s | vs candle |");
    println!("|---|---|---|---|---|---|---|---|");
    for (label, n, k) in SHAPES.into_iter().filter(|s| s.0.contains(&args.only)) {
        let c = copies(n, k, &args)?;
        for &rows in &args.batch {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &device)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let ours = |p: &PackedQ8_0| {
                let mut out = vec![0f32; rows * n];
                p.matmul(&xs, rows, &mut out);
            };
            let isa = Isa::best();
            let mut variants = vec![(
                "candle QMatMul".to_string(),
                cycling(&c.candle, |m| {
                    m.forward(&x).expect("candle matmul");
                }),
            )];
            for (copies, distance) in c.ours.iter().zip(&args.prefetch) {
                let name = format!("ours {isa:?}, prefetch {distance}");
                variants.push((name, cycling(copies, ours)));
            }
            if args.portable {
                variants.push(("ours Portable".into(), cycling(&c.portable, ours)));
            }
            let mut variants: Vec<Variant> = variants
                .into_iter()
                .map(|(name, run)| Variant {
                    name,
                    run,
                    times: vec![],
                })
                .collect();
            let min = Duration::from_millis(args.round_ms);
            device.with_context(|| {
                for v in &variants {
                    (v.run)(); // warm-up: page faults, pool wake-up
                }
                for _ in 0..args.rounds {
                    for v in variants.iter_mut() {
                        let t = time_round(&v.run, min);
                        v.times.push(t);
                    }
                }
            });
            let base = median(&mut variants[0].times).as_secs_f64();
            for v in variants.iter_mut() {
                let t = median(&mut v.times).as_secs_f64();
                let best = v.times[0].as_secs_f64();
                let gmac = (rows * n * k) as f64 / t / 1e9;
                let gbs = c.bytes as f64 / t / 1e9;
                println!(
                    "| {label} | {rows} | {} | {:.1} | {:.1} | {gmac:.1} | {gbs:.1} | {:.2}x |",
                    v.name,
                    t * 1e6,
                    best * 1e6,
                    base / t
                );
            }
        }
    }
    Ok(())
}
