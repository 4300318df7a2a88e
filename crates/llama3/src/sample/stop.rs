//! Stop strings that may span tokens: text is emitted as soon as it can no longer be part of a
//! stop string, and held back while it still might be (llama.cpp server's partial-stop check,
//! OpenAI `stop`).

/// Streaming matcher for stop strings over decoded text.
///
/// Works on `&str` pieces, so it only ever splits at char boundaries: a held-back suffix
/// always starts where a stop string could start, which is a char boundary.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Longest stop string in bytes: only a suffix shorter than this can be a partial match.
    max_len: usize,
    /// Decoded text not yet emitted: a possible start of a stop string.
    held: String,
    stopped: bool,
}

impl StopStrings {
    /// Matcher for `stops`; empty strings are dropped (they would match before any text).
    pub fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            max_len,
            held: String::new(),
            stopped: false,
        }
    }

    /// Push newly decoded text; returns the text safe to emit now (holding back a suffix that
    /// could be the start of a stop string) and whether a stop string was completed (text up
    /// to, not including, the stop string is emitted).
    ///
    /// When several stop strings match, the one starting earliest wins. Text after the stop
    /// string is dropped, and once stopped every later push returns `("", true)`.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(text);
        // Emitted text never holds the start of a match (see `partial_start`), so any match
        // lies entirely inside `held`.
        let first = self.stops.iter().filter_map(|s| self.held.find(s)).min();
        if let Some(pos) = first {
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(pos);
            self.stopped = true;
            return (emit, true);
        }
        let keep = self.held.split_off(self.partial_start());
        (std::mem::replace(&mut self.held, keep), false)
    }

    /// End of generation: the held-back text, which turned out not to be a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// True once a stop string has been seen; the caller should end generation.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Byte offset of the longest suffix of `held` that is a proper prefix of a stop string,
    /// or `held.len()` when there is none.
    fn partial_start(&self) -> usize {
        let len = self.held.len();
        let from = len.saturating_sub(self.max_len.saturating_sub(1));
        (from..len)
            .filter(|&i| self.held.is_char_boundary(i))
            .find(|&i| {
                let suffix = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(suffix))
            })
            .unwrap_or(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> StopStrings {
        StopStrings::new(list.iter().map(|s| s.to_string()).collect())
    }

    /// Push all pieces; returns (everything emitted incl. flush, stopped, per-push outputs).
    fn run(list: &[&str], pieces: &[&str]) -> (String, bool, Vec<String>) {
        let mut s = stops(list);
        let mut all = String::new();
        let mut outs = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let (out, hit) = s.push(p);
            all.push_str(&out);
            outs.push(out);
            if hit {
                stopped = true;
                break;
            }
        }
        all.push_str(&s.flush());
        (all, stopped, outs)
    }

    #[test]
    fn stop_string_table() {
        let cases: Vec<(&[&str], &[&str], &str, bool)> = vec![
            // No stops: everything passes through.
            (&[], &["Hello", " world"], "Hello world", false),
            // Stop inside one piece; trailing text dropped.
            (&["</s>"], &["Hi</s>junk"], "Hi", true),
            // Split across three pieces.
            (&["<|eot|>"], &["Hi <|", "eo", "t|> more"], "Hi ", true),
            // A partial match that does not complete is released.
            (&["<|eot|>"], &["a <|e", "nd"], "a <|end", false),
            // Stop at the very start.
            (&["###"], &["###", "x"], "", true),
            (&["###"], &["#", "#", "#"], "", true),
            // Overlapping prefixes: "aab" inside "aaab" split as "aa" + "ab".
            (&["aab"], &["aa", "ab"], "a", true),
            // Two stops sharing a prefix: the earliest start wins.
            (&["abc", "bcd"], &["xab", "cd"], "x", true),
            (&["User:", "Use"], &["I Us", "e it"], "I ", true),
            // Empty stop strings are ignored.
            (&[""], &["abc"], "abc", false),
        ];
        for (list, pieces, want, want_stop) in cases {
            let (got, stopped, _) = run(list, pieces);
            assert_eq!(got, want, "stops {list:?} pieces {pieces:?}");
            assert_eq!(stopped, want_stop, "stops {list:?} pieces {pieces:?}");
        }
    }

    #[test]
    fn holds_back_only_what_could_match() {
        let (_, _, outs) = run(&["<|eot|>"], &["Hello <", "|eo", "x", " bye"]);
        assert_eq!(outs, vec!["Hello ", "", "<|eox", " bye"]);
    }

    #[test]
    fn multibyte_never_cut() {
        // Stop starts with a 2-byte char; the held suffix is the whole char.
        let (_, _, outs) = run(&["ñx"], &["añ", "y"]);
        assert_eq!(outs, vec!["a", "ñy"]);
        // 😀 and 😁 share their first three bytes; no partial byte match is possible.
        let (got, stopped, outs) = run(&["😀!"], &["a😁", "😀", "!b"]);
        assert_eq!(outs, vec!["a😁", "", ""]);
        assert_eq!((got.as_str(), stopped), ("a😁", true));
        // Every output is valid UTF-8 by construction; check the pieces round-trip too.
        let (got, stopped, _) = run(&["日本語"], &["こんにちは日", "本", "人"]);
        assert_eq!((got.as_str(), stopped), ("こんにちは日本人", false));
        let (got, stopped, _) = run(&["日本語"], &["こんにちは日", "本", "語です"]);
        assert_eq!((got.as_str(), stopped), ("こんにちは", true));
    }

    #[test]
    fn any_split_gives_the_unsplit_answer() {
        let texts = [
            "say hi <|eot|> bye",
            "aaab",
            "日本語です",
            "x<<|eo|eot|>",
            "<|e",
        ];
        let lists: [&[&str]; 3] = [&["<|eot|>"], &["aab", "ab"], &["本語", "<|eo|"]];
        for text in texts {
            for list in lists {
                let first = list.iter().filter_map(|s| text.find(s)).min();
                let want = (first.map_or(text, |i| &text[..i]), first.is_some());
                let bounds: Vec<usize> = (0..=text.len())
                    .filter(|&i| text.is_char_boundary(i))
                    .collect();
                // Every two-piece split, and one char per piece.
                let mut splits: Vec<Vec<&str>> = bounds
                    .iter()
                    .map(|&i| vec![&text[..i], &text[i..]])
                    .collect();
                splits.push(bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect());
                for pieces in splits {
                    let (got, stopped, _) = run(list, &pieces);
                    assert_eq!((got.as_str(), stopped), want, "{list:?} {pieces:?}");
                }
            }
        }
    }

    #[test]
    fn after_stop_pushes_are_empty() {
        let mut s = stops(&["END"]);
        assert_eq!(s.push("fooEND"), ("foo".to_string(), true));
        assert!(s.is_stopped());
        assert_eq!(s.push("more"), (String::new(), true));
        assert_eq!(s.flush(), "");
    }

    #[test]
    fn flush_returns_held_text() {
        let mut s = stops(&["STOP"]);
        assert_eq!(s.push("go ST"), ("go ".to_string(), false));
        assert_eq!(s.flush(), "ST");
        assert_eq!(s.flush(), "");
    }
}
