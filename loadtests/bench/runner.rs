//! The load loops. Closed loop: `c` workers, each sending its next request when the last
//! one ends. Open loop: requests start at Poisson arrival times whatever the server does.
//! Both stop sending after `requests` requests or `duration_secs`, whichever comes first, and
//! every request ends by its own `timeout_secs`, so a level always finishes by itself.

use super::client::{self, Outcome, Sample, Target};
use super::cpu::Meter;
use super::report::Row;
use super::scenario::{Load, Scenario};
use super::stats;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every request of a run shares; cloned into each worker task.
#[derive(Clone)]
pub struct Ctx {
    pub client: reqwest::Client,
    pub target: Arc<Target>,
    pub scenario: Arc<Scenario>,
    /// Process of the server under test, when it runs on this machine: its CPU time is
    /// reported beside the load generator's.
    pub server_pid: Option<u32>,
}

impl Ctx {
    pub fn new(
        target: Target,
        scenario: Scenario,
        server_pid: Option<u32>,
    ) -> Result<Self, String> {
        let idle_per_host = if target.keep_alive { usize::MAX } else { 0 };
        let client = reqwest::Client::builder()
            // Connecting is quick on a healthy server; a refused port should fail fast.
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(idle_per_host)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Ctx {
            client,
            target: Arc::new(target),
            scenario: Arc::new(scenario),
            server_pid,
        })
    }
}

/// The samples of one level and its wall time (first send to last completion).
pub struct LevelResult {
    pub samples: Vec<Sample>,
    pub wall: Duration,
}

/// Warm-up, then every level of the scenario in order: one row each, tagged with `labels`.
/// Progress goes to stderr so that stdout holds only the table.
pub async fn run_scenario(ctx: &Ctx, labels: &[(String, String)]) -> Vec<Row> {
    let s = &ctx.scenario;
    if s.warmup > 0 {
        eprintln!("{}: {} warm-up request(s)", s.name, s.warmup);
        let failed = warm_up(ctx).await;
        if failed > 0 {
            eprintln!("{}: {failed} warm-up request(s) failed", s.name);
        }
    }
    let mut rows = Vec::new();
    for load in s.loads() {
        eprintln!("{}: {load}, up to {} requests", s.name, s.requests);
        let meter = Meter::start(ctx.server_pid);
        let level = run_level(ctx, load).await;
        let cpu = meter.stop();
        let summary = stats::summarize(&level.samples, level.wall);
        // One example per level is enough to start looking; the table has the counts.
        if let Some(s) = level.samples.iter().find(|s| s.detail.is_some()) {
            let detail = s.detail.as_deref().unwrap_or_default();
            eprintln!(
                "{}: {load}: first failure ({}): {detail}",
                ctx.scenario.name,
                s.outcome.label()
            );
        }
        eprintln!(
            "{}: {load} done: {} requests ({} failed) in {:.1} s, {:.1} output tok/s",
            s.name,
            summary.requests,
            summary.error_count(),
            summary.wall_s,
            summary.output_tok_s
        );
        rows.push(Row::new(ctx, load, labels, summary, cpu));
    }
    rows
}

/// Sends the warm-up requests one by one (indices past the measured ones); returns failures.
async fn warm_up(ctx: &Ctx) -> usize {
    let s = &ctx.scenario;
    let mut failed = 0;
    for i in 0..s.warmup {
        let sample = client::send(&ctx.client, &ctx.target, s, s.requests + i).await;
        if sample.outcome != client::Outcome::Ok {
            failed += 1;
        }
    }
    failed
}

pub async fn run_level(ctx: &Ctx, load: Load) -> LevelResult {
    let start = Instant::now();
    let samples = match load {
        Load::Closed(c) => closed_loop(ctx, c, start).await,
        Load::Open(rate) => open_loop(ctx, rate, start).await,
    };
    LevelResult {
        samples,
        wall: start.elapsed(),
    }
}

