//! Constrained decoding: a request may hold its output to a JSON schema, any JSON object, a
//! regex or a Lark grammar (which may embed JSON schemas, as tool calls do). llguidance
//! compiles it against the model's vocabulary and, before every step, gives the set of tokens
//! that keep the output inside the language; the sampler sets every other logit to -inf
//! (stage 4 of `sampling`). A grammar that is complete allows only end-of-sequence, so the
//! sequence stops with `finish_reason: "stop"`.
//!
//! The vocabulary's byte trie is built once per model at load. A request compiles its grammar
//! once, before it is queued, within `GrammarLimits` (its size, and the lexer work llguidance
//! may spend building it and each mask); each choice steps its own copy.

use super::token_bytes::token_bytes;
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A JSON document valid against this schema.
    JsonSchema(Value),
    /// Any JSON object.
    JsonObject,
    /// Text matching this regex, whole.
    Regex(String),
    /// llguidance's Lark dialect; `%json { schema }` embeds a JSON schema.
    Lark(String),
}

/// How large a grammar a request may bring, and how much work compiling it may take.
#[derive(Debug, Clone, Copy)]
pub struct GrammarLimits {
    /// Longest schema or grammar text, in bytes.
    pub max_bytes: usize,
    /// Largest compiled grammar, in llguidance's symbols (500,000 is a few MB of schema).
    pub max_size: usize,
    /// Lexer work allowed to build a grammar (llguidance's "fuel"; ~50,000 per ms).
    pub compile_fuel: u64,
}

impl Default for GrammarLimits {
    fn default() -> Self {
        GrammarLimits {
            max_bytes: 64 * 1024,
            max_size: 200_000,
            compile_fuel: 1_000_000,
        }
    }
}

/// The JSON layout every schema is generated in, unless the schema says otherwise
/// (`x-guidance`): compact but readable, and no free whitespace, which small models would
/// otherwise fill until `max_tokens`.
fn json_layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// A schema with our JSON layout (kept if the schema sets its own).
pub fn with_layout(mut schema: Value) -> Value {
    if let Some(map) = schema.as_object_mut() {
        map.entry("x-guidance").or_insert_with(json_layout);
    }
    schema
}

/// One model's grammar compiler: its vocabulary as llguidance sees it.
pub struct Grammars {
    factory: ParserFactory,
    limits: GrammarLimits,
}

impl Grammars {
    /// Builds the vocabulary's byte trie (special tokens marked, so that no grammar can spell
    /// them from text); `eos_ids` end a finished grammar.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        eos_ids: &[u32],
        limits: GrammarLimits,
    ) -> anyhow::Result<Self> {
        let vocab = tokenizer.get_vocab_size(true) as u32;
        let special: HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let words: Vec<Vec<u8>> = (0..vocab)
            .map(|id| {
                let mut bytes = token_bytes(&tokenizer, id);
                if special.contains(&id) {
                    bytes.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
                }
                bytes
            })
            .collect();
        let eos = *eos_ids
            .first()
            .ok_or_else(|| anyhow::anyhow!("a model without an end-of-sequence token"))?;
        let trie = TokTrie::from(&TokRxInfo::new(vocab, eos), &words).with_eos_tokens(eos_ids);
        let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            max_grammar_size: limits.max_size,
            initial_lexer_fuel: limits.compile_fuel,
            // Errors name the grammar's problem, never the tokens so far.
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Grammars { factory, limits })
    }

    /// Compiles a request's constraint. An error is the client's: a schema or grammar that is
    /// invalid, uses what llguidance does not implement, or is over the limits.
    pub fn compile(&self, constraint: &Constraint) -> Result<Grammar, String> {
        let grammar = match constraint {
            Constraint::JsonSchema(schema) => {
                self.check_size(&schema.to_string())?;
                TopLevelGrammar::from_json_schema(with_layout(schema.clone()))
            }
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(with_layout(json!({"type": "object"})))
            }
            Constraint::Regex(rx) => {
                self.check_size(rx)?;
                TopLevelGrammar::from_regex(rx)
            }
            Constraint::Lark(lark) => {
                self.check_size(lark)?;
                TopLevelGrammar::from_lark(lark.clone())
            }
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        let mut grammar = Grammar {
            matcher: Matcher::new(Ok(parser)),
            mask: None,
        };
        // A grammar that admits nothing fails here, not after the request was queued.
        grammar.prepare();
        match &grammar.mask {
            Some(Err(e)) => Err(e.clone()),
            _ => Ok(grammar),
        }
    }

    fn check_size(&self, text: &str) -> Result<(), String> {
        let max = self.limits.max_bytes;
        if text.len() > max {
            return Err(format!(
                "the grammar is {} bytes; this server compiles at most {max}",
                text.len()
            ));
        }
        Ok(())
    }
}

/// The vocabulary llguidance walks: its byte trie, and our tokenizer for the text a grammar
/// forces.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        let text = String::from_utf8_lossy(s);
        match self.tokenizer.encode(text.as_ref(), false) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// One sequence's position in its grammar.
pub struct Grammar {
    matcher: Matcher,
    /// The allowed tokens of the next step, once computed.
    mask: Option<Result<SimpleVob, String>>,
}

impl Grammar {
    /// An independent copy at the same position (the other choices of an n > 1 request).
    pub fn fork(&self) -> Grammar {
        Grammar {
            matcher: self.matcher.deep_clone(),
            mask: self.mask.clone(),
        }
    }

    /// Computes the next step's allowed tokens: the part that takes time, which the worker
    /// runs while the model computes the step's logits.
    pub fn prepare(&mut self) {
        if self.mask.is_none() {
            let mask = self.matcher.compute_mask_or_eos();
            self.mask = Some(mask.map_err(|e| format!("grammar: {e}")));
        }
    }

    /// Stage 4 of the sampling pipeline: every token the grammar does not allow next gets
    /// -inf (also those past the tokenizer's vocabulary, which the model's head may pad).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        self.prepare();
        let mask = self.mask.take().expect("prepared")?;
        let words = mask.as_slice();
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX && chunk.len() == 32 {
                continue;
            }
            for (b, logit) in chunk.iter_mut().enumerate() {
                if bits & (1 << b) == 0 {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }

    /// Advances past the sampled token. Returns whether the grammar is complete (nothing may
    /// follow but the end of the sequence).
    pub fn commit(&mut self, token: u32) -> Result<bool, String> {
        self.mask = None;
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("grammar: {e}"))?;
        Ok(self.matcher.is_stopped())
    }
}

#[cfg(test)]
#[path = "grammar_tests.rs"]
mod tests;
