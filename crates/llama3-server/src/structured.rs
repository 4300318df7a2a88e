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
            let c = Constraint::from_response_format(rf)
                .map_err(|e| ApiError::param("response_format", e.to_string()))?;
            found.extend(c.map(|c| ("response_format", c)));
        }
        for (name, s) in [
            ("json_schema", &self.json_schema),
            ("guided_json", &self.guided_json),
        ] {
            if let Some(s) = s {
                let c = Constraint::from_schema(s)
                    .map_err(|e| ApiError::param(name, format!("{name}: {e}")))?;
                found.push((name, c));
            }
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
