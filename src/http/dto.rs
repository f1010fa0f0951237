//! Request bodies of the OpenAI API, the parts of them every generation endpoint shares, and
//! the checks that turn unsupported features into a 400 naming the field.
//!
//! Every field OpenAI's spec marks nullable is an `Option` (or reads `null` as its default),
//! so `null` always means "absent".

use super::extract::{read, RequestBody};
pub use super::messages::{chat_messages, InMessage};
use super::tools::ToolFields;
use crate::backend::chat_template::ChatMessage;
use crate::error::ApiError;
use crate::infer::SamplingParams;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// Most stop sequences one request may give (OpenAI allows 4; we are a little kinder).
const MAX_STOPS: usize = 16;

/// Sampling and length fields shared by chat and completions.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Not in OpenAI's API; vLLM and llama-server accept it.
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    /// Not in OpenAI's API; for benchmarks that need fixed output lengths.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Choices to generate (default 1).
    pub n: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Not in OpenAI's API; vLLM's multiplicative penalty over prompt and output tokens.
    pub repetition_penalty: Option<f32>,
    /// Not in OpenAI's API; vLLM and llama-server accept it.
    pub min_p: Option<f32>,
    /// Token id (as a string key) to a bias in -100..=100.
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
    /// Chat: a boolean; completions: how many alternatives per token (0..=20).
    pub logprobs: Option<LogprobsField>,
    /// Chat: alternatives per token (0..=20), with `logprobs: true`.
    pub top_logprobs: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a boolean (chat) or an integer (completions)")]
pub enum LogprobsField {
    Flag(bool),
    Count(usize),
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl SamplingFields {
    pub fn max_tokens(&self) -> Option<usize> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                format!("`stop` may hold at most {MAX_STOPS} sequences"),
                "stop",
            ));
        }
        Ok(stops)
    }

    pub fn sampling(&self) -> Result<SamplingParams, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "`temperature` must be between 0 and 2",
                "temperature",
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("`top_p` must be in (0, 1]", "top_p"));
        }
        let top_k = match self.top_k {
            None | Some(-1) => 0,
            Some(k) if k >= 0 => k as usize,
            Some(_) => {
                return Err(ApiError::invalid(
                    "`top_k` must be -1, 0 or positive",
                    "top_k",
                ))
            }
        };
        // Without a seed each request draws its own; with one, the same seed gives the same text.
        let seed = self.seed.map(|s| s as u64).unwrap_or_else(rand::random);
        let penalty = |value: Option<f32>, name: &'static str| match value {
            None => Ok(0.0),
            Some(p) if (-2.0..=2.0).contains(&p) => Ok(p),
            Some(_) => Err(ApiError::invalid(
                format!("`{name}` must be between -2 and 2"),
                name,
            )),
        };
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty <= 2.0) {
            return Err(ApiError::invalid(
                "`repetition_penalty` must be in (0, 2]",
                "repetition_penalty",
            ));
        }
        let min_p = self.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::invalid("`min_p` must be in [0, 1]", "min_p"));
        }
        Ok(SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
            seed,
            presence_penalty: penalty(self.presence_penalty, "presence_penalty")?,
            frequency_penalty: penalty(self.frequency_penalty, "frequency_penalty")?,
            repetition_penalty,
            logit_bias: self.logit_bias()?.into(),
        })
    }

    /// `logit_bias` as (token, bias) pairs; whether each token exists is the model's check.
    fn logit_bias(&self) -> Result<Vec<(u32, f32)>, ApiError> {
        let Some(map) = &self.logit_bias else {
            return Ok(Vec::new());
        };
        let mut pairs = Vec::with_capacity(map.len());
        for (key, &bias) in map {
            let Ok(token) = key.parse::<u32>() else {
                return Err(ApiError::invalid(
                    format!("`logit_bias` keys must be token ids; {key:?} is not"),
                    "logit_bias",
                ));
            };
            if !(-100.0..=100.0).contains(&bias) {
                return Err(ApiError::invalid(
                    format!("`logit_bias` values must be between -100 and 100; token {token} has {bias}"),
                    "logit_bias",
                ));
            }
            pairs.push((token, bias));
        }
        pairs.sort_unstable_by_key(|p| p.0);
        Ok(pairs)
    }

    /// Alternatives per sampled token, when log-probabilities are asked for (chat:
    /// `logprobs: true` + `top_logprobs`; completions: `logprobs: <int>`).
    pub fn logprobs(&self, chat: bool) -> Result<Option<usize>, ApiError> {
        let top_max = crate::infer::MAX_TOP_LOGPROBS;
        let asked = match (&self.logprobs, chat) {
            (None | Some(LogprobsField::Flag(false)), _) => None,
            (Some(LogprobsField::Flag(true)), true) => Some(self.top_logprobs.unwrap_or(0)),
            (Some(LogprobsField::Count(k)), false) => Some(*k),
            (Some(_), true) => {
                return Err(ApiError::invalid(
                    "`logprobs` must be a boolean for chat completions; use `top_logprobs` for alternatives",
                    "logprobs",
                ))
            }
            (Some(_), false) => {
                return Err(ApiError::invalid(
                    format!("`logprobs` must be an integer between 0 and {top_max} for completions"),
                    "logprobs",
                ))
            }
        };
        let param = if chat { "top_logprobs" } else { "logprobs" };
        if asked.is_some_and(|k| k > top_max) {
            return Err(ApiError::invalid(
                format!("`{param}` must be between 0 and {top_max}"),
                param,
            ));
        }
        if chat && asked.is_none() && self.top_logprobs.is_some_and(|k| k > 0) {
            return Err(ApiError::invalid(
                "`top_logprobs` needs `logprobs: true`",
                "top_logprobs",
            ));
        }
        if chat && self.top_logprobs.is_some_and(|k| k > top_max) {
            return Err(ApiError::invalid(
                format!("`top_logprobs` must be between 0 and {top_max}"),
                "top_logprobs",
            ));
        }
        Ok(asked)
    }
}

