//! The grammar stage against SmolLM2's real vocabulary: whatever the logits say, a masked
//! draw spells a document of the language, and a bad grammar is refused at compile time.

use super::*;
use crate::backend::gguf_tokenizer::{test_model_path, tokenizer_from_gguf};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EOS: u32 = 2; // <|im_end|> in SmolLM2's vocabulary

fn tokenizer() -> Arc<Tokenizer> {
    let mut file = std::fs::File::open(test_model_path()).expect("open model");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("GGUF");
    Arc::new(tokenizer_from_gguf(&content).expect("tokenizer"))
}

fn grammars(limits: GrammarLimits) -> (Grammars, Arc<Tokenizer>) {
    let tok = tokenizer();
    (
        Grammars::new(tok.clone(), &[EOS], limits).expect("trie"),
        tok,
    )
}

/// Random logits (a model with no idea) through the mask, until the grammar ends: the
/// worst case for a grammar engine, as nothing but the mask keeps the output in shape.
fn generate(grammar: &mut Grammar, tok: &Tokenizer, seed: u64, max: usize) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab = tok.get_vocab_size(true);
    let mut ids = Vec::new();
    for _ in 0..max {
        let mut logits: Vec<f32> = (0..vocab).map(|_| rng.random::<f32>() * 4.0).collect();
        grammar.mask(&mut logits).expect("mask");
        let token = crate::infer::sampling::argmax(&logits);
        if token == EOS {
            break;
        }
        ids.push(token);
        if grammar.commit(token).expect("commit") {
            break;
        }
    }
    tok.decode(&ids, false).expect("decode")
}

#[test]
fn random_logits_through_a_schema_mask_give_valid_json() {
    let (g, tok) = grammars(GrammarLimits::default());
    let schema = json!({
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "count": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        },
        "required": ["colour", "count", "tags"],
        "additionalProperties": false,
    });
    for seed in 0..5 {
        let mut grammar = g
            .compile(&Constraint::JsonSchema(schema.clone()))
            .expect("compiles");
        let text = generate(&mut grammar, &tok, seed, 400);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(
            ["red", "green", "blue"].contains(&v["colour"].as_str().unwrap()),
            "{text}"
        );
        assert!(v["count"].is_i64(), "{text}");
        assert!(v["tags"].as_array().unwrap().len() <= 3, "{text}");
        // Our layout: `, ` and `: ` separators, no other whitespace between tokens.
        assert!(text.starts_with("{\"colour\": \""), "{text}");
    }
}

#[test]
fn json_object_gives_an_object() {
    let (g, tok) = grammars(GrammarLimits::default());
    let mut grammar = g.compile(&Constraint::JsonObject).expect("compiles");
    let text = generate(&mut grammar, &tok, 7, 300);
    // Random logits may run out of steps inside a long string: what was generated is
    // still a prefix of an object.
    assert!(text.starts_with('{'), "{text}");
}

#[test]
fn a_regex_holds_the_whole_output() {
    let (g, tok) = grammars(GrammarLimits::default());
    let mut grammar = g
        .compile(&Constraint::Regex(r"[0-9]{3}-[a-z]{2}".into()))
        .expect("compiles");
    let text = generate(&mut grammar, &tok, 1, 50);
    assert_eq!(text.len(), 6, "{text}");
    assert!(text.as_bytes()[3] == b'-', "{text}");
}

#[test]
fn a_lark_grammar_embeds_a_json_schema() {
    let (g, tok) = grammars(GrammarLimits::default());
    // As tools embed their schemas: with our layout, or random logits fill it with spaces.
    let schema = with_layout(
        json!({"type": "object", "properties": {"n": {"type": "integer"}},
        "required": ["n"], "additionalProperties": false}),
    );
    let lark = format!(r#"start: "<call>" %json{schema} "</call>""#);
    let mut grammar = g.compile(&Constraint::Lark(lark)).expect("compiles");
    let text = generate(&mut grammar, &tok, 3, 100);
    let inner = text
        .strip_prefix("<call>")
        .and_then(|t| t.strip_suffix("</call>"))
        .unwrap_or_else(|| panic!("{text}"));
    let v: Value = serde_json::from_str(inner).expect("json inside");
    assert!(v["n"].is_i64());
}

#[test]
fn a_fork_steps_independently() {
    let (g, tok) = grammars(GrammarLimits::default());
    let mut a = g
        .compile(&Constraint::Regex("(yes|no)".into()))
        .expect("compiles");
    let mut b = a.fork();
    let yes = tok.encode("yes", false).unwrap().get_ids()[0];
    assert!(a.commit(yes).expect("yes is allowed"));
    let mut logits = vec![0.0; tok.get_vocab_size(true)];
    b.mask(&mut logits).expect("mask");
    assert!(logits[yes as usize].is_finite(), "the fork has not moved");
}

#[test]
fn an_invalid_schema_is_refused_at_compile_time() {
    let (g, _) = grammars(GrammarLimits::default());
    let err = g
        .compile(&Constraint::JsonSchema(json!({"type": "banana"})))
        .err()
        .expect("refused");
    assert!(err.contains("banana"), "{err}");
}

#[test]
fn a_grammar_over_the_byte_limit_is_refused() {
    let limits = GrammarLimits {
        max_bytes: 100,
        ..GrammarLimits::default()
    };
    let (g, _) = grammars(limits);
    let big = json!({"enum": (0..50).map(|i| format!("value-{i}")).collect::<Vec<_>>()});
    let err = g
        .compile(&Constraint::JsonSchema(big))
        .err()
        .expect("refused");
    assert!(err.contains("at most 100"), "{err}");
}

#[test]
fn a_grammar_over_the_size_limit_is_refused() {
    let limits = GrammarLimits {
        max_size: 1_000,
        ..GrammarLimits::default()
    };
    let (g, _) = grammars(limits);
    let props: serde_json::Map<String, Value> = (0..200)
        .map(|i| (format!("field_{i}"), json!({"type": "string"})))
        .collect();
    let schema = json!({"type": "object", "properties": props});
    assert!(g.compile(&Constraint::JsonSchema(schema)).is_err());
}
