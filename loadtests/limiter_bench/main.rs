//! Admission latency of the tenant limiter, local vs Redis: `clients` tasks each admit and
//! settle `requests` times (one tenant per client, limits that never refuse), timing each
//! admission; then the Redis round trips per request (admit + settle + lease renewals).
//! Needs Redis at `--url`. `cargo run --release --example limiter_bench -- --help`.

use clap::Parser;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiergate::config::{LimiterBackend, LimiterConfig};
use tiergate::tenancy::directory::{Tenant, Tier};
use tiergate::tenancy::{Ask, Limiter, LocalLimiter, MonotonicClock, RedisLimiter, Usage};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    url: String,
    /// Concurrent clients (tasks), each its own tenant.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Admissions per client.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
}

fn tenant(i: usize) -> Tenant {
    Tenant {
        id: format!("bench-{i}"),
        name: "bench".into(),
        tier: "bench".into(),
        class: 0,
        grant: "g".into(),
        terms: Tier {
            requests_per_minute: 100_000_000,
            tokens_per_minute: 100_000_000_000,
            burst_requests: 0,
            burst_tokens: 0,
            max_concurrent: 1_000,
            weight: 1.0,
            subsidy_rate: 0.5,
            monthly_budget_hkd: Some(1e9),
            models: Vec::new(),
            dedicated: false,
            prefix_cache: Default::default(),
        },
    }
}

/// Admission latencies of every request, sorted, and the wall time of the run.
async fn run(lim: Arc<dyn Limiter>, args: &Args) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let (lim, n) = (lim.clone(), args.requests);
            tokio::spawn(async move {
                let t = tenant(c);
                let ask = Ask {
                    tokens: 300,
                    worst_charge: 1_000,
                    month: 202612,
                };
                let mut took = Vec::with_capacity(n);
                for _ in 0..n {
                    let at = Instant::now();
                    let (r, _) = lim
                        .admit(&t, ask)
                        .await
                        .expect("the bench limits never refuse");
                    took.push(at.elapsed());
                    lim.settle(
                        &t,
                        r,
                        Usage {
                            tokens: 200,
                            charge: 500,
                        },
                    );
                }
                took
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client"));
    }
    lim.flush().await;
    all.sort();
    (all, started.elapsed())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let clock = Arc::new(MonotonicClock::default());
    let local: Arc<dyn Limiter> = Arc::new(LocalLimiter::new(clock.clone()));
    let config = LimiterConfig {
        backend: LimiterBackend::Redis,
        url: args.url.clone(),
        key_prefix: format!("tgbench:{}:", std::process::id()),
        ..LimiterConfig::default()
    };
    let redis = Arc::new(RedisLimiter::start(
        &config,
        Duration::from_secs(600),
        clock,
    )?);
    // One warm-up pass loads the scripts and the connection.
    run(
        redis.clone(),
        &Args {
            requests: 10,
            ..Args::parse()
        },
    )
    .await;
    let before = redis.round_trips();
    let homes: [(&str, Arc<dyn Limiter>); 2] = [("local", local), ("redis", redis.clone())];
    println!(
        "{} clients x {} admissions (admit, then settle)\n",
        args.clients, args.requests
    );
    println!("| home | admissions/s | admit p50 µs | admit p99 µs | round trips/request |");
    println!("|---|---:|---:|---:|---:|");
    for (name, lim) in homes {
        let (took, wall) = run(lim, &args).await;
        let total = took.len() as f64;
        let trips = if name == "redis" {
            format!("{:.2}", (redis.round_trips() - before) as f64 / total)
        } else {
            "0".into()
        };
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {trips} |",
            total / wall.as_secs_f64(),
            pct(&took, 0.50),
            pct(&took, 0.99)
        );
    }
    cleanup(&config.url, &config.key_prefix);
    Ok(())
}

/// Deletes the run's keys (they also expire by themselves).
fn cleanup(url: &str, prefix: &str) {
    let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
    }
}