/// Fields of OpenAI's API this server does not implement. Each is accepted at its neutral
/// value and otherwise answered with a 400 that names it, never silently ignored.
#[derive(Debug, Default, Deserialize)]
pub struct UnsupportedFields {
    best_of: Option<u32>,
    echo: Option<bool>,
    suffix: Option<String>,
    functions: Option<Vec<Value>>,
    function_call: Option<Value>,
    audio: Option<Value>,
    prediction: Option<Value>,
}

impl UnsupportedFields {
    pub fn check(&self) -> Result<(), ApiError> {
        let checks: [(&str, bool, &str); 5] = [
            (
                "best_of",
                self.best_of.is_some_and(|n| n != 1),
                "only best_of=1 is served",
            ),
            ("echo", self.echo == Some(true), "the prompt is not echoed"),
            (
                "suffix",
                self.suffix.as_ref().is_some_and(|s| !s.is_empty()),
                "no insertion mode",
            ),
            (
                "functions",
                self.functions.as_ref().is_some_and(|f| !f.is_empty()),
                "the deprecated functions; use tools",
            ),
            (
                "function_call",
                self.function_call.as_ref().is_some_and(|c| c != "none"),
                "the deprecated function calling; use tools",
            ),
        ];
        for (field, used, why) in checks {
            if used {
                return Err(ApiError::unsupported(field, why));
            }
        }
        if self.audio.is_some() || self.prediction.is_some() {
            let field = if self.audio.is_some() {
                "audio"
            } else {
                "prediction"
            };
            return Err(ApiError::unsupported(field, "text only"));
        }
        Ok(())
    }
}

