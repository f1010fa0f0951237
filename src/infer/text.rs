//! Turning a stream of token ids into a stream of text: incremental detokenization that never
//! emits half a UTF-8 character, and stop sequences that never leak a partial match.

use tokenizers::Tokenizer;

/// Incremental detokenizer. Byte-level BPE tokens can end inside a multi-byte character and
/// tokenizers may merge spaces differently at a boundary, so each step decodes a short window
/// of recent tokens and emits only the new, complete suffix.
pub struct Detokenizer {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    pub fn new() -> Self {
        Detokenizer {
            tokens: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> String {
        self.tokens.push(token);
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset]);
        let full = decode(&self.tokens[self.prefix_offset..]);
        if full.ends_with('\u{FFFD}') || full.len() <= prefix.len() {
            return String::new();
        }
        let delta = match full.get(prefix.len()..) {
            Some(tail) if full.starts_with(&prefix) => tail.to_string(),
            _ => full,
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
        delta
    }
}

impl Default for Detokenizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Stop sequences over streamed text. Text that could still become a stop sequence is held
/// back, so a client never sees the beginning of a stop string that then matches.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What `StopMatcher::push` decided.
#[derive(Debug, PartialEq, Eq)]
pub struct StopStep {
    /// Text safe to show now.
    pub emit: String,
    /// A stop sequence matched; generation must end (the stop text itself is not emitted).
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher {
            stops,
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopStep {
        self.held.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(pos) = first_match {
            let emit = self.held[..pos].to_string();
            self.held.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        let keep = self.longest_partial_suffix();
        let split = self.held.len() - keep;
        let emit = self.held[..split].to_string();
        self.held.drain(..split);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Text still held back; called when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop string.
    fn longest_partial_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if suffix.len() < stop.len() && stop.starts_with(suffix) {
                    best = best.max(suffix.len());
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let step = m.push(p);
            out.push_str(&step.emit);
            if step.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_sequence_split_across_pieces_is_caught_and_not_emitted() {
        assert_eq!(
            run(&["\n\n"], &["Hello", "\n", "\nWorld"]),
            ("Hello".into(), true)
        );
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        assert_eq!(run(&["END"], &["a E", "N", "x"]), ("a ENx".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["c", "b"], &["abc"]), ("a".into(), true));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["x", "yz"]), ("xyz".into(), false));
    }

    #[test]
    fn multibyte_text_is_held_on_char_boundaries() {
        assert_eq!(run(&["é!"], &["café", "?"]), ("café?".into(), false));
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
    }
}
