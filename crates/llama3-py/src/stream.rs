//! Generation on a thread of its own, read by Python as an iterator ([`Stream`]). The caller's
//! thread waits with the GIL released (other Python threads and asyncio keep going) and checks
//! for signals every 100 ms, so Ctrl-C interrupts a long generation at once; dropping the
//! iterator (leaving a `for` loop early) or an interrupt cancels the generation thread after
//! its current token.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llama3::generate::{GenerateOptions, Generator};
use pyo3::prelude::*;

use crate::errors::{raise, to_py};
use crate::model::Inner;

/// What the generation thread sends.
enum Msg {
    /// A generated token (not an end token) and the text it completed.
    Token {
        id: u32,
        text: String,
        logprob: f32,
        top: Vec<(u32, f32)>,
    },
    /// Text held back until the end, then the finish.
    Done {
        text: String,
        finish: &'static str,
        prompt_tokens: usize,
        cached_tokens: usize,
        completion_tokens: usize,
    },
    Failed(llama3::Error),
    /// The generation thread panicked (a bug).
    Panic,
}

/// One generation request.
pub struct Request {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    pub stop: Vec<String>,
    /// Send each token as it comes; otherwise all of them with the end.
    pub stream: bool,
}

/// Starts generating `req` on a new thread.
pub fn start(inner: Arc<Inner>, req: Request) -> PyResult<Stream> {
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let stop = cancel.clone();
    std::thread::Builder::new()
        .name("llama3-generate".into())
        .spawn(move || {
            // A panic (a bug) becomes the caller's exception, not a silently short answer.
            match std::panic::catch_unwind(AssertUnwindSafe(|| run(&inner, req, &stop, &tx))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = tx.send(Msg::Failed(e));
                }
                Err(_) => {
                    let _ = tx.send(Msg::Panic);
                }
            }
        })
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    Ok(Stream {
        rx: Mutex::new(Some(rx)),
        cancel,
        finish_reason: None,
        prompt_tokens: 0,
        cached_tokens: 0,
        completion_tokens: 0,
    })
}

/// The generation thread: a session from the pool (its cached prefix reused), the one
/// generation state machine, each token sent as it comes.
fn run(
    inner: &Inner,
    req: Request,
    cancel: &AtomicBool,
    tx: &mpsc::Sender<Msg>,
) -> llama3::Result<()> {
    let needed = req.prompt.len() + req.opts.max_tokens;
    let mut session = inner.take_session(&req.prompt, needed)?;
    let result = (|| -> llama3::Result<Option<Msg>> {
        let tok = inner.tokenizer.as_ref();
        let mut gen = Generator::with_text(
            &inner.model,
            &mut session,
            &req.prompt,
            req.opts,
            tok,
            &req.stop,
        )?;
        let mut completion = 0;
        let mut held = Vec::new();
        while let Some(out) = gen.next_token()? {
            completion += 1;
            if out.step.is_end {
                continue;
            }
            let msg = Msg::Token {
                id: out.step.token,
                text: out.text,
                logprob: out.step.logprob,
                top: out.step.top_logprobs,
            };
            if !req.stream {
                held.push(msg);
            } else if tx.send(msg).is_err() {
                return Ok(None); // the caller is gone
            }
            if cancel.load(Ordering::Relaxed) {
                return Ok(None); // interrupted
            }
        }
        for msg in held {
            if tx.send(msg).is_err() {
                return Ok(None);
            }
        }
        let (text, finish) = gen.finish()?;
        let finish = match finish {
            llama3::generate::FinishReason::Stop => "stop",
            llama3::generate::FinishReason::Length => "length",
        };
        Ok(Some(Msg::Done {
            text,
            finish,
            prompt_tokens: req.prompt.len(),
            cached_tokens: gen.cached_tokens,
            completion_tokens: completion,
        }))
    })();
    // Back in the pool before the caller hears it is done, so its next call finds it.
    inner.give_session(session);
    if let Some(done) = result? {
        let _ = tx.send(done);
    }
    Ok(())
}

/// An iterator over a generation's tokens: each item is `(text, token_id, logprob,
/// top_logprobs)`; after the last one `finish_reason`, `prompt_tokens` and
/// `completion_tokens` are set. Leaving it early stops the generation.
#[pyclass(module = "llama3._llama3")]
pub struct Stream {
    /// In a mutex only for `Sync` (a pyclass may be shared between threads); `__next__` has
    /// it alone.
    rx: Mutex<Option<Receiver<Msg>>>,
    cancel: Arc<AtomicBool>,
    /// "stop" or "length", once finished.
    #[pyo3(get)]
    finish_reason: Option<&'static str>,
    #[pyo3(get)]
    prompt_tokens: usize,
    /// Prompt tokens found in a cached session (not run again).
    #[pyo3(get)]
    cached_tokens: usize,
    #[pyo3(get)]
    completion_tokens: usize,
}

type Item = (String, Option<u32>, f32, Vec<(u32, f32)>);

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next token; the held-back text comes last with `token_id` None.
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Item>> {
        loop {
            let slot = self.rx.get_mut().unwrap_or_else(|p| p.into_inner());
            let Some(rx) = slot.take() else {
                return Ok(None);
            };
            // Wait with the GIL released; the receiver travels into the wait and back.
            let (rx, got) = py.detach(move || {
                let got = rx.recv_timeout(Duration::from_millis(100));
                (rx, got)
            });
            match got {
                Ok(Msg::Token {
                    id,
                    text,
                    logprob,
                    top,
                }) => {
                    *self.rx.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(rx);
                    return Ok(Some((text, Some(id), logprob, top)));
                }
                Ok(Msg::Done {
                    text,
                    finish,
                    prompt_tokens,
                    cached_tokens,
                    completion_tokens,
                }) => {
                    self.finish_reason = Some(finish);
                    self.prompt_tokens = prompt_tokens;
                    self.cached_tokens = cached_tokens;
                    self.completion_tokens = completion_tokens;
                    return Ok((!text.is_empty()).then(|| (text, None, 0.0, vec![])));
                }
                Ok(Msg::Failed(e)) => return Err(to_py(e)),
                Ok(Msg::Panic) => {
                    let msg = "internal error in generation (panic); the answer was stopped";
                    return Err(raise("Llama3Error", msg.into()));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        self.close();
                        return Err(e); // KeyboardInterrupt
                    }
                    *self.rx.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(rx);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // After a cancel the thread stops without a word; otherwise it always
                    // sends one, so its absence is an error, never a short answer.
                    if self.cancel.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    let msg = "the generation thread ended without a result";
                    return Err(raise("Llama3Error", msg.into()));
                }
            }
        }
    }

    /// Stops the generation (also done when the iterator is dropped).
    fn close(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        *self.rx.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