/// Fields of OpenAI's API that change nothing here. They are read so that a wrong type is a
/// 400 like anywhere else, then ignored; only `store: true` asks for something we refuse.
#[derive(Debug, Default, Deserialize)]
#[expect(dead_code, reason = "read to check their types")]
pub struct IgnoredFields {
    /// OpenAI's end-user id for abuse monitoring; tenants are known by their API keys.
    pub user: Option<String>,
    pub metadata: Option<HashMap<String, String>>,
    pub store: Option<bool>,
    /// Any tier is served the same way.
    pub service_tier: Option<String>,
}

impl IgnoredFields {
    pub fn check(&self) -> Result<(), ApiError> {
        if self.store == Some(true) {
            return Err(ApiError::unsupported(
                "store",
                "requests and their output are not kept",
            ));
        }
        Ok(())
    }
}

/// `null` as the type's default, for fields that are not `Option`s.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default, deserialize_with = "null_as_default")]
    pub include_usage: bool,
}

/// The parts marked `skip` are read from the same body by `RequestBody::from_json`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<InMessage>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(skip)]
    pub sampling: SamplingFields,
    #[serde(skip)]
    pub unsupported: UnsupportedFields,
    #[serde(skip)]
    pub ignored: IgnoredFields,
    #[serde(skip)]
    pub output: ToolFields,
}

impl RequestBody for ChatRequest {
    fn from_json(body: &Value) -> Result<Self, ApiError> {
        let core: ChatRequest = read(body)?;
        Ok(ChatRequest {
            sampling: read(body)?,
            unsupported: read(body)?,
            ignored: read(body)?,
            output: read(body)?,
            ..core
        })
    }
}

impl ChatRequest {
    /// The conversation as plain-text messages for the chat template.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        chat_messages(&self.messages)
    }
}

/// The parts marked `skip` are read from the same body by `RequestBody::from_json`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptField,
    /// Show the prompt before the completion (with its log-probabilities when asked).
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(skip)]
    pub sampling: SamplingFields,
    #[serde(skip)]
    pub unsupported: UnsupportedFields,
    #[serde(skip)]
    pub ignored: IgnoredFields,
    /// `response_format` and `structured_outputs` (tools are chat's).
    #[serde(skip)]
    pub output: ToolFields,
}

impl RequestBody for CompletionRequest {
    fn from_json(body: &Value) -> Result<Self, ApiError> {
        let core: CompletionRequest = read(body)?;
        // `echo` is served here (chat refuses it).
        let unsupported = UnsupportedFields {
            echo: None,
            ..read(body)?
        };
        Ok(CompletionRequest {
            sampling: read(body)?,
            unsupported,
            ignored: read(body)?,
            output: read(body)?,
            ..core
        })
    }
}

/// OpenAI allows a string, token ids, or a list of either; a list means one completion per
/// prompt, which we refuse like `n > 1` unless it holds exactly one prompt.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, an array of strings, an array of integers or an array of arrays of integers"
)]
pub enum PromptField {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Not in OpenAI's API (TEI has it): cut inputs at the model's limit instead of failing.
    #[serde(default)]
    pub truncate: bool,
}

impl RequestBody for EmbeddingRequest {}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, an array of strings, an array of integers or an array of arrays of integers"
)]
pub enum EmbeddingInput {
    Text(String),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
    Texts(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub model: String,
    pub prompt: Option<String>,
    pub messages: Option<Vec<InMessage>>,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

impl RequestBody for TokenizeRequest {}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub model: String,
    pub tokens: Vec<u32>,
}

impl RequestBody for DetokenizeRequest {}

/// A response's `usage`. `cached_tokens` counts prompt tokens served from the prefix cache;
/// the reasoning count is always zero but present, as OpenAI's SDKs and dashboards read it.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
}

#[derive(Debug, Serialize, Clone, Copy, Default)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Serialize, Clone, Copy, Default)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails::default(),
            completion_tokens_details: CompletionTokensDetails::default(),
        }
    }

    /// With `cached` of the prompt tokens served from the prefix cache.
    pub fn with_cached(mut self, cached: u64) -> Self {
        self.prompt_tokens_details.cached_tokens = cached as usize;
        self
    }
}
