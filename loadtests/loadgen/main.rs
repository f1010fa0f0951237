//! Load generator for any OpenAI-compatible server (tiergate, llama.cpp's llama-server,
//! LiteLLM…): runs a scenario's load levels, closed loop (fixed concurrency) or open loop
//! (Poisson arrivals), prints one table with a row per level and appends the same rows to a
//! CSV and a JSON-lines file.
//!
//! cargo run --release --example loadgen -- --scenario loadtests/scenarios/chat-128.toml \
//!     --url http://127.0.0.1:8080 --label server=tiergate --label max_batch_size=8

#[path = "../bench/mod.rs"]
mod bench;

use bench::client::Target;
use bench::runner::{self, Ctx};
use bench::scenario::{Endpoint, Scenario};
use clap::Parser;
use std::path::PathBuf;

/// Flags override the scenario file's values; without `--scenario` they describe the whole
/// run (defaults: chat, streamed, 128 tokens, concurrency 1, 8 requests).
#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for OpenAI-compatible servers"
)]
struct Args {
    /// Scenario file (TOML), e.g. loadtests/scenarios/chat-128.toml.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Base URL of the server, without /v1.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token sent with each request: a tenant's key for tiergate (LiteLLM needs one too).
    #[arg(long, env = "LOADGEN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Reuse connections between requests (see loadtests/README.md: off by default because
    /// llama-server closes some; turn it on against a server across a network).
    #[arg(long)]
    keep_alive: bool,
    /// Scenario name written in every row.
    #[arg(long)]
    name: Option<String>,
    /// Model id sent as `model` (default without a scenario: smollm2-135m-instruct).
    #[arg(long)]
    model: Option<String>,
    /// `chat` (/v1/chat/completions) or `completions` (/v1/completions).
    #[arg(long)]
    endpoint: Option<Endpoint>,
    /// Stream the responses (SSE): `true` or `false`.
    #[arg(long)]
    stream: Option<bool>,
    /// Output tokens per request (`ignore_eos` asks servers to produce all of them).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Prompt sent by every request (repeat the flag to send several in turn).
    #[arg(long)]
    prompt: Vec<String>,
    /// Synthetic prompts of this many words instead of --prompt.
    #[arg(long)]
    prompt_words: Option<usize>,
    /// Closed loop: comma-separated concurrencies, one row each (e.g. 1,2,4,8).
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    concurrency: Vec<usize>,
    /// Open loop: comma-separated request rates per second, Poisson arrivals (e.g. 0.5,1,2).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Requests per level.
    #[arg(long)]
    requests: Option<usize>,
    /// A level stops sending new requests after this many seconds.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Unmeasured requests sent one by one before the first level.
    #[arg(long)]
    warmup: Option<usize>,
    /// Per-request timeout in seconds; a request past it counts as a `timeout` error.
    #[arg(long)]
    timeout_secs: Option<f64>,
    /// Seed of the open loop's arrival times.
    #[arg(long)]
    seed: Option<u64>,
    /// Closed loop: after a 429 a worker waits this many ms (or the server's retry-after, if
    /// longer) before its next request; 0 (default) sends the next one at once.
    #[arg(long)]
    backoff_429_ms: Option<u64>,
    /// A JSON object of request fields added to every body, e.g. '{"n": 4}' or
    /// '{"logprobs": true, "top_logprobs": 5}'.
    #[arg(long, value_parser = parse_extra)]
    extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// PID of the server under test when it runs on this machine: its CPU seconds per level
    /// are reported beside the load generator's own (Linux /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// KEY=VALUE written in every row (repeatable), e.g. server=llama-server max_batch_size=8.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// CSV file the rows are appended to.
    #[arg(long, default_value = "loadtests/results/loadgen.csv")]
    csv: PathBuf,
    /// JSON-lines file the rows are appended to.
    #[arg(long, default_value = "loadtests/results/loadgen.jsonl")]
    json: PathBuf,
}

