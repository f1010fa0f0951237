//! Tokenizer and chat facts rebuilt from GGUF metadata.
//!
//! GGUF chat models ship without a `tokenizer.json`; the vocabulary, merges and token types
//! live in the file's metadata. candle's `TokenizerFromGguf` builds a pipeline that adds a
//! prefix space (`Hello` -> `ĠHello`), which breaks parity with llama.cpp and the Hugging Face
//! tokenizer for GPT-2 style ("gpt2" in GGUF terms) models such as SmolLM2. This module builds
//! the pipeline the original `tokenizer.json` describes instead: byte-level BPE, digits split
//! one by one, no prefix space, and control tokens matched as special added tokens before BPE
//! runs (so `<|im_start|>` is one id, not a dozen byte pieces).

use super::{BackendError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// GGUF `token_type` values (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u32 = 3;
const TOKEN_TYPE_USER_DEFINED: u32 = 4;

/// The unknown token the GPT-2 family uses when the metadata names none.
const DEFAULT_UNK: &str = "<|endoftext|>";

/// Qwen2's split before byte-level BPE (its `tokenizer.json`): contractions, letters with one
/// leading non-letter, single digits, punctuation runs, newlines, and whitespace that leaves
/// the last space to the next word.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The normalizer and pre-tokenizer that a GGUF's `tokenizer.ggml.pre` (llama.cpp's name for
/// the original `tokenizer.json` pipeline) stands for.
fn pre_tokenizer(pre: &str) -> Result<(Option<NormalizerWrapper>, PreTokenizerWrapper)> {
    let byte_level =
        |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    match pre {
        // GPT-2's split with digits one by one (SmolLM2); also files that name no pipeline.
        "smollm" | "default" => Ok((
            None,
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ])),
        )),
        "qwen2" => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tok_err(format!("qwen2 split: {e}")))?;
            Ok((
                Some(NormalizerWrapper::NFC(NFC)),
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Split(split),
                    byte_level(false),
                ])),
            ))
        }
        other => Err(tok_err(format!(
            "tokenizer.ggml.pre `{other}` is not supported (served: smollm, qwen2)"
        ))),
    }
}

/// Facts the chat layer needs from a GGUF file besides the tokenizer itself.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufChatInfo {
    /// The model's own Jinja chat template (`tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// Text of the BOS token, which templates may reference as `bos_token`.
    pub bos_token: Option<String>,
    /// Ids that end generation: the metadata's eos, eot and eom ids (deduplicated, in that order).
    pub eos_token_ids: Vec<u32>,
    /// Context length the model was trained for (`<arch>.context_length`).
    pub context_length: usize,
}

