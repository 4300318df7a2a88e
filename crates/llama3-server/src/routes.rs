//! The router: OpenAI routes, llama.cpp-style tokenize/detokenize, health, metrics, the chat
//! page; API-key and metrics middleware; OpenAI-style 404/405.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::api::{parse, DetokenizeRequest, TokenizeRequest};
use crate::error::{ApiError, ApiResult};
use crate::{body, App};
use crate::{completions, embeddings};

const PAGE: &str = include_str!("web/index.html");

pub fn router(app: Arc<App>, body_limit: usize) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// Bearer API key on every route but `/health` and the page itself (static HTML holding no
/// data; it asks for the key and sends it with its API calls).
async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if app.api_keys.is_empty() || path == "/health" || path == "/" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => ApiError::unauthorized("missing API key: send it as 'Authorization: Bearer KEY'")
            .into_response(),
        Some(k)
            if app
                .api_keys
                .iter()
                .any(|key| ct_eq(key.as_bytes(), k.as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("incorrect API key").into_response(),
    }
}

/// Compares without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts requests by route and status, and times them.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let start = Instant::now();
    let res = next.run(req).await;
    app.metrics.count_request(&route, res.status().as_u16());
    if route.starts_with("/v1/") {
        app.metrics
            .request_seconds
            .observe(start.elapsed().as_secs_f64());
    }
    res
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// 200 once the model is loaded, 503 while loading.
async fn health(State(app): State<Arc<App>>) -> Response {
    match app.ready.get() {
        Some(s) => {
            let busy = app.metrics.slots_busy.get();
            Json(json!({
                "status": "ok",
                "slots_idle": s.engine.config.parallel as i64 - busy,
                "slots_processing": busy,
                "queue_depth": s.engine.queue_depth(),
            }))
            .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading", "error": {"message": "the model is loading", "type": "server_error", "code": "loading"}})),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Some(s) = app.ready.get() {
        app.metrics.queue_depth.set(s.engine.queue_depth() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

fn model_json(app: &App) -> serde_json::Value {
    json!({
        "id": app.model_id,
        "object": "model",
        "created": app.created,
        "owned_by": "llama3",
    })
}

async fn models(State(app): State<Arc<App>>) -> Response {
    Json(json!({"object": "list", "data": [model_json(&app)]})).into_response()
}

async fn model(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.check_model(Some(&id)) {
        Ok(()) => Json(model_json(&app)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn tokenize(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Response {
    let run = || -> ApiResult<Response> {
        let served = app.served()?;
        let req: TokenizeRequest = parse(&body(b)?)?;
        let tok = &served.tokenizer;
        let ids = tok
            .encode(&req.content, req.add_special, true)
            .map_err(|e| ApiError::bad(format!("cannot tokenize: {e}")))?;
        let tokens: Vec<serde_json::Value> = if req.with_pieces {
            ids.iter()
                .map(|&id| json!({"id": id, "piece": tok.decode(&[id], false).unwrap_or_default()}))
                .collect()
        } else {
            ids.iter().map(|&id| json!(id)).collect()
        };
        Ok(Json(json!({ "tokens": tokens })).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

async fn detokenize(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Response {
    let run = || -> ApiResult<Response> {
        let served = app.served()?;
        let req: DetokenizeRequest = parse(&body(b)?)?;
        if let Some(bad) = req.tokens.iter().find(|&&id| id as usize >= served.vocab) {
            return Err(ApiError::param(
                "tokens",
                format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    served.vocab
                ),
            ));
        }
        let content = served
            .tokenizer
            .decode(&req.tokens, false)
            .map_err(|e| ApiError::bad(format!("cannot detokenize: {e}")))?;
        Ok(Json(json!({ "content": content })).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

async fn not_found(req: Request) -> Response {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
        .code("unknown_url")
        .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let mut e = ApiError::bad(format!(
        "method {} is not allowed on {}",
        req.method(),
        req.uri().path()
    ));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.into_response()
}
