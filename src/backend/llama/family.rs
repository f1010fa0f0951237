//! What sets one decoder family apart from another, written as data.
//!
//! The families we serve share one forward (pre-norm blocks, GQA attention with RoPE, SwiGLU
//! MLP, RMSNorm); they differ in a few switches read here, so adding a family is a row in
//! `FAMILIES` plus a test on a tiny GGUF of that architecture (see `tests_family`). A switch
//! that needs new forward code (qwen3's q/k norms, say) is a new field that both forwards
//! read, not a copied forward.

use crate::backend::{BackendError, Result};

/// One decoder family as GGUF files describe it.
#[derive(Debug, PartialEq)]
pub(crate) struct Family {
    /// `general.architecture` in GGUF, which is also the prefix of its metadata keys
    /// (`qwen2.block_count`, ...).
    pub arch: &'static str,
    /// The q, k and v projections carry biases (`blk.N.attn_{q,k,v}.bias`).
    pub qkv_bias: bool,
    /// RoPE pairing in the GGUF layout. llama.cpp's converter permutes llama's q/k rows so
    /// that adjacent pairs (2i, 2i+1) rotate (`rope_i`); qwen2 files keep the Hugging Face
    /// layout, pairs (i, i + d/2) (NEOX style, `rope`), as llama.cpp's `LLAMA_ROPE_TYPE_NEOX`.
    pub rope_interleaved: bool,
    /// RoPE base when the file names none (`<arch>.rope.freq_base`).
    pub default_rope_base: f32,
}

/// Every family the backend serves. Mistral and Llama 3.x GGUFs use the `llama` row (their
/// differences, sliding windows aside, are rope scaling keys that `config` already reads).
pub(crate) const FAMILIES: &[Family] = &[
    Family {
        arch: "llama",
        qkv_bias: false,
        rope_interleaved: true,
        default_rope_base: 10_000.0,
    },
    Family {
        arch: "qwen2",
        qkv_bias: true,
        rope_interleaved: false,
        default_rope_base: 1_000_000.0,
    },
];

/// The family of a GGUF `general.architecture`, or an error naming the ones we serve.
pub(crate) fn family(arch: &str) -> Result<&'static Family> {
    FAMILIES.iter().find(|f| f.arch == arch).ok_or_else(|| {
        let known: Vec<&str> = FAMILIES.iter().map(|f| f.arch).collect();
        BackendError::Files(format!(
            "GGUF architecture `{arch}` is not supported (served: {})",
            known.join(", ")
        ))
    })
}

impl Family {
    /// The metadata key `<arch>.<key>`.
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_architecture_is_refused_naming_the_served_ones() {
        let err = family("gemma3").unwrap_err().to_string();
        assert!(err.contains("`gemma3`"), "{err}");
        assert!(err.contains("llama, qwen2"), "{err}");
    }
}
