//! Incremental server-sent-events parser: bytes in as the network delivers them, the `data`
//! of each complete event out. Chunk boundaries fall anywhere (inside a line, inside a
//! `\r\n`, inside a UTF-8 character), so it buffers bytes and decodes only whole lines.

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line not yet terminated.
    pending: Vec<u8>,
    /// `data:` lines of the event being read, joined by `\n` as the SSE spec says.
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event that these bytes completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + offset;
            let next = match self.pending[end] {
                // A `\r` at the end of the buffer may be the first half of a `\r\n`: wait.
                b'\r' if end + 1 == self.pending.len() => break,
                b'\r' if self.pending[end + 1] == b'\n' => end + 2,
                _ => end + 1,
            };
            let line = String::from_utf8_lossy(&self.pending[start..end]).into_owned();
            self.line(&line, &mut events);
            start = next;
        }
        self.pending.drain(..start);
        events
    }

    /// End of the stream: a last event without its blank line still counts.
    pub fn finish(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        if !self.pending.is_empty() {
            let line = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            let line = line.strip_suffix('\r').unwrap_or(&line).to_string();
            self.line(&line, &mut events);
        }
        events.extend(self.data.take());
        events
    }

    fn line(&mut self, line: &str, events: &mut Vec<String>) {
        if line.is_empty() {
            events.extend(self.data.take());
            return;
        }
        // Comments (`: keep-alive`) and other fields (`event:`, `id:`, `retry:`) carry no data.
        let Some(value) = line.strip_prefix("data") else {
            return;
        };
        let value = match value.strip_prefix(':') {
            Some(v) => v.strip_prefix(' ').unwrap_or(v),
            None if value.is_empty() => "",
            None => return, // a field named e.g. `database`
        };
        match &mut self.data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => self.data = Some(value.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in_pieces(input: &[u8], size: usize) -> Vec<String> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for piece in input.chunks(size) {
            out.extend(p.push(piece));
        }
        out.extend(p.finish());
        out
    }

    #[test]
    fn events_split_at_every_byte_boundary_parse_the_same() {
        let input = "data: {\"a\":\"é😀\"}\n\n: keep-alive\n\nevent: x\ndata: [DONE]\n\n";
        let whole = feed_in_pieces(input.as_bytes(), input.len());
        assert_eq!(whole, vec!["{\"a\":\"é😀\"}".to_string(), "[DONE]".into()]);
        for size in 1..input.len() {
            assert_eq!(
                feed_in_pieces(input.as_bytes(), size),
                whole,
                "pieces of {size}"
            );
        }
    }

    #[test]
    fn crlf_and_cr_line_endings_split_between_chunks() {
        let input = b"data: one\r\n\r\ndata: two\r\rdata:three\n\n";
        for size in 1..input.len() {
            assert_eq!(
                feed_in_pieces(input, size),
                ["one", "two", "three"],
                "pieces of {size}"
            );
        }
    }

    #[test]
    fn multi_line_data_is_joined_and_unterminated_last_event_counts() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: a\ndata: b\n\ndata: tail"), ["a\nb"]);
        assert_eq!(p.finish(), ["tail"]);
    }

    #[test]
    fn events_are_released_only_when_complete() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"x\":").is_empty());
        assert!(p.push(b"1}\n").is_empty());
        assert_eq!(p.push(b"\n"), ["{\"x\":1}"]);
        assert!(p.finish().is_empty());
    }

    #[test]
    fn other_fields_are_ignored() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b"id: 7\nretry: 10\ndatabase: no\ndata:x\n\n"), ["x"]);
    }
}
