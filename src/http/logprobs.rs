//! Log-probabilities in OpenAI's two shapes: chat's `logprobs.content` (a list of
//! `{token, logprob, bytes, top_logprobs}`) and legacy completions' parallel lists
//! (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).

use crate::infer::token_bytes::token_bytes;
use crate::infer::TokenLogprob;
use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

/// A token as text and bytes; text shows a partial character as U+FFFD.
fn token_text(tokenizer: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = token_bytes(tokenizer, id);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

fn entry(tokenizer: &Tokenizer, id: u32, logprob: f32) -> Value {
    let (token, bytes) = token_text(tokenizer, id);
    json!({"token": token, "logprob": finite(logprob), "bytes": bytes})
}

/// JSON has no -inf; OpenAI reports the most negative float it can instead.
fn finite(logprob: f32) -> f32 {
    logprob.max(-9999.0)
}

/// Chat's `logprobs` object for these tokens.
pub fn chat(tokenizer: &Tokenizer, tokens: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(tokenizer, t.token, t.logprob);
            e["top_logprobs"] = t
                .top
                .iter()
                .map(|&(id, lp)| entry(tokenizer, id, lp))
                .collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Completions' `logprobs` lists, built token by token; `text_offset` counts characters of
/// the response text before each token.
#[derive(Debug, Default)]
pub struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
    offset: usize,
}

impl CompletionLogprobs {
    /// The prompt's first token, which has no log-probability (nothing predicts it).
    pub fn push_unscored(&mut self, tokenizer: &Tokenizer, id: u32) {
        self.push_text(tokenizer, id);
        self.token_logprobs.push(Value::Null);
        self.top_logprobs.push(Value::Null);
    }

    pub fn push(&mut self, tokenizer: &Tokenizer, t: &TokenLogprob) {
        self.push_text(tokenizer, t.token);
        self.token_logprobs.push(json!(finite(t.logprob)));
        let top: Map<String, Value> = t
            .top
            .iter()
            .map(|&(id, lp)| (token_text(tokenizer, id).0, json!(finite(lp))))
            .collect();
        self.top_logprobs.push(Value::Object(top));
    }

    fn push_text(&mut self, tokenizer: &Tokenizer, id: u32) {
        let text = token_text(tokenizer, id).0;
        self.text_offset.push(self.offset);
        self.offset += text.chars().count();
        self.tokens.push(text);
    }

    /// The lists gathered since the last call (a stream sends each chunk's own).
    pub fn take(&mut self) -> Value {
        json!({
            "tokens": std::mem::take(&mut self.tokens),
            "token_logprobs": std::mem::take(&mut self.token_logprobs),
            "top_logprobs": std::mem::take(&mut self.top_logprobs),
            "text_offset": std::mem::take(&mut self.text_offset),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word_tokenizer(words: &[&str]) -> Tokenizer {
        use tokenizers::models::wordlevel::WordLevel;
        let vocab = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token(words[0].into())
            .build()
            .unwrap();
        Tokenizer::new(model)
    }

    #[test]
    fn offsets_count_characters_of_the_tokens_before() {
        let tok = word_tokenizer(&["ab", "é", "c"]);
        let mut lp = CompletionLogprobs::default();
        lp.push_unscored(&tok, 0);
        lp.push(&tok, &TokenLogprob::of(&[0.0, 1.0, 0.0], 1, 2));
        lp.push(&tok, &TokenLogprob::of(&[0.0, 0.0, 0.0], 2, 0));
        let v = lp.take();
        assert_eq!(v["tokens"], json!(["ab", "é", "c"]));
        assert_eq!(v["text_offset"], json!([0, 2, 3]));
        assert_eq!(v["token_logprobs"][0], Value::Null);
        let top = v["top_logprobs"][1].as_object().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top["é"].as_f64().unwrap() > top["ab"].as_f64().unwrap());
        // Taken: the next chunk starts empty.
        assert_eq!(lp.take()["tokens"], json!([]));
    }
}
