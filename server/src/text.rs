//! Generated text, token by token: incremental detokenization (text is released only when it
//! forms whole UTF-8 characters, as [`ferrinfer_engine::tokenizer::TextStream`] does) and stop
//! sequences (text that could still become a stop sequence is held back until it cannot, and a
//! match cuts the text where the stop sequence begins).
use std::sync::Arc;

use ferrinfer_engine::Tokenizer;

/// What one token adds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Piece {
    /// New text to send (may be empty).
    pub text: String,
    /// A stop sequence matched: the text ends here and the request should be cancelled.
    pub stopped: bool,
}

/// Assembles a request's output text.
pub struct Assembler {
    tok: Arc<Tokenizer>,
    ids: Vec<u32>,
    /// The decoded text of `ids` (up to the last whole character).
    text: String,
    /// Bytes of `text` already released.
    sent: usize,
    stops: Vec<String>,
    stopped: bool,
}

impl Assembler {
    /// An assembler with the request's stop sequences (non-empty strings).
    pub fn new(tok: Arc<Tokenizer>, stops: Vec<String>) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            text: String::new(),
            sent: 0,
            stops,
            stopped: false,
        }
    }

    /// Whether a stop sequence matched.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Tokens that produced text (stop tokens excluded).
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Adds a generated token (not a stop token).
    pub fn push(&mut self, id: u32) -> Result<Piece, String> {
        if self.stopped {
            return Ok(Piece {
                text: String::new(),
                stopped: true,
            });
        }
        self.ids.push(id);
        let text = self
            .tok
            .decode(&self.ids, false)
            .map_err(|e| e.to_string())?;
        // A partial UTF-8 sequence decodes to U+FFFD at the end: wait for the rest.
        if text.ends_with('\u{FFFD}') {
            return Ok(Piece::default());
        }
        self.text = text;
        Ok(self.release(false))
    }

    /// The text still held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        // A trailing partial character is released as U+FFFD rather than lost.
        if let Ok(t) = self.tok.decode(&self.ids, false) {
            if t.len() >= self.text.len() && t.starts_with(self.text.as_str()) {
                self.text = t;
            }
        }
        self.release(true).text
    }

    fn release(&mut self, all: bool) -> Piece {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        // A match can only begin in the unsent text or within `longest` bytes before it... but
        // sent text never held a whole match, so searching from `sent - longest` suffices.
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| from + p))
            .min();
        if let Some(p) = hit {
            let p = p.max(self.sent);
            let text = self.text[self.sent..p].to_string();
            self.sent = p;
            self.stopped = true;
            return Piece {
                text,
                stopped: true,
            };
        }
        let end = if all {
            self.text.len()
        } else {
            // Hold back the longest suffix that is a proper prefix of a stop sequence.
            let mut end = self.text.len();
            for s in &self.stops {
                for k in (1..s.len()).rev() {
                    if !s.is_char_boundary(k) || k > self.text.len() - self.sent {
                        continue;
                    }
                    if self.text.ends_with(&s[..k]) {
                        end = end.min(self.text.len() - k);
                        break;
                    }
                }
            }
            end
        };
        let text = self.text[self.sent..end].to_string();
        self.sent = end;
        Piece {
            text,
            stopped: false,
        }
    }
}