/// Builds the byte-level BPE tokenizer described by the GGUF metadata.
pub fn tokenizer_from_gguf(content: &Content) -> Result<Tokenizer> {
    let model = string_value(content, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(tok_err(format!(
            "tokenizer.ggml.model `{model}` is not supported (only byte-level BPE `gpt2`)"
        )));
    }
    let tokens = string_array(content, "tokenizer.ggml.tokens")?;
    let merges = string_array(content, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            // Byte-level symbols never contain a literal space (it is mapped to `Ġ`), so the
            // one space in a merge line separates its two halves.
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(format!("malformed merge `{m}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let token_types = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => u32_array(v, "tokenizer.ggml.token_type")?,
        None => Vec::new(),
    };

    let unk = match optional_u32(content, "tokenizer.ggml.unknown_token_id")? {
        Some(id) => tokens.get(id as usize).cloned(),
        None => tokens.iter().find(|t| *t == DEFAULT_UNK).cloned(),
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges);
    if let Some(unk) = unk {
        bpe = bpe.unk_token(unk);
    }
    let bpe = bpe.build().map_err(|e| tok_err(format!("BPE: {e}")))?;

    let pre = match content.metadata.get("tokenizer.ggml.pre") {
        Some(v) => as_string(v, "tokenizer.ggml.pre")?,
        None => "default",
    };
    let (normalizer, pre) = pre_tokenizer(pre)?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(normalizer)
        .map_err(|e| tok_err(format!("normalizer: {e}")))?;
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    add_typed_tokens(&mut tokenizer, &tokens, &token_types)?;
    Ok(tokenizer)
}

/// Registers control tokens (`<|im_start|>`, ...) as special added tokens, matched whole
/// before BPE and skippable when decoding. User-defined tokens are matched whole too, as
/// llama.cpp does, but stay visible in decoded text.
fn add_typed_tokens(tokenizer: &mut Tokenizer, tokens: &[String], types: &[u32]) -> Result<()> {
    let typed = |wanted: u32| {
        tokens
            .iter()
            .zip(types)
            .filter(move |(_, ty)| **ty == wanted)
            .map(|(t, _)| t.clone())
    };
    let special: Vec<AddedToken> = typed(TOKEN_TYPE_CONTROL)
        .map(|t| AddedToken::from(t, true))
        .collect();
    let user: Vec<AddedToken> = typed(TOKEN_TYPE_USER_DEFINED)
        .map(|t| AddedToken::from(t, false).normalized(false))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| tok_err(format!("special tokens: {e}")))?;
    tokenizer
        .add_tokens(user)
        .map_err(|e| tok_err(format!("user-defined tokens: {e}")))?;
    Ok(())
}

/// Reads the chat template, BOS text, stop ids and context length from the metadata.
pub fn chat_info(content: &Content) -> Result<GgufChatInfo> {
    let arch = string_value(content, "general.architecture")?;
    let context_length = optional_u32(content, &format!("{arch}.context_length"))?
        .ok_or_else(|| files_err(format!("GGUF metadata lacks `{arch}.context_length`")))?;
    let chat_template = match content.metadata.get("tokenizer.chat_template") {
        Some(v) => Some(as_string(v, "tokenizer.chat_template")?.to_string()),
        None => None,
    };
    let bos_token = match optional_u32(content, "tokenizer.ggml.bos_token_id")? {
        Some(id) => {
            let tokens = string_array(content, "tokenizer.ggml.tokens")?;
            tokens.get(id as usize).cloned()
        }
        None => None,
    };
    let mut eos_token_ids = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = optional_u32(content, key)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    Ok(GgufChatInfo {
        chat_template,
        bos_token,
        eos_token_ids,
        context_length: context_length as usize,
    })
}

fn tok_err(msg: String) -> BackendError {
    BackendError::Tokenizer(msg)
}

fn files_err(msg: String) -> BackendError {
    BackendError::Files(msg)
}

fn string_value<'a>(content: &'a Content, key: &str) -> Result<&'a str> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| files_err(format!("GGUF metadata lacks `{key}`")))?;
    as_string(v, key)
}

fn as_string<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.to_string()
        .map(|s| s.as_str())
        .map_err(|_| files_err(format!("GGUF metadata `{key}` is not a string")))
}

fn string_array(content: &Content, key: &str) -> Result<Vec<String>> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| files_err(format!("GGUF metadata lacks `{key}`")))?;
    let items = v
        .to_vec()
        .map_err(|_| files_err(format!("GGUF metadata `{key}` is not an array")))?;
    items
        .iter()
        .map(|i| as_string(i, key).map(str::to_string))
        .collect()
}

fn u32_array(v: &Value, key: &str) -> Result<Vec<u32>> {
    let items = v
        .to_vec()
        .map_err(|_| files_err(format!("GGUF metadata `{key}` is not an array")))?;
    items.iter().map(|i| integer(i, key)).collect()
}

/// Reads an integer key of any integer width; `None` when the key is absent.
pub(crate) fn optional_u32(content: &Content, key: &str) -> Result<Option<u32>> {
    content
        .metadata
        .get(key)
        .map(|v| integer(v, key))
        .transpose()
}