async fn closed_loop(ctx: &Ctx, concurrency: usize, start: Instant) -> Vec<Sample> {
    let deadline = start + Duration::from_secs_f64(ctx.scenario.duration_secs);
    // Request indices are handed out from one counter so that exactly `requests` are sent.
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (ctx, next) = (ctx.clone(), next.clone());
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ctx.scenario.requests || Instant::now() >= deadline {
                    break samples;
                }
                let sample = client::send(&ctx.client, &ctx.target, &ctx.scenario, i).await;
                let pause = backoff(&sample, ctx.scenario.backoff_429_ms);
                samples.push(sample);
                if let Some(pause) = pause {
                    let until = (Instant::now() + pause).min(deadline);
                    tokio::time::sleep_until(until.into()).await;
                }
            }
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = workers.join_next().await {
        samples.extend(done.expect("a load worker panicked"));
    }
    samples
}

/// How long a closed-loop worker waits after `sample`: after a 429 and only with a backoff
/// set, the longer of `backoff_ms` and the server's `retry-after`.
pub fn backoff(sample: &Sample, backoff_ms: u64) -> Option<Duration> {
    if backoff_ms == 0 || sample.outcome != Outcome::Status(429) {
        return None;
    }
    let floor = Duration::from_millis(backoff_ms);
    Some(sample.retry_after.map_or(floor, |r| r.max(floor)))
}

async fn open_loop(ctx: &Ctx, rate: f64, start: Instant) -> Vec<Sample> {
    let s = &ctx.scenario;
    let schedule = arrivals(
        s.seed,
        rate,
        s.requests,
        Duration::from_secs_f64(s.duration_secs),
    );
    let mut inflight = tokio::task::JoinSet::new();
    for (i, at) in schedule.into_iter().enumerate() {
        tokio::time::sleep_until((start + at).into()).await;
        let ctx = ctx.clone();
        inflight
            .spawn(async move { client::send(&ctx.client, &ctx.target, &ctx.scenario, i).await });
    }
    let mut samples = Vec::new();
    while let Some(done) = inflight.join_next().await {
        samples.push(done.expect("a request task panicked"));
    }
    samples
}

/// Start offsets of a Poisson process at `rate`/s: exponential gaps (inverse-CDF sampling),
/// at most `max` of them and none past `within`. Seeded, so runs are repeatable.
pub fn arrivals(seed: u64, rate: f64, max: usize, within: Duration) -> Vec<Duration> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0_f64;
    let mut out = Vec::with_capacity(max);
    while out.len() < max {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u: f64 = rng.random();
        t += -(1.0 - u).ln() / rate;
        if t > within.as_secs_f64() {
            break;
        }
        out.push(Duration::from_secs_f64(t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, retry_after: Option<Duration>) -> Sample {
        Sample {
            outcome: Outcome::Status(status),
            ttft: None,
            itl: Vec::new(),
            e2e: Duration::from_millis(1),
            output_tokens: 0,
            tokens_from_usage: false,
            prompt_tokens: None,
            detail: None,
            retry_after,
        }
    }

    #[test]
    fn backoff_waits_only_after_a_429_and_at_least_what_the_server_asks() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(&refused(429, Some(ms(1))), 0), None);
        assert_eq!(backoff(&refused(503, Some(ms(1))), 250), None);
        assert_eq!(backoff(&refused(429, None), 250), Some(ms(250)));
        assert_eq!(backoff(&refused(429, Some(ms(1))), 250), Some(ms(250)));
        assert_eq!(backoff(&refused(429, Some(ms(2000))), 250), Some(ms(2000)));
    }

    #[test]
    fn arrivals_are_increasing_bounded_and_repeatable() {
        let a = arrivals(7, 5.0, 100, Duration::from_secs(1000));
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(a, arrivals(7, 5.0, 100, Duration::from_secs(1000)));
        assert_ne!(a, arrivals(8, 5.0, 100, Duration::from_secs(1000)));
    }

    #[test]
    fn arrivals_stop_at_the_duration() {
        let a = arrivals(1, 10.0, 10_000, Duration::from_secs(2));
        assert!(a.len() < 10_000);
        assert!(a.last().unwrap() <= &Duration::from_secs(2));
    }

    #[test]
    fn arrival_rate_is_close_to_the_requested_rate() {
        // 20,000 exponential gaps of mean 0.25 s: the sample mean is within 3% with
        // overwhelming probability (its standard error is 0.7%).
        let a = arrivals(3, 4.0, 20_000, Duration::from_secs(1_000_000));
        let mean_gap = a.last().unwrap().as_secs_f64() / a.len() as f64;
        assert!((mean_gap - 0.25).abs() < 0.25 * 0.03, "mean gap {mean_gap}");
    }
}
