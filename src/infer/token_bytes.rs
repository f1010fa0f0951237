//! The bytes each token id stands for. Byte-level BPE vocabularies (GPT-2, Llama 3, Qwen,
//! SmolLM) spell every byte as a printable character; a token may hold part of a UTF-8
//! character, which is why OpenAI's logprobs report `bytes` and why a grammar engine must
//! see bytes, not text.

use std::collections::HashMap;
use std::sync::OnceLock;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::Tokenizer;

/// A token's own bytes.
pub fn token_bytes(tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
    let byte_level = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
    match tokenizer.id_to_token(id) {
        Some(piece) if byte_level => {
            let map = unicode_to_byte();
            let mut out = Vec::with_capacity(piece.len());
            for c in piece.chars() {
                match map.get(&c) {
                    Some(&b) => out.push(b),
                    // Added tokens are stored as plain text.
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            out
        }
        _ => tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
            .into_bytes(),
    }
}

/// The inverse of GPT-2's byte-to-character table.
fn unicode_to_byte() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut next = 256u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    next += 1;
                    char::from_u32(next - 1).expect("below the surrogates")
                };
                (c, b)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_table_covers_every_byte_once() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        let mut bytes: Vec<u8> = map.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }
}
