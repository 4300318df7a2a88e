//! `POST /v1/chat/completions` and `POST /v1/completions`: requests become engine jobs (one
//! per prompt and choice), and their events become OpenAI responses, whole or as SSE chunks.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use llama3::generate::FinishReason;
use llama3::grammar::Grammar;
use llama3::tokenizer::Tokenizer;
use llama3::tools::ToolStream;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::{parse, ChatRequest, CompletionRequest, Knobs};
use crate::engine::{Event, Job, SubmitError, TokenOut};
use crate::error::{ApiError, ApiResult};
use crate::structured::compile;
use crate::tool_reply;
use crate::{body, App, Served};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }
}

pub async fn chat(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let served = app.served()?;
        let req: ChatRequest = parse(&body(b)?)?;
        app.check_model(req.model.as_deref())?;
        let plan = req.plan(&served.tokenizer)?;
        let logprobs = req.logprobs()?;
        let tools = plan.stream();
        let grammar = match (plan.constraint, req.knobs.structured.constraint()?) {
            (Some(_), Some((param, _))) => {
                return Err(ApiError::param(
                    param,
                    format!("{param} cannot be combined with tool calls (tool_choice \"none\" leaves them out)"),
                ))
            }
            (Some(c), None) => Some(compile(&served.tokenizer, "tools", c).await?),
            (None, Some((param, c))) => Some(compile(&served.tokenizer, param, c).await?),
            (None, None) => None,
        };
        let out = Output { grammar, tools };
        start(
            &app,
            served,
            Kind::Chat,
            vec![plan.prompt],
            &req.knobs,
            logprobs,
            out,
        )
        .await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(
    State(app): State<Arc<App>>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let served = app.served()?;
        let req: CompletionRequest = parse(&body(b)?)?;
        app.check_model(req.model.as_deref())?;
        let prompts = req.prompts(&served.tokenizer, served.vocab)?;
        let logprobs = req.logprobs()?;
        let grammar = req.knobs.structured.grammar(&served.tokenizer).await?;
        let out = Output {
            grammar,
            tools: None,
        };
        start(&app, served, Kind::Text, prompts, &req.knobs, logprobs, out).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// What the answer must match, and how to read tool calls out of it.
struct Output {
    grammar: Option<Grammar>,
    tools: Option<ToolStream>,
}

/// Everything a response needs besides the events.
struct Reply {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    tok: Arc<Tokenizer>,
    prompt_tokens: usize,
    /// Choices per prompt (`n`): the first of each prompt's reports its cached tokens.
    n: usize,
    /// With tools: answers are read for calls (text streams while it cannot begin one).
    tools: Option<ToolStream>,
}

/// Validates the knobs, submits one job per (prompt, choice), and answers whole or streamed.
async fn start(
    app: &App,
    served: &Served,
    kind: Kind,
    prompts: Vec<Vec<u32>>,
    knobs: &Knobs,
    logprobs: Option<usize>,
    out: Output,
) -> ApiResult<Response> {
    let n = knobs.n()?;
    let stops = knobs.stops()?;
    let sampling = knobs.sampling(served.vocab)?;
    let grammar = out.grammar;
    let lookup = knobs.lookup(served.engine.config.lookup)?;
    let ctx = served.engine.config.ctx;
    let mut receivers = Vec::with_capacity(prompts.len() * n);
    let mut prompt_tokens = 0;
    for p in &prompts {
        let max_tokens = knobs.max_tokens(p.len(), ctx, app.max_tokens)?;
        prompt_tokens += p.len();
        for k in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let mut s = sampling.clone();
            s.seed = s.seed.wrapping_add(k as u64);
            let job = Job {
                prompt: p.clone(),
                sampling: s,
                max_tokens,
                stop: stops.clone(),
                logprobs,
                grammar: grammar.clone(),
                lookup,
                cache_prompt: knobs.cache_prompt.unwrap_or(true),
                events: tx,
                submitted: Instant::now(),
            };
            // Jobs submitted before a failure are cancelled when `receivers` drops.
            served.engine.submit(job).map_err(|e| match e {
                SubmitError::QueueFull => ApiError::queue_full(1),
                SubmitError::ShuttingDown => ApiError::unavailable("the server is shutting down"),
            })?;
            receivers.push(rx);
        }
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    let reply = Reply {
        kind,
        id: format!("{prefix}-{:032x}", rand::random::<u128>()),
        created,
        model: app.model_id.clone(),
        logprobs: logprobs.is_some(),
        tok: served.tokenizer.clone(),
        prompt_tokens,
        n,
        tools: out.tools,
    };
    let events = stream::select_all(
        receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |e| (i, e))),
    );
    if knobs.stream() {
        Ok(stream_reply(
            reply,
            events,
            prompts.len() * n,
            knobs.include_usage(),
        ))
    } else {
        Ok(whole_reply(reply, events).await)
    }
}

