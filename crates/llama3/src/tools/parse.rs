//! Reading tool calls out of an answer, in the format its chat template uses.

use serde::Serialize;
use serde_json::Value as Json;

use super::{ToolCall, ToolFormat};

/// An answer split into its text and its calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Reply {
    /// The text meant for the user (None when the answer is only calls).
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// Reads calls out of answers in one [`ToolFormat`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolParser {
    pub format: ToolFormat,
    /// Keep every call (else the first only).
    pub parallel: bool,
}

impl ToolParser {
    pub fn new(format: ToolFormat, parallel: bool) -> Self {
        Self { format, parallel }
    }

    /// The calls in `text` and the text around them. Text that is not a well-formed call (an
    /// answer cut short by `max_tokens`, say) stays text.
    pub fn parse(&self, text: &str) -> Reply {
        let (content, mut calls) = match self.format {
            ToolFormat::Generic => generic(text),
            ToolFormat::Llama3Json => llama3(text),
            ToolFormat::Hermes => hermes(text),
        };
        if !self.parallel {
            calls.truncate(1);
        }
        Reply {
            content: content.filter(|c| !c.is_empty()),
            tool_calls: calls,
        }
    }
}

type Parsed = (Option<String>, Vec<ToolCall>);

/// `{"name": ..., "arguments"|"parameters": {...}}` as a call.
fn call_of(v: &Json) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?;
    let args = v.get("arguments").or_else(|| v.get("parameters"))?;
    let args = match args {
        // Some models write the arguments as a JSON string already.
        Json::String(s) => serde_json::from_str(s).unwrap_or_else(|_| Json::String(s.clone())),
        a => a.clone(),
    };
    let mut call = ToolCall::new(name, &args);
    if let Some(id) = v.get("id").and_then(Json::as_str) {
        call.id = id.to_string();
    }
    Some(call)
}

fn generic(text: &str) -> Parsed {
    let whole = || (Some(text.to_string()), vec![]);
    let Ok(v) = serde_json::from_str::<Json>(text.trim()) else {
        return whole();
    };
    if let Some(c) = v.get("tool_call").and_then(call_of) {
        return (None, vec![c]);
    }
    if let Some(list) = v.get("tool_calls").and_then(Json::as_array) {
        let calls: Option<Vec<ToolCall>> = list.iter().map(call_of).collect();
        if let Some(calls) = calls.filter(|c| !c.is_empty()) {
            return (None, calls);
        }
    }
    match v.get("response").and_then(Json::as_str) {
        Some(r) => (Some(r.to_string()), vec![]),
        None => whole(),
    }
}

/// Llama 3.1/3.2: the whole answer is one or more JSON calls (separated by `;` or newlines),
/// perhaps after `<|python_tag|>`.
fn llama3(text: &str) -> Parsed {
    let body = text.trim();
    let body = body.strip_prefix("<|python_tag|>").unwrap_or(body).trim();
    if !body.starts_with('{') {
        return (Some(text.to_string()), vec![]);
    }
    let mut calls = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Json>();
        let call = match values.next() {
            Some(Ok(v)) => call_of(&v),
            _ => None,
        };
        let Some(call) = call else {
            return (Some(text.to_string()), vec![]);
        };
        calls.push(call);
        rest = rest[values.byte_offset()..]
            .trim_start_matches(|c: char| c == ';' || c.is_whitespace());
    }
    (None, calls)
}

/// Hermes: `<tool_call>{...}</tool_call>` blocks anywhere in the answer; the rest is text.
fn hermes(text: &str) -> Parsed {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut calls = Vec::new();
    let mut content = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let (inner, next) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
            None => (after, ""),
        };
        match serde_json::from_str::<Json>(inner.trim())
            .ok()
            .as_ref()
            .and_then(call_of)
        {
            Some(c) => {
                content.push_str(&rest[..start]);
                calls.push(c);
            }
            None => content.push_str(&rest[..start + OPEN.len() + inner.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    (Some(content.trim().to_string()), calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(r: &Reply) -> Vec<(&str, &str)> {
        r.tool_calls
            .iter()
            .map(|c| (c.function.name.as_str(), c.function.arguments.as_str()))
            .collect()
    }

    #[test]
    fn each_format_reads_its_calls_and_leaves_text() {
        let g = ToolParser::new(ToolFormat::Generic, true);
        let r = g.parse(r#"{"tool_call": {"name": "f", "arguments": {"a": 1}}}"#);
        assert_eq!(names(&r), vec![("f", r#"{"a":1}"#)]);
        assert_eq!(r.content, None);
        let r = g.parse(r#"{"tool_calls": [{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"b": "x"}}]}"#);
        assert_eq!(names(&r), vec![("f", "{}"), ("g", r#"{"b":"x"}"#)]);
        let r = g.parse(r#"{"response": "Hello"}"#);
        assert_eq!(
            (r.content.as_deref(), r.tool_calls.len()),
            (Some("Hello"), 0)
        );
        let r = g.parse(r#"{"tool_call": {"name": "f", "argu"#);
        assert_eq!(r.tool_calls.len(), 0);
        assert!(r.content.unwrap().starts_with("{\"tool_call\""));

        let l = ToolParser::new(ToolFormat::Llama3Json, false);
        let r =
            l.parse(r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}"#);
        assert_eq!(names(&r), vec![("get_weather", r#"{"city":"Paris"}"#)]);
        let r = l.parse("The weather is fine.");
        assert_eq!(r.content.as_deref(), Some("The weather is fine."));
        let r = ToolParser::new(ToolFormat::Llama3Json, true)
            .parse(r#"{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": [1]}}"#);
        assert_eq!(names(&r), vec![("a", "{}"), ("b", r#"{"x":[1]}"#)]);

        let h = ToolParser::new(ToolFormat::Hermes, true);
        let r = h.parse("Let me check.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"x\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": \"{\\\"n\\\": 2}\"}\n</tool_call>");
        assert_eq!(names(&r), vec![("f", r#"{"q":"x"}"#), ("g", r#"{"n":2}"#)]);
        assert_eq!(r.content.as_deref(), Some("Let me check."));
        let r = h.parse("<tool_call>\n{\"name\": \"f\", \"argum");
        assert_eq!(r.tool_calls.len(), 0);
        assert!(r.content.unwrap().contains("<tool_call>"));
        let one = ToolParser::new(ToolFormat::Hermes, false)
            .parse("<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>");
        assert_eq!(names(&one), vec![("f", "{}")]);
    }
}
