//! Load generator for any OpenAI-compatible server: closed loop at a fixed concurrency,
//! streaming chat completions, one results table (and a JSON line) per run.
//!
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080 \
//!     --model smollm2-135m-instruct --concurrency 1 --requests 8 --max-tokens 128
//!
//! TTFT is measured to the first chunk that carries text; inter-token latency (ITL) is the gap
//! between text chunks divided by the tokens they carry (one per chunk on our server).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Args {
    url: String,
    model: String,
    concurrency: usize,
    requests: usize,
    max_tokens: usize,
    prompt: String,
    warmup: usize,
    json_out: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        model: "smollm2-135m-instruct".into(),
        concurrency: 1,
        requests: 8,
        max_tokens: 128,
        prompt: "Write a short story about a lighthouse keeper.".into(),
        warmup: 1,
        json_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val(),
            "--model" => a.model = val(),
            "--concurrency" => a.concurrency = val().parse().expect("number"),
            "--requests" => a.requests = val().parse().expect("number"),
            "--max-tokens" => a.max_tokens = val().parse().expect("number"),
            "--prompt" => a.prompt = val(),
            "--warmup" => a.warmup = val().parse().expect("number"),
            "--json" => a.json_out = Some(val()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

#[derive(Debug, Default, Clone)]
struct Sample {
    status: u16,
    ttft: Option<Duration>,
    itl: Vec<Duration>,
    e2e: Duration,
    tokens: usize,
}

async fn one_request(client: &reqwest::Client, args: &Args) -> Sample {
    let body = serde_json::json!({
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true,
        "cache_prompt": false,
    });
    let start = Instant::now();
    let mut sample = Sample::default();
    let resp = match client
        .post(format!("{}/v1/chat/completions", args.url))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            sample.e2e = start.elapsed();
            return sample;
        }
    };
    sample.status = resp.status().as_u16();
    let mut resp = resp;
    let mut buf = String::new();
    let mut last = None;
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let now = Instant::now();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    sample.tokens = n as usize;
                }
                let has_text = v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty());
                if has_text {
                    match last {
                        None => sample.ttft = Some(now - start),
                        Some(prev) => sample.itl.push(now - prev),
                    }
                    last = Some(now);
                }
            }
        }
    }
    sample.e2e = start.elapsed();
    sample
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx]
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    for _ in 0..args.warmup {
        one_request(&client, &args).await;
    }
    let samples = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, args, samples, next) =
            (client.clone(), args.clone(), samples.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < args.requests {
                let s = one_request(&client, &args).await;
                samples.lock().expect("lock").push(s);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let wall = start.elapsed().as_secs_f64();
    let samples = samples.lock().expect("lock").clone();
    report(&args, &samples, wall);
}

fn report(args: &Args, samples: &[Sample], wall: f64) {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.status == 200).collect();
    let errors = samples.len() - ok.len();
    let tokens: usize = ok.iter().map(|s| s.tokens).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut ttft: Vec<f64> = ok.iter().filter_map(|s| s.ttft.map(ms)).collect();
    let mut itl: Vec<f64> = ok
        .iter()
        .flat_map(|s| s.itl.iter().copied().map(ms))
        .collect();
    let mut e2e: Vec<f64> = ok.iter().map(|s| ms(s.e2e)).collect();
    let row = serde_json::json!({
        "url": args.url, "model": args.model, "concurrency": args.concurrency,
        "requests": samples.len(), "errors": errors, "output_tokens": tokens,
        "tokens_per_s": tokens as f64 / wall,
        "ttft_p50_ms": pct(&mut ttft, 50.0), "ttft_p95_ms": pct(&mut ttft, 95.0), "ttft_p99_ms": pct(&mut ttft, 99.0),
        "itl_p50_ms": pct(&mut itl, 50.0), "itl_p95_ms": pct(&mut itl, 95.0),
        "e2e_p50_ms": pct(&mut e2e, 50.0), "e2e_p95_ms": pct(&mut e2e, 95.0),
    });
    println!(
        "| conc | reqs | err | out tok/s | TTFT p50/p95/p99 ms | ITL p50/p95 ms | e2e p50/p95 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.1} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} | {:.0} / {:.0} |",
        args.concurrency,
        samples.len(),
        errors,
        row["tokens_per_s"].as_f64().unwrap_or(0.0),
        row["ttft_p50_ms"].as_f64().unwrap_or(0.0),
        row["ttft_p95_ms"].as_f64().unwrap_or(0.0),
        row["ttft_p99_ms"].as_f64().unwrap_or(0.0),
        row["itl_p50_ms"].as_f64().unwrap_or(0.0),
        row["itl_p95_ms"].as_f64().unwrap_or(0.0),
        row["e2e_p50_ms"].as_f64().unwrap_or(0.0),
        row["e2e_p95_ms"].as_f64().unwrap_or(0.0),
    );
    if let Some(path) = &args.json_out {
        let line = format!("{row}\n");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("json out");
        std::io::Write::write_all(&mut f, line.as_bytes()).expect("write");
    }
}
