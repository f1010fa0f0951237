//! Reading tool calls back out of a choice's text as it streams: the grammar of `tools.rs`
//! fixes their format, so a small state machine splits the text into the answer, each call's
//! name (as soon as it is complete, so a stream shows id and name first) and its arguments
//! in pieces, holding back only what may still turn out to be the call's closing marker.

use super::tools::CALL_OPEN;

const HEAD: &str = "<tool_call>\n{\"name\": \"";
const MID: &str = "\", \"arguments\": ";
const TAIL: &str = "}\n</tool_call>";

/// What the text held, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// Call `index` (0, 1, …) to the function `name`, whose arguments follow.
    Call {
        index: usize,
        id: String,
        name: String,
    },
    Arguments {
        index: usize,
        text: String,
    },
}

#[derive(Debug, PartialEq)]
enum State {
    /// Not yet known whether the output is an answer or calls.
    Undecided,
    Text,
    /// Reading `HEAD` (or, between calls, the newline before it).
    Head,
    Name,
    Mid,
    Arguments,
}

#[derive(Debug)]
pub struct CallParser {
    state: State,
    buf: String,
    calls: usize,
}

impl CallParser {
    /// `may_answer`: the output may be an answer instead of calls (`tool_choice: "auto"`).
    pub fn new(may_answer: bool) -> Self {
        CallParser {
            state: if may_answer {
                State::Undecided
            } else {
                State::Head
            },
            buf: String::new(),
            calls: 0,
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// The end of the output: whatever is held back is shown as it is (a truncated output).
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            _ if rest.is_empty() => Vec::new(),
            State::Arguments => vec![Piece::Arguments {
                index: self.calls - 1,
                text: rest,
            }],
            _ => vec![Piece::Text(rest)],
        }
    }

    /// Consumes what it can of `buf`; false when it needs more text.
    fn step(&mut self, out: &mut Vec<Piece>) -> bool {
        match self.state {
            State::Undecided => {
                if self.buf.starts_with(CALL_OPEN) {
                    self.state = State::Head;
                } else if CALL_OPEN.starts_with(self.buf.as_str()) {
                    return false;
                } else {
                    self.state = State::Text;
                }
                true
            }
            State::Text => {
                if !self.buf.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut self.buf)));
                }
                false
            }
            State::Head => {
                // Between calls the grammar writes one newline.
                let head = self.buf.strip_prefix('\n').unwrap_or(&self.buf);
                if head.starts_with(HEAD) {
                    let skip = self.buf.len() - head.len() + HEAD.len();
                    self.buf.drain(..skip);
                    self.state = State::Name;
                    true
                } else if HEAD.starts_with(head) {
                    false
                } else {
                    // Not the grammar's format: show it as text rather than lose it.
                    self.state = State::Text;
                    true
                }
            }
            State::Name => match self.buf.find('"') {
                Some(end) => {
                    let name: String = self.buf.drain(..end).collect();
                    out.push(Piece::Call {
                        index: self.calls,
                        id: format!("call_{:024x}", rand::random::<u128>() >> 32),
                        name,
                    });
                    self.calls += 1;
                    self.state = State::Mid;
                    true
                }
                None => false,
            },
            State::Mid => {
                if self.buf.starts_with(MID) {
                    self.buf.drain(..MID.len());
                    self.state = State::Arguments;
                    true
                } else {
                    false
                }
            }
            State::Arguments => self.arguments(out),
        }
    }

    fn arguments(&mut self, out: &mut Vec<Piece>) -> bool {
        let index = self.calls - 1;
        if let Some(end) = self.buf.find(TAIL) {
            let text: String = self.buf.drain(..end).collect();
            self.buf.drain(..TAIL.len());
            if !text.is_empty() {
                out.push(Piece::Arguments { index, text });
            }
            self.state = State::Head;
            return true;
        }
        // Hold back a suffix that may be the start of TAIL.
        let keep = (1..TAIL.len().min(self.buf.len() + 1))
            .rev()
            .find(|&k| {
                self.buf.is_char_boundary(self.buf.len() - k)
                    && TAIL.starts_with(&self.buf[self.buf.len() - k..])
            })
            .unwrap_or(0);
        let emit = self.buf.len() - keep;
        if emit > 0 {
            let text: String = self.buf.drain(..emit).collect();
            out.push(Piece::Arguments { index, text });
        }
        false
    }
}

#[cfg(test)]
#[path = "tool_calls_tests.rs"]
mod tests;
