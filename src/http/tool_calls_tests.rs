use super::*;

/// Feeds `text` in pieces of `step` bytes (on character boundaries) and joins what came out,
/// merging consecutive pieces of one kind as a client reassembling a stream does.
fn parse(text: &str, may_answer: bool, step: usize) -> Vec<Piece> {
    let mut p = CallParser::new(may_answer);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = step.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        out.extend(p.push(&rest[..cut]));
        rest = &rest[cut..];
    }
    out.extend(p.finish());
    merge(out)
}

fn merge(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    for piece in pieces {
        match (out.last_mut(), piece) {
            (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
            (Some(Piece::Arguments { index: i, text: a }), Piece::Arguments { index, text })
                if *i == index =>
            {
                a.push_str(&text)
            }
            (_, piece) => out.push(piece),
        }
    }
    out
}

fn names_and_args(pieces: &[Piece]) -> Vec<(String, String)> {
    let mut calls: Vec<(String, String)> = Vec::new();
    for p in pieces {
        match p {
            Piece::Call { name, .. } => calls.push((name.clone(), String::new())),
            Piece::Arguments { index, text } => calls[*index].1.push_str(text),
            Piece::Text(t) => panic!("unexpected text {t:?}"),
        }
    }
    calls
}

const TWO_CALLS: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris}\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";

#[test]
fn calls_come_out_whole_whatever_the_chunking() {
    for step in [1, 2, 3, 7, 1000] {
        let pieces = parse(TWO_CALLS, true, step);
        assert_eq!(
            names_and_args(&pieces),
            [
                (
                    "get_weather".to_string(),
                    "{\"city\": \"Paris}\"}".to_string()
                ),
                ("get_time".to_string(), "{}".to_string()),
            ],
            "step {step}"
        );
    }
}

#[test]
fn the_name_comes_before_any_argument() {
    let mut p = CallParser::new(false);
    let first = p.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\"");
    assert!(
        matches!(&first[0], Piece::Call { index: 0, name, id } if name == "f" && id.starts_with("call_"))
    );
    assert_eq!(
        first[1],
        Piece::Arguments {
            index: 0,
            text: "{\"a\"".into()
        }
    );
}

#[test]
fn an_answer_is_text_as_soon_as_it_cannot_be_a_call() {
    let mut p = CallParser::new(true);
    assert_eq!(p.push("<"), []);
    assert_eq!(p.push("b>hi"), [Piece::Text("<b>hi".into())]);
    assert_eq!(p.push(" there"), [Piece::Text(" there".into())]);
    assert_eq!(p.push("<tool_call>"), [Piece::Text("<tool_call>".into())]);
}

#[test]
fn a_truncated_call_shows_what_it_has() {
    let pieces = parse(
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}",
        false,
        4,
    );
    assert_eq!(
        names_and_args(&pieces),
        [("f".to_string(), "{\"a\": 1}".to_string())]
    );
}

#[test]
fn each_call_gets_its_own_id() {
    let pieces = parse(TWO_CALLS, false, 5);
    let ids: Vec<&String> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Call { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}
