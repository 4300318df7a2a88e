//! OpenAI request bodies and their checks: every field a client may send is parsed and
//! validated here, and turned into engine [`Job`](crate::engine::Job) settings. Anything wrong
//! is an [`ApiError`] naming the parameter.

use std::collections::HashMap;

use llama3::sample::SamplingParams;
use llama3::tokenizer::Tokenizer;
use llama3::tools::{prepare_chat, ChatMessage, ChatPlan, Tool, ToolCall, ToolChoice, ToolRequest};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::structured::Structured;

/// Parses a JSON body; malformed JSON, wrong types and invalid UTF-8 become a 400 that quotes
/// serde's message (field, expected type, line and column).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::bad(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")).code("invalid_json"))
}

/// `stop`: one string or several.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Generation settings shared by chat and text completions.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Knobs {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Prompt-lookup draft tokens per step (a llama3 extension; default: `--lookup`).
    pub lookup: Option<i64>,
    /// llama.cpp's: false runs the whole prompt even when a slot holds a prefix of it.
    pub cache_prompt: Option<bool>,
    /// Output constraints (`response_format`, `grammar`, `regex`...).
    #[serde(flatten)]
    pub structured: Structured,
}

/// Most choices one request may ask for.
pub const MAX_N: usize = 16;
/// Most alternatives per token in `top_logprobs` (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Knobs {
    /// Sampling parameters with llama.cpp's defaults for what the request leaves out; the seed
    /// is the request's or a random one.
    pub fn sampling(&self, vocab: usize) -> ApiResult<SamplingParams> {
        let d = SamplingParams::default();
        let top_k = match self.top_k {
            Some(k) if k < 0 => return Err(ApiError::param("top_k", "top_k must be >= 0")),
            Some(k) => k as usize,
            None => d.top_k,
        };
        let mut logit_bias = Vec::new();
        for (k, &v) in self.logit_bias.iter().flatten() {
            let id: u32 = k.trim().parse().map_err(|_| {
                ApiError::param(
                    "logit_bias",
                    format!("logit_bias key {k:?} is not a token id"),
                )
            })?;
            if !(-100.0..=100.0).contains(&v) {
                return Err(ApiError::param(
                    "logit_bias",
                    format!("logit_bias value {v} for token {id} is outside [-100, 100]"),
                ));
            }
            logit_bias.push((id, v));
        }
        logit_bias.sort_by_key(|&(id, _)| id);
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k,
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            typical_p: self.typical_p.unwrap_or(d.typical_p),
            repeat_penalty: self.repetition_penalty.unwrap_or(d.repeat_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            penalty_last_n: d.penalty_last_n,
            logit_bias,
            seed: match self.seed {
                Some(s) => s as u64,
                None => rand::random(),
            },
        };
        if !(-2.0..=2.0).contains(&p.frequency_penalty) {
            return Err(ApiError::param(
                "frequency_penalty",
                "frequency_penalty must be between -2 and 2",
            ));
        }
        if !(-2.0..=2.0).contains(&p.presence_penalty) {
            return Err(ApiError::param(
                "presence_penalty",
                "presence_penalty must be between -2 and 2",
            ));
        }
        p.validate(vocab).map_err(ApiError::bad)?;
        Ok(p)
    }

    /// Tokens to generate: the request's (checked against the context and the server's cap) or
    /// whatever room the context leaves, up to the cap. Never silently truncated.
    pub fn max_tokens(&self, prompt_len: usize, ctx: usize, cap: usize) -> ApiResult<usize> {
        let (name, asked) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => ("max_completion_tokens", Some(m)),
            (None, m) => ("max_tokens", m),
        };
        if prompt_len >= ctx {
            return Err(ApiError::bad(format!(
                "This model's maximum context length is {ctx} tokens; the prompt alone has \
                 {prompt_len} tokens. Shorten the prompt."
            ))
            .code("context_length_exceeded"));
        }
        let room = ctx - prompt_len;
        match asked {
            None => Ok(room.min(cap)),
            Some(m) if m < 1 => Err(ApiError::param(
                name,
                format!("{name} must be at least 1, got {m}"),
            )),
            Some(m) if m as u64 > cap as u64 => Err(ApiError::param(
                name,
                format!("{name} is {m}, above this server's limit of {cap} (--max-tokens)"),
            )),
            Some(m) if m as usize > room => Err(ApiError::param(
                name,
                format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested \
                     {} tokens ({prompt_len} in the prompt, {m} in the completion). Reduce the \
                     prompt or {name}.",
                    prompt_len + m as usize
                ),
            )
            .code("context_length_exceeded")),
            Some(m) => Ok(m as usize),
        }
    }

    pub fn n(&self) -> ApiResult<usize> {
        match self.n {
            None => Ok(1),
            Some(n) if n >= 1 && n as usize <= MAX_N => Ok(n as usize),
            Some(n) => Err(ApiError::param(
                "n",
                format!("n must be 1..={MAX_N}, got {n}"),
            )),
        }
    }

    pub fn stops(&self) -> ApiResult<Vec<String>> {
        let stops = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stops.len() > 16 {
            return Err(ApiError::param("stop", "at most 16 stop sequences"));
        }
        Ok(stops)
    }

    /// Draft tokens per step: the request's (0..=64) or the server's `--lookup`.
    pub fn lookup(&self, default: usize) -> ApiResult<usize> {
        match self.lookup {
            None => Ok(default),
            Some(k) if (0..=64).contains(&k) => Ok(k as usize),
            Some(k) => Err(ApiError::param(
                "lookup",
                format!("lookup must be 0..=64, got {k}"),
            )),
        }
    }

    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// Message content: a string, or parts of which the text ones are used.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A tool result: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub knobs: Knobs,
}

