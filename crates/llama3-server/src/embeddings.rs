//! `POST /v1/embeddings`: OpenAI's request (`input` as a string, strings, token ids or lists of
//! them; `encoding_format` float or base64; `dimensions`) plus llama.cpp-style extensions
//! (`pooling`, `normalize`, `truncate`). Each input runs alone through the model, beside the
//! engine's decoding, so a batch gives exactly the vectors one input at a time gives.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use llama3::embed::{embed, shorten, EmbedOptions, Pooling};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{parse, Prompt};
use crate::error::{ApiError, ApiResult};
use crate::{body, App};

/// Most inputs one request may carry (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize, Debug)]
pub struct EmbeddingRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub input: Prompt,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<i64>,
    /// mean, last or cls (default: the model's GGUF `pooling_type`, else mean).
    #[serde(default)]
    pub pooling: Option<String>,
    /// false: raw pooled vectors.
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Cut inputs longer than the context instead of refusing them.
    #[serde(default)]
    pub truncate: Option<bool>,
}

pub async fn embeddings(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Response {
    run(&app, b)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run(app: &App, b: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let served = app.served()?;
    let req: EmbeddingRequest = parse(&body(b)?)?;
    app.check_model(req.model.as_deref())?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::param(
                "encoding_format",
                format!("encoding_format {f:?} is not float or base64"),
            ))
        }
    };
    let pooling = match &req.pooling {
        None => served.pooling,
        Some(p) => p
            .parse::<Pooling>()
            .map_err(|e| ApiError::param("pooling", e.to_string()))?,
    };
    let tok = &served.tokenizer;
    let encode = |t: &str| {
        tok.encode(t, true, true)
            .map_err(|e| ApiError::param("input", format!("cannot tokenize the input: {e}")))
    };
    let inputs: Vec<Vec<u32>> = match &req.input {
        Prompt::Text(t) => vec![encode(t)?],
        Prompt::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<ApiResult<_>>()?,
        Prompt::Ids(ids) => vec![ids.clone()],
        Prompt::IdLists(l) => l.clone(),
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::param(
            "input",
            format!("give 1..={MAX_INPUTS} inputs"),
        ));
    }
    for (i, ids) in inputs.iter().enumerate() {
        if ids.is_empty() {
            return Err(ApiError::param("input", format!("input {i} has no tokens")));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= served.vocab) {
            return Err(ApiError::param(
                "input",
                format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    served.vocab
                ),
            ));
        }
    }
    let hidden = served.model.config.hidden_size;
    let dims = match req.dimensions {
        None => None,
        Some(d) if d >= 1 && d as usize <= hidden => Some(d as usize),
        Some(d) => {
            return Err(ApiError::param(
                "dimensions",
                format!("dimensions must be 1..={hidden} for this model, got {d}"),
            ))
        }
    };
    let opts = EmbedOptions {
        pooling,
        normalize: req.normalize.unwrap_or(true),
        truncate: req.truncate.unwrap_or(false),
        ..EmbedOptions::default()
    };
    let ctx = served.model.config.max_position_embeddings;
    if let Some((i, ids)) = inputs.iter().enumerate().find(|(_, ids)| ids.len() > ctx) {
        if !opts.truncate {
            return Err(ApiError::param(
                "input",
                format!(
                    "input {i} has {} tokens, more than the model's context of {ctx}; shorten \
                     it or send \"truncate\": true",
                    ids.len()
                ),
            )
            .code("context_length_exceeded"));
        }
    }
    let model = served.model.clone();
    let prompt_tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = tokio::task::spawn_blocking(move || {
        inputs
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                let mut v = embed(&model, ids, &opts).map_err(|e| (i, e))?;
                if let Some(d) = dims {
                    shorten(&mut v, d, opts.normalize).map_err(|e| (i, e))?;
                }
                Ok(v)
            })
            .collect::<Result<Vec<_>, (usize, llama3::Error)>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("embedding thread: {e}")))?
    .map_err(|(i, e)| ApiError::internal(format!("input {i}: {e}")))?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = match base64 {
                true => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                false => json!(v),
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": app.model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response())
}
