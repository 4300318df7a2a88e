//! Tool calling: OpenAI's `tools` / `tool_choice` / `parallel_tool_calls` on a chat, for the
//! server and the Python package alike.
//!
//! ```text
//! messages + tools ──prepare──> prompt ids (the template's own tool format, or a generic one)
//!                               + the constraint the answer must match (a call, under
//!                               `required` or a named function; a call or a reply, generic auto)
//!                               + a ToolParser for the answer
//! answer text ──ToolParser::parse──> content and tool_calls
//! ```
//!
//! Formats ([`ToolFormat`]), picked from the chat template: Llama 3.1/3.2 JSON calls
//! (`{"name": ..., "parameters": ...}`, perhaps after `<|python_tag|>`), Hermes
//! `<tool_call>{...}</tool_call>` (Qwen, Hermes and other ChatML templates with tools), and a
//! generic JSON format for templates that know no tools (as llama.cpp's): the tools are
//! described in a system message and the answer is `{"tool_call": ...}`, `{"tool_calls":
//! [...]}` or `{"response": "..."}`, always under a JSON schema.

mod parse;
mod stream;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

pub use parse::{Reply, ToolParser};
pub use stream::ToolStream;

use crate::grammar::Constraint;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// A function the model may call (OpenAI `tools[].function`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Function {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments (an object schema; `{"type": "object"}` when absent).
    #[serde(default = "any_object")]
    pub parameters: Json,
}

fn any_object() -> Json {
    json!({"type": "object"})
}

/// One entry of `tools`: `{"type": "function", "function": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Function,
}

/// `tool_choice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides: a reply or calls.
    Auto,
    /// No calls: a reply (the tools are left out of the prompt).
    None,
    /// At least one call, to any tool.
    Required,
    /// One call to this function.
    Function(String),
}

impl ToolChoice {
    /// `"auto"`, `"none"`, `"required"` or `{"type": "function", "function": {"name": ...}}`.
    pub fn from_json(v: &Json) -> Result<Self> {
        let bad = || {
            Error::Input(format!(
                "tool_choice must be \"auto\", \"none\", \"required\" or \
                 {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, not {v}"
            ))
        };
        match v {
            Json::String(s) => match s.as_str() {
                "auto" => Ok(Self::Auto),
                "none" => Ok(Self::None),
                "required" => Ok(Self::Required),
                _ => Err(bad()),
            },
            Json::Object(o) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Json::as_str)
                .map(|n| Self::Function(n.to_string()))
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

/// A call the model made, in OpenAI's shape; `arguments` is JSON text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: CalledFunction,
}

fn function_kind() -> String {
    "function".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalledFunction {
    pub name: String,
    /// The arguments as JSON text (OpenAI's wire format).
    pub arguments: String,
}

impl ToolCall {
    /// A call with a fresh id (`call_` and 24 random letters and digits).
    pub fn new(name: impl Into<String>, arguments: &Json) -> Self {
        use rand::distr::{Alphanumeric, SampleString};
        Self {
            id: format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24)),
            kind: function_kind(),
            function: CalledFunction {
                name: name.into(),
                arguments: arguments.to_string(),
            },
        }
    }
}

/// A chat message as OpenAI sends it, tool calls and tool results included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(content.into()),
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
        }
    }
}

/// How a chat template writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolFormat {
    /// Llama 3.1/3.2: `{"name": ..., "parameters": {...}}`, perhaps after `<|python_tag|>`.
    Llama3Json,
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (Hermes, Qwen).
    Hermes,
    /// Templates without tools: JSON answers described in a system message.
    Generic,
}

impl ToolFormat {
    /// The format a chat template uses, read from its text.
    pub fn of_template(source: &str) -> Self {
        if source.contains("<tool_call>") {
            Self::Hermes
        } else if source.contains("<|python_tag|>")
            || (source.contains("Environment: ipython") && source.contains("\"parameters\""))
        {
            Self::Llama3Json
        } else {
            Self::Generic
        }
    }
}

/// What a chat request asks of tools.
#[derive(Clone, Debug)]
pub struct ToolRequest {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// More than one call in an answer (the generic and Hermes formats; Llama 3 makes one).
    pub parallel: bool,
}

