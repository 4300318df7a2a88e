//! `llama3-server`: an OpenAI-compatible HTTP server with continuous batching.
//!
//! ```text
//! serve(config, load) ── binds, answers /health with 503 ──┐
//!        │                                                  │ load() on a blocking thread
//!        └── routes (axum) ── Job ──> Engine thread ──> Llama::forward_batch over the slots
//!                         <── Event (token, done) ──┘
//! ```
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (SSE streaming or not),
//! `POST /v1/embeddings`,
//! `GET /v1/models`, `POST /tokenize`, `POST /detokenize`, `GET /health`, `GET /metrics`, and
//! a chat page at `/`.

pub mod api;
mod completions;
mod embeddings;
pub mod error;
mod routes;
pub mod structured;
mod tool_reply;

/// The continuous-batching engine the routes submit to (no HTTP; `llama3-engine`).
pub use llama3_engine as engine;
pub use llama3_engine::metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use llama3::embed::Pooling;
use llama3::generate::DraftModel;
use llama3::loader::Loaded;
use llama3::model::Llama;
use llama3::tokenizer::Tokenizer;

pub use engine::{Engine, EngineConfig};
use error::{ApiError, ApiResult};
use metrics::Metrics;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Accepted Bearer keys; empty: no authentication.
    pub api_keys: Vec<String>,
    pub engine: EngineConfig,
    /// Most tokens one request may generate.
    pub max_tokens: usize,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// The model's name in the API.
    pub model_id: String,
}

/// What exists once the model is loaded.
pub struct Served {
    pub engine: Engine,
    pub tokenizer: Arc<Tokenizer>,
    pub vocab: usize,
    /// The model, shared with the engine thread (embeddings run beside it).
    pub model: Arc<Llama>,
    /// Embeddings' default pooling (the file's, else mean).
    pub pooling: Pooling,
}

/// Shared state of every handler.
pub struct App {
    pub ready: OnceLock<Served>,
    pub metrics: Arc<Metrics>,
    pub api_keys: Vec<String>,
    pub model_id: String,
    pub max_tokens: usize,
    pub created: u64,
}

impl App {
    /// The loaded model, or 503 while it loads.
    pub fn served(&self) -> ApiResult<&Served> {
        self.ready
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading; retry shortly"))
    }

    /// A request may name this server's model (or none).
    pub fn check_model(&self, model: Option<&str>) -> ApiResult<()> {
        match model {
            None | Some("") => Ok(()),
            Some(m) if m == self.model_id => Ok(()),
            Some(m) => Err(ApiError::not_found(format!(
                "The model '{m}' does not exist; this server serves '{}'",
                self.model_id
            ))
            .code("model_not_found")),
        }
    }
}

/// A request body, or the OpenAI-style error for one that could not be read (too large).
pub(crate) fn body(b: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    b.map_err(|e| {
        let mut err = ApiError::bad(format!("cannot read the request body: {}", e.body_text()));
        err.status = e.status();
        err
    })
}

/// Serves until `shutdown` resolves (then lets running requests finish). The socket is bound
/// first, so `/health` answers 503 while `load` runs on a blocking thread; a failed load ends
/// the server with its error.
pub async fn serve(
    cfg: ServeConfig,
    load: impl FnOnce() -> Result<(Loaded, Option<DraftModel>)> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local: SocketAddr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new(cfg.engine.parallel));
    let app = Arc::new(App {
        ready: OnceLock::new(),
        metrics: metrics.clone(),
        api_keys: cfg.api_keys.clone(),
        model_id: cfg.model_id.clone(),
        max_tokens: cfg.max_tokens,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    eprintln!("llama3 server listening on http://{local} (loading the model)");

    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loader = {
        let (app, cfg) = (app.clone(), cfg.clone());
        tokio::task::spawn_blocking(move || {
            let started = match load().and_then(|(l, d)| start_engine(l, d, &cfg, metrics)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = fail_tx.send(e);
                    return None;
                }
            };
            let (served, thread) = started;
            eprintln!(
                "model '{}' ready: {} slots of {} tokens",
                app.model_id, served.engine.config.parallel, served.engine.config.ctx
            );
            let _ = app.ready.set(served);
            Some(thread)
        })
    };

    let router = routes::router(app.clone(), cfg.body_limit);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let load_error = tokio::spawn(async move {
        match fail_rx.await {
            Ok(e) => {
                let _ = stop_tx.send(());
                Some(e)
            }
            Err(_) => None, // loaded fine
        }
    });
    let graceful = async move {
        tokio::select! {
            _ = shutdown => eprintln!("shutting down: finishing running requests"),
            // A dropped sender (the model loaded) is not a stop.
            Ok(()) = stop_rx => {}
        }
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(graceful)
        .await
        .context("server error")?;
    if let Ok(Some(e)) = load_error.await {
        return Err(e.context("cannot load the model"));
    }
    // Handlers are gone; dropping the last `Engine` ends the engine thread.
    drop(app);
    if let Ok(Some(thread)) = loader.await {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    Ok(())
}

fn start_engine(
    loaded: Loaded,
    draft: Option<DraftModel>,
    cfg: &ServeConfig,
    metrics: Arc<Metrics>,
) -> Result<(Served, std::thread::JoinHandle<()>)> {
    let tokenizer = loaded
        .tokenizer
        .context("the model has no tokenizer; pass --tokenizer FILE")?;
    let model = Arc::new(loaded.model);
    let pooling = loaded.info.pooling.unwrap_or(Pooling::Mean);
    let vocab = model.config.vocab_size;
    let mut ecfg = cfg.engine.clone();
    ecfg.draft = draft;
    ecfg.ctx = ecfg.ctx.min(model.config.max_position_embeddings.max(1));
    let tokenizer = Arc::new(tokenizer);
    let (engine, thread) = Engine::start(model.clone(), tokenizer.clone(), ecfg, metrics)
        .context("cannot start the engine thread")?;
    Ok((
        Served {
            engine,
            tokenizer,
            vocab,
            model,
            pooling,
        },
        thread,
    ))
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
