//! Micro-benchmark of the Q8_0 and Q4_0 int8 kernels against candle's `QMatMul` on
//! SmolLM2-135M's projection shapes. Prints one markdown table: GMAC/s and weight GB/s (of
//! the variant's own format: 34 bytes per 32 weights for Q8_0, 18 for Q4_0) per shape and
//! batch; "vs candle" is against candle's Q8_0, the first row of each group.
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
use tiergate::backend::kernels::q4_0::PackedQ4_0;
use tiergate::backend::kernels::q8_0::{PackedQ8_0, DEFAULT_PREFETCH};
use tiergate::backend::kernels::Isa;

#[derive(Parser, Debug)]
#[command(about = "Q8_0 / Q4_0 int8 kernels vs candle QMatMul, SmolLM2-135M shapes")]
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
    /// Weight formats to time, each on candle and on ours; the first is the baseline.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Format::Q8_0, Format::Q4_0])]
    formats: Vec<Format>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

impl Format {
    fn dtype(self) -> GgmlDType {
        match self {
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q4_0 => GgmlDType::Q4_0,
        }
    }
}

/// Our kernel for either format.
enum Ours {
    Q8_0(PackedQ8_0),
    Q4_0(PackedQ4_0),
}

impl Ours {
    fn pack(format: Format, raw: &[u8], n: usize, k: usize) -> candle_core::Result<Self> {
        Ok(match format {
            Format::Q8_0 => Ours::Q8_0(PackedQ8_0::from_ggml_bytes(raw, n, k)?),
            Format::Q4_0 => Ours::Q4_0(PackedQ4_0::from_ggml_bytes(raw, n, k)?),
        })
    }

    fn with_prefetch(self, bytes: usize) -> Self {
        match self {
            Ours::Q8_0(p) => Ours::Q8_0(p.with_prefetch(bytes)),
            Ours::Q4_0(p) => Ours::Q4_0(p.with_prefetch(bytes)),
        }
    }

    fn portable(self) -> candle_core::Result<Self> {
        Ok(match self {
            Ours::Q8_0(p) => Ours::Q8_0(p.with_isa(Isa::Portable)?),
            Ours::Q4_0(p) => Ours::Q4_0(p.with_isa(Isa::Portable)?),
        })
    }

    fn matmul(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        match self {
            Ours::Q8_0(p) => p.matmul(x, rows, out),
            Ours::Q4_0(p) => p.matmul(x, rows, out),
        }
    }
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
    /// Weight bytes one call reads.
    bytes: usize,
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

/// The weights of one shape in one format, in as many copies as the mode asks for.
struct Copies {
    format: Format,
    bytes: usize,
    candle: Vec<QMatMul>,
    /// Per prefetch distance of `Args::prefetch`.
    ours: Vec<Vec<Ours>>,
    portable: Vec<Ours>,
}

fn copies(w: &Tensor, format: Format, args: &Args) -> candle_core::Result<Copies> {
    let device = Device::Cpu;
    let (n, k) = w.dims2()?;
    let raw = QTensor::quantize(w, format.dtype())?.data()?.into_owned();
    let count = match args.weights {
        Weights::Cold => COLD_BYTES.div_ceil(raw.len()),
        Weights::Hot => 1,
    };
    let mut c = Copies {
        format,
        bytes: raw.len(),
        candle: Vec::new(),
        ours: args.prefetch.iter().map(|_| Vec::new()).collect(),
        portable: Vec::new(),
    };
    for _ in 0..count {
        let storage = QStorage::from_data(raw.as_slice().into(), &device, format.dtype())?;
        c.candle
            .push(QMatMul::from_qtensor(QTensor::new(storage, (n, k))?)?);
        for (copies, &distance) in c.ours.iter_mut().zip(&args.prefetch) {
            copies.push(Ours::pack(format, &raw, n, k)?.with_prefetch(distance));
        }
    }
    if args.portable {
        c.portable.push(Ours::pack(format, &raw, n, k)?.portable()?);
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
        let w = Tensor::randn(0f32, 1.0, (n, k), &device)?;
        let formats: Vec<Copies> = args
            .formats
            .iter()
            .map(|&f| copies(&w, f, &args))
            .collect::<candle_core::Result<_>>()?;
        for &rows in &args.batch {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &device)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let ours = |p: &Ours| {
                let mut out = vec![0f32; rows * n];
                p.matmul(&xs, rows, &mut out);
            };
            let candle = |m: &QMatMul| {
                m.forward(&x).expect("candle matmul");
            };
            let mut variants = variants(&formats, &args, candle, ours);
            time_interleaved(&mut variants, &args);
            let base = median(&mut variants[0].times).as_secs_f64();
            // Markdown: the fused shapes' labels (q|k|v) must not split the row.
            let cell = label.replace('|', "\\|");
            for v in variants.iter_mut() {
                let t = median(&mut v.times).as_secs_f64();
                let best = v.times[0].as_secs_f64();
                let gmac = (rows * n * k) as f64 / t / 1e9;
                let gbs = v.bytes as f64 / t / 1e9;
                println!(
                    "| {cell} | {rows} | {} | {:.1} | {:.1} | {gmac:.1} | {gbs:.1} | {:.2}x |",
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

/// Per format: candle, ours at each prefetch distance, and (if asked) our portable kernel.
fn variants<'a>(
    formats: &'a [Copies],
    args: &Args,
    candle: impl Fn(&QMatMul) + Copy + Send + Sync + 'a,
    ours: impl Fn(&Ours) + Copy + Send + Sync + 'a,
) -> Vec<Variant<'a>> {
    let isa = Isa::best();
    let mut variants = Vec::new();
    let mut push = |name: String, run: Run<'a>, bytes: usize| {
        variants.push(Variant {
            name,
            run,
            bytes,
            times: vec![],
        })
    };
    for c in formats {
        let f = c.format.dtype();
        push(
            format!("candle QMatMul {f:?}"),
            cycling(&c.candle, candle),
            c.bytes,
        );
        for (copies, distance) in c.ours.iter().zip(&args.prefetch) {
            let name = format!("ours {f:?} {isa:?}, prefetch {distance}");
            push(name, cycling(copies, ours), c.bytes);
        }
        if args.portable {
            let name = format!("ours {f:?} Portable");
            push(name, cycling(&c.portable, ours), c.bytes);
        }
    }
    variants
}

/// Round after round, each variant in turn, inside candle's thread pool as the server runs.
fn time_interleaved(variants: &mut [Variant], args: &Args) {
    let min = Duration::from_millis(args.round_ms);
    Device::Cpu.with_context(|| {
        for v in variants.iter() {
            (v.run)(); // warm-up: page faults, pool wake-up
        }
        for _ in 0..args.rounds {
            for v in variants.iter_mut() {
                let t = time_round(&v.run, min);
                v.times.push(t);
            }
        }
    });
}