impl ToolRequest {
    /// Checks the tools (type `function`, unique names, object parameter schemas) and that a
    /// named choice names one of them.
    pub fn new(tools: Vec<Tool>, choice: ToolChoice, parallel: bool) -> Result<Self> {
        for (i, t) in tools.iter().enumerate() {
            if t.kind != "function" {
                return Err(Error::Input(format!(
                    "tools[{i}].type is {:?}; only \"function\" tools exist",
                    t.kind
                )));
            }
            if t.function.name.is_empty() {
                return Err(Error::Input(format!("tools[{i}].function.name is empty")));
            }
            if tools[..i]
                .iter()
                .any(|o| o.function.name == t.function.name)
            {
                return Err(Error::Input(format!(
                    "two tools are named {:?}",
                    t.function.name
                )));
            }
            if !t.function.parameters.is_object() {
                return Err(Error::Input(format!(
                    "tools[{i}].function.parameters must be a JSON schema object"
                )));
            }
        }
        if let ToolChoice::Function(name) = &choice {
            if !tools.iter().any(|t| &t.function.name == name) {
                return Err(Error::Input(format!(
                    "tool_choice names {name:?}, which is not among the tools"
                )));
            }
        }
        if tools.is_empty() && matches!(choice, ToolChoice::Required) {
            return Err(Error::Input(
                "tool_choice \"required\" needs at least one tool".into(),
            ));
        }
        Ok(Self {
            tools,
            choice,
            parallel,
        })
    }
}

/// A chat ready to run: its prompt, the constraint its answer must match, and how to read
/// calls out of the answer (None: the answer is plain text).
#[derive(Clone, Debug)]
pub struct ChatPlan {
    pub prompt: Vec<u32>,
    pub constraint: Option<Constraint>,
    pub parser: Option<ToolParser>,
}

impl ChatPlan {
    /// A streaming reader of the answer's calls (None without tools): text streams while it
    /// cannot begin a call; a required or named call is held whole.
    pub fn stream(&self) -> Option<ToolStream> {
        let forced = self.constraint.is_some();
        self.parser.clone().map(|p| ToolStream::new(p, forced))
    }
}

/// Renders `messages` (with `tools`, if any) through `tok`'s chat template.
pub fn prepare_chat(
    tok: &Tokenizer,
    messages: &[ChatMessage],
    tools: Option<&ToolRequest>,
) -> Result<ChatPlan> {
    let template = tok
        .chat_template()
        .ok_or_else(|| Error::Template("this model has no chat template".into()))?;
    let active = tools.filter(|t| !t.tools.is_empty() && t.choice != ToolChoice::None);
    let Some(req) = active else {
        let msgs: Vec<Json> = messages.iter().map(|m| native_message(m, false)).collect();
        let prompt = tok.encode_chat_with(&msgs, true, &Map::new())?;
        return Ok(ChatPlan {
            prompt,
            constraint: None,
            parser: None,
        });
    };
    let format = ToolFormat::of_template(template.source());
    // Llama 3 templates take one call per turn; a named function is called once.
    let parallel = req.parallel
        && format != ToolFormat::Llama3Json
        && !matches!(req.choice, ToolChoice::Function(_));
    let offered: Vec<&Tool> = match &req.choice {
        ToolChoice::Function(n) => req.tools.iter().filter(|t| &t.function.name == n).collect(),
        _ => req.tools.iter().collect(),
    };
    let forced = matches!(req.choice, ToolChoice::Required | ToolChoice::Function(_));
    let (msgs, extra) = match format {
        ToolFormat::Generic => (
            generic_messages(messages, &offered, forced, parallel),
            Map::new(),
        ),
        _ => {
            let msgs = messages.iter().map(|m| native_message(m, true)).collect();
            let tools = json!(req.tools);
            (msgs, Map::from_iter([("tools".to_string(), tools)]))
        }
    };
    let prompt = tok.encode_chat_with(&msgs, true, &extra)?;
    let constraint = constraint(format, &offered, forced, parallel);
    Ok(ChatPlan {
        prompt,
        constraint,
        parser: Some(ToolParser::new(format, parallel)),
    })
}

/// A message as Hugging Face templates read it: tool-call arguments as objects, content a
/// string; `tool_calls` only on messages that have some (templates test `'tool_calls' in m`).
fn native_message(m: &ChatMessage, with_calls: bool) -> Json {
    let mut o = Map::new();
    o.insert("role".into(), json!(m.role));
    o.insert(
        "content".into(),
        json!(m.content.clone().unwrap_or_default()),
    );
    if with_calls && !m.tool_calls.is_empty() {
        let calls: Vec<Json> = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function", "function": {
                    "name": c.function.name, "arguments": arguments_value(&c.function.arguments)}})
            })
            .collect();
        o.insert("tool_calls".into(), json!(calls));
    }
    if let Some(id) = &m.tool_call_id {
        o.insert("tool_call_id".into(), json!(id));
    }
    if let Some(n) = &m.name {
        o.insert("name".into(), json!(n));
    }
    Json::Object(o)
}