/// One choice being assembled.
#[derive(Default)]
struct Choice {
    text: String,
    tokens: Vec<TokenOut>,
    finish: Option<FinishReason>,
    completion_tokens: usize,
    cached_tokens: usize,
}

/// Waits for every choice, then answers with one JSON object.
async fn whole_reply(r: Reply, mut events: impl Stream<Item = (usize, Event)> + Unpin) -> Response {
    let mut choices: Vec<Choice> = Vec::new();
    while let Some((i, ev)) = events.next().await {
        if choices.len() <= i {
            choices.resize_with(i + 1, Choice::default);
        }
        let c = &mut choices[i];
        match ev {
            Event::Token(t) => {
                c.text.push_str(&t.text);
                c.tokens.push(t);
            }
            Event::Done(d) => {
                c.text.push_str(&d.text);
                c.finish = Some(d.finish);
                c.completion_tokens = d.completion_tokens;
                c.cached_tokens = d.cached_tokens;
            }
            Event::Error(e) => return ApiError::internal(e).into_response(),
        }
    }
    let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
    let cached: usize = choices
        .iter()
        .step_by(r.n.max(1))
        .map(|c| c.cached_tokens)
        .sum();
    let out: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = match r.logprobs {
                true => logprobs_json(&r, &c.tokens),
                false => Value::Null,
            };
            let finish = c.finish.unwrap_or(FinishReason::Length);
            match (r.kind, &r.tools) {
                (Kind::Chat, Some(t)) => {
                    let (message, finish) = tool_reply::message(t.parser(), &c.text, finish);
                    json!({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
                }
                (Kind::Chat, None) => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }),
                (Kind::Text, _) => json!({
                    "index": i,
                    "text": c.text,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }),
            }
        })
        .collect();
    Json(json!({
        "id": r.id,
        "object": r.kind.object(false),
        "created": r.created,
        "model": r.model,
        "choices": out,
        "usage": usage(r.prompt_tokens, cached, completion),
    }))
    .into_response()
}

