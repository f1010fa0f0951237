//! Every Prometheus metric of the gateway: names, help, labels and buckets, in one place.
//!
//! Names follow vLLM's where a figure is the same (`*_time_to_first_token_seconds`,
//! `*_inter_token_latency_seconds`, `*_e2e_request_latency_seconds`, `*_num_requests_running`,
//! ...) with the `tiergate_` prefix, and their buckets are vLLM's, so existing dashboards map
//! over by renaming. Labels are bounded: model (configured names only), replica index, device,
//! tier (configured names), route template, status class and outcome. Never a tenant id: per
//! tenant figures belong to the ledger.
//!
//! One process-wide registry (`get()`): the engine's replica threads and the HTTP layer record
//! into it without threading a handle through every call; a scrape only reads atomics and
//! takes no lock the engine holds.

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::LazyLock;

/// vLLM's time-to-first-token buckets (1 ms ... 2560 s).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's inter-token latency buckets (10 ms ... 80 s).
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's request latency buckets (0.3 s ... 7680 s), used for end-to-end, queue and prefill.
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// One engine step: 1 ms ... 10 s.
const STEP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Token counts, 1-2-5 steps as vLLM builds them.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub struct Metrics {
    registry: Registry,
    /// route, model, tier, status_class, outcome.
    pub requests: IntCounterVec,
    /// model, tier: measured at the engine step that sampled the token.
    pub ttft: HistogramVec,
    pub itl: HistogramVec,
    pub e2e: HistogramVec,
    pub queue_time: HistogramVec,
    pub prefill_time: HistogramVec,
    pub prompt_len: HistogramVec,
    pub output_len: HistogramVec,
    pub prompt_tokens: IntCounterVec,
    pub generation_tokens: IntCounterVec,
    /// tier, part (list, subsidy, tenant_charge), in HKD.
    pub cost_hkd: CounterVec,
    /// model, replica.
    pub decode_step: HistogramVec,
    pub batch_size: HistogramVec,
    pub cancelled_slots: IntCounterVec,
    /// model, replica: times a replica died after loading and was loaded again.
    pub replica_restarts: IntCounterVec,
    pub running: IntGaugeVec,
    pub kv_slots_used: IntGaugeVec,
    pub kv_slots_total: IntGaugeVec,
    pub busy_seconds: CounterVec,
    /// model, set at scrape time from the queues.
    pub waiting: IntGaugeVec,
    /// model, replica, device, set at scrape time.
    pub replica_ready: IntGaugeVec,
    /// tier: tokens admitted by the fair queue, summed over models (the share each tier got).
    pub admitted_tokens: IntGaugeVec,
    /// model, tier: prompt tokens looked up in the prefix cache, and those found there
    /// (vLLM's `prefix_cache_queries` / `prefix_cache_hits`; hit rate = ratio of rates).
    pub prefix_queries: IntCounterVec,
    pub prefix_hits: IntCounterVec,
    /// model, replica: KV bytes the prefix cache holds, and blocks it evicted.
    pub prefix_bytes: IntGaugeVec,
    pub prefix_evictions: IntCounterVec,
    /// listener (`api`, `metrics`).
    pub connections_open: IntGaugeVec,
    /// listener, reason (`refused`, `header_timeout`, `idle_timeout`).
    pub connections_dropped: IntCounterVec,
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    HistogramVec::new(opts, labels).expect("valid histogram")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

fn float_counter(name: &str, help: &str, labels: &[&str]) -> CounterVec {
    CounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

const MT: &[&str] = &["model", "tier"];
const MR: &[&str] = &["model", "replica"];

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Registry::new(),
            requests: counter(
                "tiergate_requests_total",
                "Requests by route template, model, tier, status class and outcome.",
                &["route", "model", "tier", "status_class", "outcome"],
            ),
            ttft: histogram(
                "tiergate_time_to_first_token_seconds",
                "From arrival in the queue to the first sampled token (engine step).",
                MT,
                TTFT_BUCKETS,
            ),
            itl: histogram(
                "tiergate_inter_token_latency_seconds",
                "Between consecutive sampled tokens of one request (engine steps).",
                MT,
                ITL_BUCKETS,
            ),
            e2e: histogram(
                "tiergate_e2e_request_latency_seconds",
                "From the request's arrival to its end.",
                MT,
                REQUEST_BUCKETS,
            ),
            queue_time: histogram(
                "tiergate_request_queue_time_seconds",
                "Time waiting in the model's queue before a replica admitted it.",
                MT,
                REQUEST_BUCKETS,
            ),
            prefill_time: histogram(
                "tiergate_request_prefill_time_seconds",
                "From admission to the first token: prompt chunks interleaved with decodes.",
                MT,
                REQUEST_BUCKETS,
            ),
            prompt_len: histogram(
                "tiergate_request_prompt_tokens",
                "Prompt length of admitted requests.",
                MT,
                TOKEN_BUCKETS,
            ),
            output_len: histogram(
                "tiergate_request_generation_tokens",
                "Completion length of ended requests.",
                MT,
                TOKEN_BUCKETS,
            ),
            prompt_tokens: counter(
                "tiergate_prompt_tokens_total",
                "Prompt tokens processed.",
                MT,
            ),
            generation_tokens: counter(
                "tiergate_generation_tokens_total",
                "Completion tokens generated.",
                MT,
            ),
            cost_hkd: float_counter(
                "tiergate_cost_hkd_total",
                "Cost of requests in HKD by tier: list price, subsidy and tenant charge.",
                &["tier", "part"],
            ),
            decode_step: histogram(
                "tiergate_decode_step_seconds",
                "Duration of one batched decode step of a replica.",
                MR,
                STEP_BUCKETS,
            ),
            batch_size: histogram(
                "tiergate_batch_size",
                "Sequences decoded together in one step.",
                MR,
                BATCH_BUCKETS,
            ),
            replica_restarts: counter(
                "tiergate_replica_restarts_total",
                "Times a replica died after loading (a panic outside a model call) and was loaded again.",
                MR,
            ),
            cancelled_slots: counter(
                "tiergate_cancelled_slots_total",
                "Sequences dropped from a batch because their client left or timed out.",
                MR,
            ),
            running: gauge(
                "tiergate_num_requests_running",
                "Sequences in a replica's batch.",
                MR,
            ),
            kv_slots_used: gauge("tiergate_kv_slots_used", "KV slots in use.", MR),
            kv_slots_total: gauge("tiergate_kv_slots_total", "KV slots of the replica.", MR),
            busy_seconds: float_counter(
                "tiergate_replica_busy_seconds_total",
                "Seconds a replica spent running the model (utilisation = rate of this).",
                MR,
            ),
            waiting: gauge(
                "tiergate_num_requests_waiting",
                "Requests waiting in the model's queues.",
                &["model"],
            ),
            replica_ready: gauge(
                "tiergate_replica_ready",
                "1 once the replica has loaded its model.",
                &["model", "replica", "device"],
            ),
            admitted_tokens: gauge(
                "tiergate_admitted_tokens",
                "Tokens (prompt + max_tokens) the fair queue admitted per tier since start.",
                &["tier"],
            ),
            prefix_queries: counter(
                "tiergate_prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache (requests whose tier caches).",
                MT,
            ),
            prefix_hits: counter(
                "tiergate_prefix_cache_hits_total",
                "Prompt tokens whose KV came from the prefix cache instead of a prefill.",
                MT,
            ),
            prefix_bytes: gauge(
                "tiergate_prefix_cache_bytes",
                "KV bytes held by the replica's prefix cache.",
                MR,
            ),
            prefix_evictions: counter(
                "tiergate_prefix_cache_evictions_total",
                "Blocks the replica's prefix cache evicted to stay within its budget.",
                MR,
            ),
            connections_open: gauge(
                "tiergate_connections_open",
                "Client connections open now, per listener.",
                &["listener"],
            ),
            connections_dropped: counter(
                "tiergate_connections_dropped_total",
                "Connections the server closed on its own: over connections.max_open \
                 (refused), headers too slow (header_timeout), idle too long (idle_timeout).",
                &["listener", "reason"],
            ),
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let r = &self.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.requests.clone()),
            Box::new(self.ttft.clone()),
            Box::new(self.itl.clone()),
            Box::new(self.e2e.clone()),
            Box::new(self.queue_time.clone()),
            Box::new(self.prefill_time.clone()),
            Box::new(self.prompt_len.clone()),
            Box::new(self.output_len.clone()),
            Box::new(self.prompt_tokens.clone()),
            Box::new(self.generation_tokens.clone()),
            Box::new(self.cost_hkd.clone()),
            Box::new(self.decode_step.clone()),
            Box::new(self.batch_size.clone()),
            Box::new(self.cancelled_slots.clone()),
            Box::new(self.replica_restarts.clone()),
            Box::new(self.running.clone()),
            Box::new(self.kv_slots_used.clone()),
            Box::new(self.kv_slots_total.clone()),
            Box::new(self.busy_seconds.clone()),
            Box::new(self.waiting.clone()),
            Box::new(self.replica_ready.clone()),
            Box::new(self.admitted_tokens.clone()),
            Box::new(self.prefix_queries.clone()),
            Box::new(self.prefix_hits.clone()),
            Box::new(self.prefix_bytes.clone()),
            Box::new(self.prefix_evictions.clone()),
            Box::new(self.connections_open.clone()),
            Box::new(self.connections_dropped.clone()),
        ];
        for c in all {
            r.register(c).expect("metric names are unique");
        }
    }

    /// The exposition text of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// `2xx`, `4xx`, `5xx` for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_help_and_the_tiergate_prefix() {
        let m = get();
        m.requests
            .with_label_values(&["/v1/completions", "m", "t", "2xx", "ok"])
            .inc();
        let text = m.render();
        assert!(text.contains("# HELP tiergate_requests_total"));
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("tiergate_"), "{line}");
        }
    }

    #[test]
    fn status_classes_group_codes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
    }
}