/// Arguments JSON text as a value (text that is not JSON stays a string).
fn arguments_value(s: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|_| json!(s))
}

/// The generic format: a system message describing the tools and the answer's JSON shape;
/// earlier calls and results written as that JSON (in assistant and user turns).
fn generic_messages(
    messages: &[ChatMessage],
    tools: &[&Tool],
    forced: bool,
    parallel: bool,
) -> Vec<Json> {
    let listed: Vec<String> = tools
        .iter()
        .map(|t| serde_json::to_string_pretty(&t.function).unwrap_or_default())
        .collect();
    let shape = match (parallel, forced) {
        (true, true) => r#"{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}"#,
        (false, true) => r#"{"tool_call": {"name": ..., "arguments": {...}}}"#,
        (true, false) => {
            r#"{"tool_calls": [{"name": ..., "arguments": {...}}, ...]} to call tools, or {"response": "..."} to answer the user"#
        }
        (false, false) => {
            r#"{"tool_call": {"name": ..., "arguments": {...}}} to call a tool, or {"response": "..."} to answer the user"#
        }
    };
    let guide = format!(
        "You can call these tools:\n\n{}\n\nRespond in JSON: {shape}.",
        listed.join("\n\n")
    );
    let mut out = Vec::with_capacity(messages.len() + 1);
    match messages.first() {
        Some(m) if m.role == "system" => {
            let sys = m.content.clone().unwrap_or_default();
            out.push(json!({"role": "system", "content": format!("{sys}\n\n{guide}")}));
        }
        _ => out.push(json!({"role": "system", "content": guide})),
    }
    let skip = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        let content = match (m.role.as_str(), m.tool_calls.is_empty()) {
            ("assistant", false) => {
                let calls: Vec<Json> = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"name": c.function.name, "arguments": arguments_value(&c.function.arguments), "id": c.id}))
                    .collect();
                json!({"tool_calls": calls}).to_string()
            }
            ("tool", _) => json!({"tool_response": {
                "tool": m.name, "tool_call_id": m.tool_call_id, "content": m.content}})
            .to_string(),
            _ => m.content.clone().unwrap_or_default(),
        };
        let role = if m.role == "tool" {
            "user"
        } else {
            m.role.as_str()
        };
        out.push(json!({"role": role, "content": content}));
    }
    out
}

/// The schema of one call to one of `tools`, with the arguments under `args_key`.
fn one_call(tools: &[&Tool], args_key: &str) -> Json {
    let each: Vec<Json> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {"name": {"const": t.function.name}, args_key: t.function.parameters},
                "required": ["name", args_key],
                "additionalProperties": false
            })
        })
        .collect();
    match each.len() {
        1 => each.into_iter().next().unwrap_or_default(),
        _ => json!({"anyOf": each}),
    }
}

/// What the answer must match; None where the model writes freely (native formats, auto).
fn constraint(
    format: ToolFormat,
    tools: &[&Tool],
    forced: bool,
    parallel: bool,
) -> Option<Constraint> {
    match format {
        ToolFormat::Generic => {
            let calls = match parallel {
                true => json!({"type": "object",
                    "properties": {"tool_calls": {"type": "array", "items": one_call(tools, "arguments"), "minItems": 1}},
                    "required": ["tool_calls"], "additionalProperties": false}),
                false => json!({"type": "object",
                    "properties": {"tool_call": one_call(tools, "arguments")},
                    "required": ["tool_call"], "additionalProperties": false}),
            };
            let reply = json!({"type": "object", "properties": {"response": {"type": "string"}},
                "required": ["response"], "additionalProperties": false});
            Some(Constraint::JsonSchema(match forced {
                true => calls,
                false => json!({"anyOf": [calls, reply]}),
            }))
        }
        _ if !forced => None,
        ToolFormat::Llama3Json => Some(Constraint::JsonSchema(one_call(tools, "parameters"))),
        ToolFormat::Hermes => {
            let schema = crate::grammar::bounded_whitespace(one_call(tools, "arguments"));
            let repeat = if parallel { "+" } else { "" };
            Some(Constraint::Lark(format!(
                "start: call{repeat}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\" \"\\n\"?\nbody: %json {schema}\n"
            )))
        }
    }
}
