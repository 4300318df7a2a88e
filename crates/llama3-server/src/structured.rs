//! Structured output on the wire: OpenAI's `response_format` (`json_object`, `json_schema`),
//! llama.cpp's `json_schema` and `grammar`, vLLM's `guided_json` / `guided_regex` /
//! `guided_grammar` and a plain `regex`, each compiled into a [`Grammar`] before the request is
//! queued, so that a bad schema or grammar is a 400 that says what and where.

use std::sync::Arc;

use llama3::grammar::{Constraint, Grammar};
use llama3::tokenizer::Tokenizer;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// The constraint fields a chat or text completion may carry (flattened into its body).
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Structured {
    pub response_format: Option<Value>,
    /// llama.cpp: a JSON schema.
    pub json_schema: Option<Value>,
    /// A grammar in llguidance's Lark syntax (llama.cpp's field name; GBNF is refused with a
    /// pointer to the converter).
    pub grammar: Option<String>,
    /// A regular expression the whole output matches.
    pub regex: Option<String>,
    /// vLLM's names.
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_grammar: Option<String>,
}

impl Structured {
    /// The one constraint the request asks for (and the parameter it came from), if any.
    pub fn constraint(&self) -> ApiResult<Option<(&'static str, Constraint)>> {
        let mut found: Vec<(&'static str, Constraint)> = Vec::new();
        if let Some(rf) = &self.response_format {
            found.extend(response_format(rf)?.map(|c| ("response_format", c)));
        }
        if let Some(s) = &self.json_schema {
            found.push(("json_schema", schema("json_schema", s)?));
        }
        if let Some(s) = &self.guided_json {
            found.push(("guided_json", schema("guided_json", s)?));
        }
        for (name, g) in [
            ("grammar", &self.grammar),
            ("guided_grammar", &self.guided_grammar),
        ] {
            if let Some(g) = g {
                found.push((name, Constraint::Lark(g.clone())));
            }
        }
        for (name, r) in [("regex", &self.regex), ("guided_regex", &self.guided_regex)] {
            if let Some(r) = r {
                found.push((name, Constraint::Regex(r.clone())));
            }
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|f| f.0).collect();
            return Err(ApiError::param(
                found[1].0,
                format!(
                    "give one output constraint, not several: {}",
                    names.join(", ")
                ),
            ));
        }
        Ok(found.pop())
    }

    /// The compiled constraint (compiling may take a moment: off the async threads).
    pub async fn grammar(&self, tok: &Arc<Tokenizer>) -> ApiResult<Option<Grammar>> {
        match self.constraint()? {
            None => Ok(None),
            Some((param, c)) => compile(tok, param, c).await.map(Some),
        }
    }
}

/// Compiles `c` for `tok`'s vocabulary off the async threads; an error is a 400 on `param`.
pub async fn compile(
    tok: &Arc<Tokenizer>,
    param: &'static str,
    c: Constraint,
) -> ApiResult<Grammar> {
    let tok = tok.clone();
    let compiled = tokio::task::spawn_blocking(move || Grammar::new(&tok, &c))
        .await
        .map_err(|e| ApiError::internal(format!("grammar compiler: {e}")))?;
    compiled.map_err(|e| ApiError::param(param, format!("invalid {param}: {e}")))
}

/// `response_format`: `{"type": "text"}`, `{"type": "json_object"}` (llama.cpp also takes a
/// `schema` there), `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
fn response_format(rf: &Value) -> ApiResult<Option<Constraint>> {
    let bad = |m: String| ApiError::param("response_format", m);
    let kind = rf.get("type").and_then(Value::as_str).ok_or_else(|| {
        bad("response_format needs a \"type\": text, json_object or json_schema".into())
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => match rf.get("schema") {
            Some(s) => schema("response_format.schema", s).map(Some),
            None => Ok(Some(Constraint::JsonObject)),
        },
        "json_schema" => {
            let js = rf.get("json_schema").ok_or_else(|| {
                bad("response_format of type json_schema needs a \"json_schema\" object with a \"schema\"".into())
            })?;
            let s = js
                .get("schema")
                .ok_or_else(|| bad("response_format.json_schema needs a \"schema\"".into()))?;
            schema("response_format.json_schema.schema", s).map(Some)
        }
        other => Err(bad(format!(
            "response_format type {other:?} is not text, json_object or json_schema"
        ))),
    }
}

/// A JSON schema given as an object or as a string holding one.
fn schema(param: &'static str, v: &Value) -> ApiResult<Constraint> {
    let v = match v {
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| ApiError::param(param, format!("{param} is not valid JSON: {e}")))?,
        v => v.clone(),
    };
    if !v.is_object() && !v.is_boolean() {
        return Err(ApiError::param(
            param,
            format!("{param} must be a JSON schema object, not {v}"),
        ));
    }
    Ok(Constraint::JsonSchema(v))
}