/// Server-sent events: a chunk per token (chat: a role chunk first, a finish chunk last), an
/// optional usage chunk, then `[DONE]`. Dropping the stream (client gone) drops the receivers,
/// which cancels the sequences in the engine.
fn stream_reply(
    r: Reply,
    events: impl Stream<Item = (usize, Event)> + Send + 'static,
    choices: usize,
    include_usage: bool,
) -> Response {
    let r = Arc::new(r);
    // (completion tokens, cached prompt tokens) over the choices.
    let completion = Arc::new(Mutex::new((0usize, 0usize)));
    let head: Vec<Value> = match r.kind {
        Kind::Chat => (0..choices)
            .map(|i| r.chunk(json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})))
            .collect(),
        Kind::Text => vec![],
    };
    let (r2, c2) = (r.clone(), completion.clone());
    // With tools, each choice's text streams while it cannot begin a call; the rest is read
    // for calls when the choice ends.
    let mut held: Vec<Option<ToolStream>> = vec![r.tools.clone(); choices];
    let body = events.flat_map(move |(i, ev)| {
        let chunks: Vec<Value> = match ev {
            Event::Token(t) => {
                let logprobs = match r2.logprobs {
                    true => logprobs_json(&r2, std::slice::from_ref(&t)),
                    false => Value::Null,
                };
                if let Some(ts) = held[i].as_mut() {
                    let shown = ts.push(&t.text);
                    match (shown.is_empty(), r2.logprobs) {
                        (true, false) => vec![],
                        _ => vec![r2.chunk(r2.delta(i, &shown, logprobs, None))],
                    }
                } else if t.text.is_empty() && !r2.logprobs {
                    vec![]
                } else {
                    vec![r2.chunk(r2.delta(i, &t.text, logprobs, None))]
                }
            }
            Event::Done(d) => {
                if let Ok(mut c) = c2.lock() {
                    c.0 += d.completion_tokens;
                    if i % r2.n.max(1) == 0 {
                        c.1 += d.cached_tokens;
                    }
                }
                match (r2.kind, held[i].as_mut()) {
                    (Kind::Chat, Some(ts)) => {
                        let mut shown = ts.push(&d.text);
                        let mut reply = ts.finish();
                        if let Some(rest) = reply.content.take() {
                            shown.push_str(&rest);
                        }
                        reply.content = (!shown.is_empty()).then_some(shown);
                        tool_reply::chunks(reply, i, d.finish)
                            .into_iter()
                            .map(|c| r2.chunk(c))
                            .collect()
                    }
                    (Kind::Chat, None) => {
                        let mut v = vec![];
                        if !d.text.is_empty() {
                            v.push(r2.chunk(r2.delta(i, &d.text, Value::Null, None)));
                        }
                        v.push(r2.chunk(json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": d.finish})));
                        v
                    }
                    (Kind::Text, _) => vec![r2.chunk(r2.delta(i, &d.text, Value::Null, Some(d.finish)))],
                }
            }
            Event::Error(e) => vec![ApiError::internal(e).body()],
        };
        stream::iter(chunks)
    });
    let tail = stream::once(async move {
        let mut v = vec![];
        if include_usage {
            let (c, cached) = completion.lock().map_or((0, 0), |c| *c);
            let mut u = r.chunk(json!(null));
            u["choices"] = json!([]);
            u["usage"] = usage(r.prompt_tokens, cached, c);
            v.push(Sse::default().data(u.to_string()));
        }
        v.push(Sse::default().data("[DONE]"));
        stream::iter(v)
    })
    .flatten();
    let sse = stream::iter(head)
        .chain(body)
        .map(|v| Sse::default().data(v.to_string()))
        .chain(tail)
        .map(Ok::<_, Infallible>);
    axum::response::Sse::new(sse)
        .keep_alive(KeepAlive::default())
        .into_response()
}

impl Reply {
    /// A chunk object around one choice (`choice` null: no choices).
    fn chunk(&self, choice: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.kind.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// One choice's incremental piece.
    fn delta(&self, i: usize, text: &str, logprobs: Value, finish: Option<FinishReason>) -> Value {
        match self.kind {
            Kind::Chat => {
                json!({"index": i, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }
}

/// OpenAI's usage object; `cached`: prompt tokens reused from a slot's KV cache.
fn usage(prompt: usize, cached: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// The text of one token, as OpenAI reports it in logprobs.
fn piece(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

fn logprobs_json(r: &Reply, tokens: &[TokenOut]) -> Value {
    match r.kind {
        Kind::Chat => {
            let entry = |id: u32, lp: f32| {
                let s = piece(&r.tok, id);
                json!({"token": s, "logprob": lp, "bytes": s.as_bytes()})
            };
            let content: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    let mut e = entry(t.id, t.logprob);
                    e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                    e
                })
                .collect();
            json!({ "content": content })
        }
        Kind::Text => {
            let mut offset = 0;
            let (mut toks, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
            for t in tokens {
                let s = piece(&r.tok, t.id);
                offsets.push(offset);
                offset += s.len();
                toks.push(s);
                lps.push(t.logprob);
                let top: serde_json::Map<String, Value> = t
                    .top
                    .iter()
                    .map(|&(id, lp)| (piece(&r.tok, id), json!(lp)))
                    .collect();
                tops.push(Value::Object(top));
            }
            json!({"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
        }
    }
}
