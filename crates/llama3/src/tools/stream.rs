//! Streaming an answer that may hold tool calls: text is passed on as it comes while it cannot
//! be the start of a call, and held from where a call may begin; the held part is read for
//! calls when the answer ends. Llama 3 answers are calls when they start with `{` or
//! `<|python_tag|>`; Hermes calls start at `<tool_call>`, anywhere; the generic format's answer
//! is one JSON object, so all of it is held.

use super::{Reply, ToolFormat, ToolParser};

/// One answer's streaming state.
#[derive(Clone, Debug)]
pub struct ToolStream {
    parser: ToolParser,
    /// Text not passed on yet.
    held: String,
    /// Everything from here on is held (a call has begun, or the format holds all).
    holding: bool,
    /// Llama 3: the answer's start showed it is text; pass everything on.
    text: bool,
}

const PYTHON_TAG: &str = "<|python_tag|>";
const TOOL_CALL: &str = "<tool_call>";

impl ToolStream {
    /// `forced`: the answer is a call (`tool_choice` required or named): hold all of it.
    pub fn new(parser: ToolParser, forced: bool) -> Self {
        Self {
            holding: forced || parser.format == ToolFormat::Generic,
            parser,
            held: String::new(),
            text: false,
        }
    }

    /// How calls are read.
    pub fn parser(&self) -> &ToolParser {
        &self.parser
    }

    /// Adds a piece of the answer; returns the text that can be shown now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.holding {
            self.held.push_str(piece);
            return String::new();
        }
        if self.text {
            return piece.to_string();
        }
        self.held.push_str(piece);
        match self.parser.format {
            ToolFormat::Llama3Json => {
                let start = self.held.trim_start();
                if start.is_empty()
                    || PYTHON_TAG.starts_with(start) && start.len() < PYTHON_TAG.len()
                {
                    String::new() // too early to tell
                } else if start.starts_with('{') || start.starts_with(PYTHON_TAG) {
                    self.holding = true;
                    String::new()
                } else {
                    self.text = true;
                    std::mem::take(&mut self.held)
                }
            }
            ToolFormat::Hermes => {
                if let Some(at) = self.held.find(TOOL_CALL) {
                    self.holding = true;
                    let shown: String = self.held.drain(..at).collect();
                    return shown;
                }
                // Keep back a suffix that could begin `<tool_call>`.
                let keep = (1..TOOL_CALL.len())
                    .rev()
                    .find(|&n| {
                        self.held.len() >= n
                            && self.held.is_char_boundary(self.held.len() - n)
                            && TOOL_CALL.starts_with(&self.held[self.held.len() - n..])
                    })
                    .unwrap_or(0);
                let cut = self.held.len() - keep;
                self.held.drain(..cut).collect()
            }
            ToolFormat::Generic => String::new(),
        }
    }

    /// The answer ended: the held text read for calls. Its `content` is what was not shown yet.
    pub fn finish(&mut self) -> Reply {
        let held = std::mem::take(&mut self.held);
        if !self.holding {
            return Reply {
                content: (!held.is_empty()).then_some(held),
                tool_calls: vec![],
            };
        }
        self.parser.parse(&held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: ToolFormat, forced: bool, pieces: &[&str]) -> (String, Reply) {
        let mut s = ToolStream::new(ToolParser::new(format, true), forced);
        let shown: String = pieces.iter().map(|p| s.push(p)).collect();
        (shown, s.finish())
    }

    #[test]
    fn text_streams_and_calls_are_held() {
        // Llama 3: text streams at once; a call is held and parsed.
        let (shown, r) = run(ToolFormat::Llama3Json, false, &["The ", "sky is ", "blue."]);
        assert_eq!(
            (shown.as_str(), r.content, r.tool_calls.len()),
            ("The sky is blue.", None, 0)
        );
        let (shown, r) = run(
            ToolFormat::Llama3Json,
            false,
            &[
                " <|python",
                "_tag|>{\"name\": \"f\", ",
                "\"parameters\": {}}",
            ],
        );
        assert_eq!((shown.as_str(), r.tool_calls.len()), ("", 1));
        // Hermes: text before a call streams; a partial `<tool_call>` waits.
        let (shown, r) = run(
            ToolFormat::Hermes,
            false,
            &[
                "Let me check.\n<tool",
                "_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>",
            ],
        );
        assert_eq!(shown, "Let me check.\n");
        assert_eq!((r.content, r.tool_calls.len()), (None, 1));
        let (shown, r) = run(ToolFormat::Hermes, false, &["a <to", "y> b"]);
        assert_eq!((shown.as_str(), r.content), ("a <toy> b", None));
        let (shown, r) = run(ToolFormat::Hermes, false, &["ends with <tool"]);
        assert_eq!(
            (shown.as_str(), r.content.as_deref()),
            ("ends with ", Some("<tool"))
        );
        // Generic and forced answers are held whole.
        let (shown, r) = run(ToolFormat::Generic, false, &["{\"response\": ", "\"hi\"}"]);
        assert_eq!((shown.as_str(), r.content.as_deref()), ("", Some("hi")));
        let (shown, r) = run(
            ToolFormat::Hermes,
            true,
            &["<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>"],
        );
        assert_eq!((shown.as_str(), r.tool_calls.len()), ("", 1));
    }
}