impl ChatRequest {
    /// `tools`, `tool_choice` and `parallel_tool_calls`, checked (None without tools).
    fn tool_request(&self) -> ApiResult<Option<ToolRequest>> {
        let choice = match &self.tool_choice {
            None => None,
            Some(v) => Some(
                ToolChoice::from_json(v)
                    .map_err(|e| ApiError::param("tool_choice", e.to_string()))?,
            ),
        };
        let tools = match (&self.tools, choice) {
            (None, None) => return Ok(None),
            (None, Some(ToolChoice::None | ToolChoice::Auto)) => return Ok(None),
            (None, Some(_)) => {
                return Err(ApiError::param("tool_choice", "tool_choice needs tools"))
            }
            (Some(t), c) => (t.clone(), c.unwrap_or(ToolChoice::Auto)),
        };
        ToolRequest::new(tools.0, tools.1, self.parallel_tool_calls.unwrap_or(true))
            .map(Some)
            .map_err(|e| ApiError::param("tools", e.to_string()))
    }

    /// The rendered, tokenized conversation (with the assistant's generation prompt), and
    /// with tools, the constraint and parser of the answer.
    pub fn plan(&self, tok: &Tokenizer) -> ApiResult<ChatPlan> {
        if self.messages.is_empty() {
            return Err(ApiError::param("messages", "messages must not be empty"));
        }
        let mut msgs = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant" | "tool"
            ) {
                return Err(ApiError::param(
                    "messages",
                    format!(
                        "messages[{i}].role {:?} is not system, user, assistant or tool",
                        m.role
                    ),
                ));
            }
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (k, _) => {
                                return Err(ApiError::param(
                                    "messages",
                                    format!("messages[{i}]: content part of type {k:?} is not supported (text only)"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            let role = if m.role == "developer" {
                "system"
            } else {
                m.role.as_str()
            };
            if role == "tool" && m.tool_call_id.is_none() {
                return Err(ApiError::param(
                    "messages",
                    format!("messages[{i}] has role tool but no tool_call_id"),
                ));
            }
            let mut msg = ChatMessage::new(role, content);
            msg.tool_calls = m.tool_calls.clone().unwrap_or_default();
            msg.tool_call_id = m.tool_call_id.clone();
            msg.name = m.name.clone();
            msgs.push(msg);
        }
        let tools = self.tool_request()?;
        prepare_chat(tok, &msgs, tools.as_ref()).map_err(|e| match e {
            llama3::Error::Input(m) => ApiError::param("tools", m),
            e => ApiError::param("messages", format!("cannot apply the chat template: {e}")),
        })
    }

    /// `Some(k)` when log-probabilities are asked for.
    pub fn logprobs(&self) -> ApiResult<Option<usize>> {
        let k = match self.top_logprobs {
            None => 0,
            Some(k) if k >= 0 && k as usize <= MAX_TOP_LOGPROBS => k as usize,
            Some(k) => {
                return Err(ApiError::param(
                    "top_logprobs",
                    format!("top_logprobs must be 0..={MAX_TOP_LOGPROBS}, got {k}"),
                ))
            }
        };
        match self.logprobs.unwrap_or(false) {
            true => Ok(Some(k)),
            false if k > 0 => Err(ApiError::param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            )),
            false => Ok(None),
        }
    }
}

/// `prompt` of a text completion: text, texts, token ids, or lists of token ids.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default)]
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub knobs: Knobs,
}

impl CompletionRequest {
    /// One token list per prompt; text gets BOS when the model wants it.
    pub fn prompts(&self, tok: &Tokenizer, vocab: usize) -> ApiResult<Vec<Vec<u32>>> {
        if self.echo == Some(true) {
            return Err(ApiError::param("echo", "echo is not supported"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::param(
                "suffix",
                "suffix (insertion) is not supported",
            ));
        }
        let encode = |t: &str| {
            tok.encode(t, true, true)
                .map_err(|e| ApiError::param("prompt", format!("cannot tokenize the prompt: {e}")))
        };
        let prompts = match &self.prompt {
            Prompt::Text(t) => vec![encode(t)?],
            Prompt::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<ApiResult<_>>()?,
            Prompt::Ids(ids) => vec![ids.clone()],
            Prompt::IdLists(l) => l.clone(),
        };
        if prompts.is_empty() || prompts.len() > MAX_N {
            return Err(ApiError::param(
                "prompt",
                format!("give 1..={MAX_N} prompts"),
            ));
        }
        for p in &prompts {
            if p.is_empty() {
                return Err(ApiError::param("prompt", "a prompt has no tokens"));
            }
            if let Some(bad) = p.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::param(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary of {vocab} tokens"),
                ));
            }
        }
        Ok(prompts)
    }

    pub fn logprobs(&self) -> ApiResult<Option<usize>> {
        match self.logprobs {
            None => Ok(None),
            Some(k) if (0..=5).contains(&k) => Ok(Some(k as usize)),
            Some(k) => Err(ApiError::param(
                "logprobs",
                format!("logprobs must be 0..=5, got {k}"),
            )),
        }
    }
}

/// llama.cpp server's `/tokenize` body.
#[derive(Deserialize, Debug)]
pub struct TokenizeRequest {
    pub content: String,
    #[serde(default)]
    pub add_special: bool,
    #[serde(default)]
    pub with_pieces: bool,
}

/// llama.cpp server's `/detokenize` body.
#[derive(Deserialize, Debug)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}