/// GGUF writers disagree on integer widths (u32 vs i32 vs u64), so accept any of them.
fn integer(v: &Value, key: &str) -> Result<u32> {
    let wide: i128 = match v {
        Value::U8(x) => (*x).into(),
        Value::I8(x) => (*x).into(),
        Value::U16(x) => (*x).into(),
        Value::I16(x) => (*x).into(),
        Value::U32(x) => (*x).into(),
        Value::I32(x) => (*x).into(),
        Value::U64(x) => (*x).into(),
        Value::I64(x) => (*x).into(),
        _ => {
            return Err(files_err(format!(
                "GGUF metadata `{key}` is not an integer"
            )))
        }
    };
    u32::try_from(wide)
        .map_err(|_| files_err(format!("GGUF metadata `{key}` = {wide} is out of range")))
}

/// Where `tiergate models fetch` puts the SmolLM2 GGUF that the backend tests run on. Fails
/// (never skips) when it is missing, saying how to get it.
#[cfg(test)]
pub(crate) fn test_model_path() -> std::path::PathBuf {
    test_model_file("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// `file` of the installed model `model`; fails (never skips) when it is missing.
#[cfg(test)]
pub(crate) fn test_model_file(model: &str, file: &str) -> std::path::PathBuf {
    let path = crate::models::default_cache_dir()
        .join("models")
        .join(model)
        .join(file);
    assert!(
        path.exists(),
        "{} is missing: run `tiergate models fetch` to download the test model",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, \
                          trained by Hugging Face<|im_end|>\n";

    fn content() -> Content {
        let mut file = std::fs::File::open(test_model_path()).expect("open model");
        Content::read(&mut file).expect("GGUF header")
    }

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).expect("encode").get_ids().to_vec()
    }

    #[test]
    fn hello_world_encodes_without_prefix_space() {
        let tok = tokenizer_from_gguf(&content()).expect("tokenizer");
        let enc = tok.encode("Hello world", false).expect("encode");
        assert_eq!(enc.get_tokens(), ["Hello", "Ġworld"]);
    }

    #[test]
    fn encode_decode_round_trips() {
        let tok = tokenizer_from_gguf(&content()).expect("tokenizer");
        for text in [
            "Hello world",
            "  leading spaces and trailing  ",
            "digits 1234567890 and 3.14159",
            "naïve café, Grüße, 日本語, emoji 🙂🚀",
            "line one\nline two\r\n\ttabbed\n\n",
            "<|im_start|>user\nHi<|im_end|>\n",
        ] {
            let ids = ids(&tok, text);
            let back = tok.decode(&ids, false).expect("decode");
            assert_eq!(back, text, "ids {ids:?}");
        }
    }

    #[test]
    fn digits_are_split_one_by_one() {
        let tok = tokenizer_from_gguf(&content()).expect("tokenizer");
        let enc = tok.encode("2024", false).expect("encode");
        assert_eq!(enc.get_tokens(), ["2", "0", "2", "4"]);
    }

    #[test]
    fn chatml_markers_are_single_special_ids() {
        let tok = tokenizer_from_gguf(&content()).expect("tokenizer");
        assert_eq!(ids(&tok, "<|im_start|>"), [1]);
        assert_eq!(ids(&tok, "<|im_end|>"), [2]);
        assert_eq!(ids(&tok, "<|im_start|>user"), [1, ids(&tok, "user")[0]]);
        // Special tokens are dropped when decoding with skip_special_tokens.
        let plain = tok.decode(&ids(&tok, "<|im_start|>hi<|im_end|>"), true);
        assert_eq!(plain.expect("decode"), "hi");
    }

    #[test]
    fn chatml_prompt_counts_37_tokens_like_llama_server() {
        let tok = tokenizer_from_gguf(&content()).expect("tokenizer");
        let prompt = format!(
            "{SYSTEM}<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert_eq!(ids(&tok, &prompt).len(), 37);
    }

    #[test]
    fn chat_info_reads_template_stop_ids_and_context() {
        let info = chat_info(&content()).expect("chat info");
        assert_eq!(info.eos_token_ids, [2]);
        assert_eq!(info.bos_token.as_deref(), Some("<|im_start|>"));
        assert_eq!(info.context_length, 8192);
        let template = info.chat_template.expect("template");
        assert!(template.contains("<|im_start|>"), "{template}");
    }
}