/// Overwrites `dst` with the flag's value when the flag was given.
fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
    if let Some(v) = src {
        *dst = v.clone();
    }
}

fn parse_extra(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    serde_json::from_str(s).map_err(|e| format!("--extra takes a JSON object: {e}"))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("a label is KEY=VALUE, not {s:?}")),
    }
}

impl Args {
    /// The scenario file (or the built-in defaults) with this command line's overrides.
    fn scenario(&self) -> Result<Scenario, String> {
        let mut s = match &self.scenario {
            Some(path) => Scenario::from_file(path)?,
            None => Scenario::default(),
        };
        set(&mut s.name, &self.name);
        set(&mut s.model, &self.model);
        set(&mut s.endpoint, &self.endpoint);
        set(&mut s.stream, &self.stream);
        set(&mut s.max_tokens, &self.max_tokens);
        set(&mut s.requests, &self.requests);
        set(&mut s.duration_secs, &self.duration_secs);
        set(&mut s.warmup, &self.warmup);
        set(&mut s.timeout_secs, &self.timeout_secs);
        set(&mut s.seed, &self.seed);
        set(&mut s.backoff_429_ms, &self.backoff_429_ms);
        if let Some(extra) = &self.extra {
            s.extra.extend(extra.clone());
        }
        if !self.prompt.is_empty() {
            (s.prompts, s.prompt_words) = (self.prompt.clone(), None);
        }
        if self.prompt_words.is_some() {
            (s.prompts, s.prompt_words) = (Vec::new(), self.prompt_words);
        }
        // A load given on the command line replaces the file's, whichever loop it names.
        if !self.concurrency.is_empty() {
            (s.concurrency, s.rate) = (self.concurrency.clone(), Vec::new());
        }
        if !self.rate.is_empty() {
            (s.concurrency, s.rate) = (Vec::new(), self.rate.clone());
        }
        s.validate()?;
        Ok(s)
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let scenario = args.scenario()?;
    let target = Target {
        url: args.url.clone(),
        api_key: args.api_key.clone(),
        keep_alive: args.keep_alive,
    };
    let ctx = Ctx::new(target, scenario, args.server_pid)?;
    let rows = runner::run_scenario(&ctx, &args.labels).await;
    print!("{}", bench::report::table(&rows));
    bench::report::append(&rows, &args.csv, &args.json)?;
    eprintln!(
        "rows appended to {} and {}",
        args.csv.display(),
        args.json.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_scenario_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/loadtests/scenarios/chat-128.toml"
        );
        let args = Args::parse_from([
            "loadgen",
            "--scenario",
            path,
            "--max-tokens",
            "16",
            "--rate",
            "0.5,2",
            "--stream",
            "false",
            "--backoff-429-ms",
            "250",
            "--label",
            "server=x=y",
            "--extra",
            r#"{"n": 4, "logprobs": true}"#,
        ]);
        let s = args.scenario().unwrap();
        assert_eq!(
            (s.name.as_str(), s.max_tokens, s.stream),
            ("chat-128", 16, false)
        );
        assert!(s.concurrency.is_empty());
        assert_eq!(s.rate, [0.5, 2.0]);
        assert_eq!(s.backoff_429_ms, 250);
        assert_eq!(args.labels, [("server".to_string(), "x=y".to_string())]);
        let body = bench::client::request_body(&s, 0);
        assert_eq!((&body["n"], &body["logprobs"]), (&4.into(), &true.into()));
    }

    #[test]
    fn no_scenario_means_the_built_in_defaults() {
        let s = Args::parse_from(["loadgen", "--concurrency", "1,4"])
            .scenario()
            .unwrap();
        assert_eq!(s.name, "adhoc");
        assert_eq!(s.concurrency, [1, 4]);
    }

    #[test]
    fn bad_labels_are_refused() {
        assert!(Args::try_parse_from(["loadgen", "--label", "novalue"]).is_err());
        assert!(Args::try_parse_from(["loadgen", "--label", "=v"]).is_err());
    }
}
