//! A scenario: what to send (model, endpoint, prompts, `max_tokens`, streaming) and at which
//! loads, read from `loadtests/scenarios/*.toml`. A closed loop keeps `concurrency` requests
//! in flight; an open loop sends at `rate` requests/s whatever the server does, which is the
//! only way to see queueing (a closed loop slows down with the server and hides it).

use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// The prompt used when a scenario gives neither `prompts` nor `prompt_words`.
pub const DEFAULT_PROMPT: &str = "Write a short story about a lighthouse keeper.";

/// Words of the synthetic prompts: common English words, so any BPE vocabulary maps each to
/// about one token and `prompt_words` stays a fair proxy for the prompt length in tokens.
const WORDS: &[&str] = &[
    "the", "river", "slowly", "carried", "a", "small", "boat", "past", "old", "houses", "while",
    "children", "watched", "from", "bridge", "and", "birds", "sang", "over", "green", "fields",
    "near", "quiet", "town", "where", "people", "worked", "every", "day", "under", "bright", "sky",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/v1/chat/completions`: the prompt is one user message, the server applies its template.
    #[default]
    Chat,
    /// `/v1/completions`: the prompt is sent as raw text.
    Completions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chat" => Ok(Endpoint::Chat),
            "completions" => Ok(Endpoint::Completions),
            other => Err(format!(
                "endpoint must be chat or completions, not {other:?}"
            )),
        }
    }
}

/// One load level of a scenario: one row of the results table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Closed loop: this many requests in flight, each sent when the previous one ends.
    Closed(usize),
    /// Open loop: Poisson arrivals at this many requests per second.
    Open(f64),
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Load::Closed(c) => write!(f, "c={c}"),
            Load::Open(r) => write!(f, "r={r}/s"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Label of every row this scenario writes.
    pub name: String,
    /// The `model` field of each request.
    pub model: String,
    #[serde(default)]
    pub endpoint: Endpoint,
    #[serde(default = "default_stream")]
    pub stream: bool,
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: f64,
    /// Prompts sent in turn (request i gets prompt i mod len).
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Instead of `prompts`: synthetic prompts of this many words, distinct per request.
    #[serde(default)]
    pub prompt_words: Option<usize>,
    /// Closed-loop levels; exclusive with `rate`.
    #[serde(default)]
    pub concurrency: Vec<usize>,
    /// Open-loop levels in requests/s; exclusive with `concurrency`.
    #[serde(default)]
    pub rate: Vec<f64>,
    /// Requests measured per level.
    pub requests: usize,
    /// A level stops sending after this long even if `requests` were not all sent.
    #[serde(default = "default_duration")]
    pub duration_secs: f64,
    /// Requests sent one at a time before the first level and not measured.
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    /// A request still running after this long counts as a `timeout` error.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Seed of the open loop's arrival times, so two runs send on the same schedule.
    #[serde(default)]
    pub seed: u64,
    /// Closed loop: after a 429, the worker waits this long (or the server's `retry-after`,
    /// if longer) before its next request, as a client that backs off would. 0: no wait, and
    /// a worker whose requests are refused at once sends thousands per second.
    #[serde(default)]
    pub backoff_429_ms: u64,
    /// Request fields added to every body (e.g. `logprobs`, `n`), a TOML table `[extra]`.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_stream() -> bool {
    true
}
fn default_duration() -> f64 {
    600.0
}
fn default_warmup() -> usize {
    2
}
fn default_timeout() -> f64 {
    300.0
}

/// The scenario of a run with no file (the flags then override it): the small chat model,
/// streamed, 128 tokens, 8 requests at concurrency 1.
impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "adhoc".into(),
            model: "smollm2-135m-instruct".into(),
            endpoint: Endpoint::Chat,
            stream: true,
            max_tokens: 128,
            temperature: 0.0,
            prompts: Vec::new(),
            prompt_words: None,
            concurrency: vec![1],
            rate: Vec::new(),
            requests: 8,
            duration_secs: default_duration(),
            warmup: default_warmup(),
            timeout_secs: default_timeout(),
            seed: 0,
            backoff_429_ms: 0,
            extra: Default::default(),
        }
    }
}

impl Scenario {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks what serde cannot: one kind of load, positive numbers, one kind of prompt.
    pub fn validate(&self) -> Result<(), String> {
        match (self.concurrency.is_empty(), self.rate.is_empty()) {
            (true, true) => return Err("give `concurrency` or `rate`".into()),
            (false, false) => return Err("`concurrency` and `rate` exclude each other".into()),
            _ => {}
        }
        if self.concurrency.contains(&0) {
            return Err("every `concurrency` must be at least 1".into());
        }
        if self.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            return Err("every `rate` must be a positive number of requests/s".into());
        }
        if !self.prompts.is_empty() && self.prompt_words.is_some() {
            return Err("`prompts` and `prompt_words` exclude each other".into());
        }
        if self.prompt_words == Some(0) {
            return Err("`prompt_words` must be at least 1".into());
        }
        if self.max_tokens == 0 || self.requests == 0 {
            return Err("`max_tokens` and `requests` must be at least 1".into());
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.duration_secs) || !positive(self.timeout_secs) {
            return Err("`duration_secs` and `timeout_secs` must be positive".into());
        }
        Ok(())
    }

    /// The levels in the order given; one table row each.
    pub fn loads(&self) -> Vec<Load> {
        if self.rate.is_empty() {
            self.concurrency.iter().map(|&c| Load::Closed(c)).collect()
        } else {
            self.rate.iter().map(|&r| Load::Open(r)).collect()
        }
    }

    /// The prompt of request `i`.
    pub fn prompt(&self, i: usize) -> String {
        if let Some(n) = self.prompt_words {
            // A request-specific opening keeps prompts distinct, so no server can answer
            // from a prefix cache shared between requests.
            let words: Vec<&str> = (0..n)
                .map(|j| WORDS[(i * 7 + j * 13) % WORDS.len()])
                .collect();
            return format!("Request {i}. Continue this text: {}", words.join(" "));
        }
        if self.prompts.is_empty() {
            return DEFAULT_PROMPT.into();
        }
        self.prompts[i % self.prompts.len()].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT_128: &str = include_str!("../scenarios/chat-128.toml");

    #[test]
    fn shipped_chat_128_is_closed_loop_1_2_4_8_with_16_requests() {
        let s = Scenario::from_toml(CHAT_128).unwrap();
        assert_eq!(s.name, "chat-128");
        assert_eq!(s.max_tokens, 128);
        assert_eq!(s.requests, 16);
        assert!(s.stream);
        assert_eq!(
            s.loads(),
            vec![
                Load::Closed(1),
                Load::Closed(2),
                Load::Closed(4),
                Load::Closed(8)
            ]
        );
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtests/scenarios");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let is_grid = path.file_name().is_some_and(|n| n == "sweep-grid.toml");
            if path.extension().is_some_and(|e| e == "toml") && !is_grid {
                Scenario::from_file(&path).unwrap();
            }
        }
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let s = Scenario::from_toml(
            "name = \"x\"\nmodel = \"m\"\nmax_tokens = 4\nrequests = 2\nrate = [0.5]\n",
        )
        .unwrap();
        assert_eq!(s.endpoint, Endpoint::Chat);
        assert!(s.stream);
        assert_eq!(s.warmup, 2);
        assert_eq!(s.backoff_429_ms, 0);
        assert_eq!(s.loads(), vec![Load::Open(0.5)]);
        assert_eq!(s.prompt(3), DEFAULT_PROMPT);
    }

    #[test]
    fn rejects_unknown_keys_and_mixed_loads() {
        let base = "name = \"x\"\nmodel = \"m\"\nmax_tokens = 4\nrequests = 2\n";
        assert!(
            Scenario::from_toml(&format!("{base}concurrency = [1]\nconcurency = 2\n")).is_err()
        );
        assert!(Scenario::from_toml(&format!("{base}concurrency = [1]\nrate = [1.0]\n")).is_err());
        assert!(Scenario::from_toml(base).is_err());
        assert!(Scenario::from_toml(&format!("{base}concurrency = [0]\n")).is_err());
        assert!(Scenario::from_toml(&format!("{base}rate = [-1.0]\n")).is_err());
        assert!(
            Scenario::from_toml(&format!("{base}rate = [1.0]\nendpoint = \"embed\"\n")).is_err()
        );
    }

    #[test]
    fn prompts_cycle_and_synthetic_prompts_are_distinct() {
        let mut s = Scenario {
            prompts: vec!["a".into(), "b".into()],
            ..Scenario::default()
        };
        assert_eq!([s.prompt(0), s.prompt(1), s.prompt(2)], ["a", "b", "a"]);
        s.prompts.clear();
        s.prompt_words = Some(50);
        let (p0, p1) = (s.prompt(0), s.prompt(1));
        assert_ne!(p0, p1);
        assert_eq!(p0.split_whitespace().count(), 50 + 5);
    }
}
