//! A chat answer with tools, in OpenAI's shape: `message.tool_calls` (id, type, function name,
//! arguments as JSON text) and `finish_reason: "tool_calls"`, whole or as stream chunks
//! (`delta.tool_calls` with index, id, type and name once, then the arguments in fragments).

use llama3::generate::FinishReason;
use llama3::tools::{Reply, ToolParser};
use serde_json::{json, Value};

/// Bytes of arguments per streamed fragment.
const FRAGMENT: usize = 16;

/// The finish reason OpenAI reports: `tool_calls` when the answer (ended by itself) calls.
fn finish_of(reply: &Reply, finish: FinishReason) -> Value {
    match (reply.tool_calls.is_empty(), finish) {
        (false, FinishReason::Stop) => json!("tool_calls"),
        _ => json!(finish),
    }
}

/// The assistant message of a whole answer, and its finish reason.
pub fn message(parser: &ToolParser, text: &str, finish: FinishReason) -> (Value, Value) {
    let reply = parser.parse(text);
    let mut m = json!({"role": "assistant", "content": reply.content});
    if !reply.tool_calls.is_empty() {
        m["tool_calls"] = json!(reply.tool_calls);
    }
    (m, finish_of(&reply, finish))
}

/// Choice `i`'s chunks once its answer is complete: the content not shown yet, each call (id,
/// type and name, then the arguments in fragments), then the finish reason.
pub fn chunks(reply: Reply, i: usize, finish: FinishReason) -> Vec<Value> {
    let delta = |d: Value| json!({"index": i, "delta": d, "logprobs": null, "finish_reason": null});
    let mut out = Vec::new();
    if let Some(c) = &reply.content {
        out.push(delta(json!({"content": c})));
    }
    for (k, call) in reply.tool_calls.iter().enumerate() {
        out.push(delta(
            json!({"tool_calls": [{"index": k, "id": call.id, "type": "function",
            "function": {"name": call.function.name, "arguments": ""}}]}),
        ));
        for piece in fragments(&call.function.arguments) {
            out.push(delta(
                json!({"tool_calls": [{"index": k, "function": {"arguments": piece}}]}),
            ));
        }
    }
    out.push(json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": finish_of(&reply, finish)}));
    out
}

/// `s` in pieces of about [`FRAGMENT`] bytes, split on character boundaries.
fn fragments(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + FRAGMENT).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[start..end]);
        start = end;
    }
    out
}
