//! Turning generated token bytes into text a client can be sent as it comes.

/// Turns token bytes into emitted text: holds back bytes of an unfinished UTF-8 character and
/// any tail that could be the start of a stop string; cuts at the first stop string.
pub(crate) struct StreamText {
    stop: Vec<String>,
    pending: Vec<u8>,
    text: String,
    emitted: usize,
    cancelled: bool,
}

impl StreamText {
    pub(crate) fn new(stop: Vec<String>) -> Self {
        Self {
            stop,
            pending: Vec::new(),
            text: String::new(),
            emitted: 0,
            cancelled: false,
        }
    }

    /// Adds a token's bytes; returns true when generation should end (stop string or the
    /// callback said so).
    pub(crate) fn push(&mut self, bytes: &[u8], on_token: &mut dyn FnMut(&str) -> bool) -> bool {
        self.pending.extend_from_slice(bytes);
        let complete = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => {
                // Invalid, not merely unfinished: keep going with replacement characters.
                let lossy = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                self.text.push_str(&lossy);
                return self.after_append(on_token);
            }
            Err(e) => e.valid_up_to(),
        };
        let rest = self.pending.split_off(complete);
        let done = std::mem::replace(&mut self.pending, rest);
        self.text
            .push_str(std::str::from_utf8(&done).unwrap_or_default());
        self.after_append(on_token)
    }

    fn after_append(&mut self, on_token: &mut dyn FnMut(&str) -> bool) -> bool {
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        // A stop string can only begin in the part not yet emitted.
        let search_from = self.emitted;
        let found = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[search_from..].find(s.as_str()))
            .min();
        if let Some(at) = found {
            let end = search_from + at;
            self.text.truncate(end);
            self.emit(end, on_token);
            return true;
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let mut safe = self.text.len();
        for k in (1..longest.min(self.text.len() - self.emitted + 1)).rev() {
            let start = self.text.len() - k;
            if !self.text.is_char_boundary(start) {
                continue;
            }
            let tail = &self.text[start..];
            if self.stop.iter().any(|s| s.len() > k && s.starts_with(tail)) {
                safe = start;
                break;
            }
        }
        self.emit(safe, on_token);
        self.cancelled
    }

    fn emit(&mut self, end: usize, on_token: &mut dyn FnMut(&str) -> bool) {
        if end > self.emitted {
            if !on_token(&self.text[self.emitted..end]) {
                self.cancelled = true;
            }
            self.emitted = end;
        }
    }

    /// Flushes what was held back (no stop string can complete any more) and returns the text.
    pub(crate) fn finish(mut self, on_token: &mut dyn FnMut(&str) -> bool) -> String {
        if !self.pending.is_empty() {
            let lossy = String::from_utf8_lossy(&self.pending).into_owned();
            self.text.push_str(&lossy);
            self.pending.clear();
        }
        if self.cancelled {
            // The caller stopped listening: the text is what it was given.
            self.text.truncate(self.emitted);
        } else {
            let end = self.text.len();
            self.emit(end, on_token);
        }
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]], stop: &[&str]) -> (Vec<String>, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| (*s).to_owned()).collect();
        let mut out = Vec::new();
        let mut cb = |s: &str| {
            out.push(s.to_owned());
            true
        };
        let mut stream = StreamText::new(stop.clone());
        let mut stopped = false;
        for p in pieces {
            if stream.push(p, &mut cb) {
                stopped = true;
                break;
            }
        }
        let text = stream.finish(&mut cb);
        (out, text, stopped)
    }

    #[test]
    fn split_utf8_is_never_emitted_broken() {
        let euro = "€".as_bytes();
        let (out, text, _) = run(&[b"a", &euro[..1], &euro[1..], b"b"], &[]);
        assert_eq!(text, "a€b");
        assert_eq!(out, ["a", "€", "b"]);
    }

    #[test]
    fn stop_string_across_pieces_is_not_emitted() {
        let (out, text, stopped) = run(&[b"Hello ", b"wor", b"ld", b" again"], &["world"]);
        assert!(stopped);
        assert_eq!(text, "Hello ");
        assert_eq!(out.concat(), "Hello ");
    }

    #[test]
    fn cancelled_text_is_what_was_emitted() {
        let stop = vec!["world".to_owned()];
        let mut out = String::new();
        let mut cb = |s: &str| {
            out.push_str(s);
            false
        };
        let mut stream = StreamText::new(stop.clone());
        assert!(stream.push(b"Hello wor", &mut cb));
        assert_eq!(stream.finish(&mut cb), "Hello ");
        assert_eq!(out, "Hello ");
    }

    #[test]
    fn held_back_prefix_is_flushed_at_the_end() {
        let (out, text, stopped) = run(&[b"Hello ", b"wor"], &["world"]);
        assert!(!stopped);
        assert_eq!(text, "Hello wor");
        assert_eq!(out, ["Hello ", "wor"]);
    }
}
