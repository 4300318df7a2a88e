//! `Model`: a loaded model and tokenizer behind the Python `Llama3` class. Immutable once
//! loaded, so one instance serves several Python threads at once; each generation gets its
//! own KV cache (a pool of sessions keeps the last ones, so a chat's next turn re-runs only
//! what changed).

use std::sync::{Arc, Mutex};

use candle_core::DType;
use llama3::embed::{embed, shorten, EmbedOptions, Pooling};
use llama3::generate::{DraftModel, GenerateOptions, Session};
use llama3::grammar::{Constraint, Grammar};
use llama3::loader::{open, ModelInfo, OpenOptions};
use llama3::model::{Llama, Logits};
use llama3::sample::SamplingParams;
use llama3::tokenizer::Tokenizer;
use llama3::tools::{prepare_chat, ChatMessage, Tool, ToolChoice, ToolFormat, ToolRequest};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{invalid, to_py};
use crate::stream::{self, Request, Stream};

/// Sessions kept for reuse (their caches hold the last prompts and answers).
const POOL: usize = 4;

pub struct Inner {
    pub model: Llama,
    pub tokenizer: Option<Tokenizer>,
    pub info: ModelInfo,
    /// Positions per generation (prompt + answer).
    pub n_ctx: usize,
    /// A draft model every generation speculates with (unless it asks for prompt lookup).
    pub draft: Option<DraftModel>,
    sessions: Mutex<Vec<Session>>,
}

impl Inner {
    /// The pooled session sharing the longest prefix with `prompt` among those with room for
    /// `needed` positions, or a new one of `needed` positions. Sized to the request as the
    /// CLI's are: a larger cache decodes a few percent slower (158 tok/s at 160 positions, 152
    /// at 4104, with the default model), which kept Python within 3% of the CLI; a longer next
    /// turn of a chat therefore starts in a new session (issue 22: a cache that grows).
    pub fn take_session(&self, prompt: &[u32], needed: usize) -> llama3::Result<Session> {
        let needed = needed.clamp(1, self.n_ctx);
        let mut pool = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let best = (0..pool.len())
            .filter(|&i| pool[i].cache.capacity() >= needed)
            .max_by_key(|&i| pool[i].common_prefix(prompt));
        match best {
            Some(i) => Ok(pool.swap_remove(i)),
            None => Session::new(&self.model, needed),
        }
    }

    pub fn give_session(&self, s: Session) {
        let mut pool = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= POOL {
            pool.remove(0); // the oldest
        }
        pool.push(s);
    }

    fn tokenizer(&self) -> PyResult<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| invalid("this model has no tokenizer: pass tokenizer=PATH"))
    }
}

/// What `chat_plan` returns: prompt ids, (constraint kind, data), (tool format, parallel).
type ChatPlanOut = (Vec<u32>, Option<(String, String)>, Option<(String, bool)>);

fn tool_format_name(f: ToolFormat) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The native model handle; use `llama3.Llama3`.
#[pyclass(module = "llama3._llama3", frozen)]
pub struct Model {
    inner: Arc<Inner>,
}

#[pymethods]
impl Model {
    #[new]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    #[pyo3(signature = (model_path=None, device="auto", dtype="auto", lora=None, n_ctx=None, tokenizer=None, verbose=true, draft=None))]
    fn new(
        py: Python<'_>,
        model_path: Option<String>,
        device: &str,
        dtype: &str,
        lora: Option<Vec<String>>,
        n_ctx: Option<usize>,
        tokenizer: Option<String>,
        verbose: bool,
        draft: Option<String>,
    ) -> PyResult<Self> {
        let o = OpenOptions {
            device: device.to_string(),
            dtype: dtype.to_string(),
            tokenizer: tokenizer.map(Into::into),
            lora: lora.unwrap_or_default(),
            no_tokenizer: false,
            progress: None,
        };
        let loaded = py
            .detach(|| {
                open(model_path.as_deref(), &o, |m| {
                    if verbose {
                        eprintln!("{m}")
                    }
                })
            })
            .map_err(to_py)?;
        let draft = match draft {
            None => None,
            Some(path) => {
                let o = OpenOptions {
                    tokenizer: None,
                    lora: vec![],
                    ..o
                };
                let d = py
                    .detach(|| {
                        open(Some(&path), &o, |m| {
                            if verbose {
                                eprintln!("{m}")
                            }
                        })
                    })
                    .map_err(to_py)?;
                let probe = "Hello, world! 123 déjà vu";
                let same = match (&d.tokenizer, &loaded.tokenizer) {
                    (Some(a), Some(b)) => {
                        a.encode(probe, true, true).ok() == b.encode(probe, true, true).ok()
                    }
                    _ => true,
                };
                if !same || d.model.config.vocab_size != loaded.model.config.vocab_size {
                    return Err(invalid(format!(
                        "draft model {path}: its vocabulary is not the model's; a draft model must share it"
                    )));
                }
                Some(DraftModel(Arc::new(d.model)))
            }
        };
        let max = loaded.model.config.max_position_embeddings.max(1);
        let n_ctx = match n_ctx {
            Some(0) => return Err(invalid("n_ctx must be at least 1")),
            Some(n) => n.min(max),
            None => max.min(4096),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                model: loaded.model,
                tokenizer: loaded.tokenizer,
                info: loaded.info,
                n_ctx,
                draft,
                sessions: Mutex::new(Vec::new()),
            }),
        })
    }

    #[getter]
    fn n_ctx(&self) -> usize {
        self.inner.n_ctx
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.model.config.vocab_size
    }

    /// Token ids of `text`; `add_special`: the BOS (and EOS) the model adds; `parse_special`:
    /// `<|im_start|>`-style text becomes its special token.
    #[pyo3(signature = (text, add_special=true, parse_special=false))]
    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> PyResult<Vec<u32>> {
        let tok = self.inner.tokenizer()?;
        tok.encode(text, add_special, parse_special).map_err(to_py)
    }

    #[pyo3(signature = (ids, skip_special=false))]
    fn detokenize(&self, ids: Vec<u32>, skip_special: bool) -> PyResult<String> {
        let tok = self.inner.tokenizer()?;
        let vocab = tok.vocab_size();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab} tokens"
            )));
        }
        tok.decode(&ids, skip_special).map_err(to_py)
    }

    /// A conversation through the model's chat template: `messages` is OpenAI's message list as
    /// JSON (tool calls and tool results included), `tools` and `tool_choice` OpenAI's (JSON).
    /// Returns the prompt ids, the constraint of the answer as (kind, data), and the tool format
    /// to read calls with (None: the answer is text).
    #[pyo3(signature = (messages, tools=None, tool_choice=None, parallel_tool_calls=true))]
    fn chat_plan(
        &self,
        messages: &str,
        tools: Option<&str>,
        tool_choice: Option<&str>,
        parallel_tool_calls: bool,
    ) -> PyResult<ChatPlanOut> {
        let tok = self.inner.tokenizer()?;
        let msgs: Vec<ChatMessage> =
            serde_json::from_str(messages).map_err(|e| invalid(format!("messages: {e}")))?;
        let choice = match tool_choice {
            None => ToolChoice::Auto,
            Some(c) => {
                let v =
                    serde_json::from_str(c).map_err(|e| invalid(format!("tool_choice: {e}")))?;
                ToolChoice::from_json(&v).map_err(to_py)?
            }
        };
        let req = match tools {
            None if matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) => {
                return Err(invalid("tool_choice needs tools"))
            }
            None => None,
            Some(t) => {
                let tools: Vec<Tool> =
                    serde_json::from_str(t).map_err(|e| invalid(format!("tools: {e}")))?;
                Some(ToolRequest::new(tools, choice, parallel_tool_calls).map_err(to_py)?)
            }
        };
        let plan = prepare_chat(tok, &msgs, req.as_ref()).map_err(to_py)?;
        let constraint = plan.constraint.map(|c| {
            let (k, d) = c.to_tagged();
            (k.to_string(), d)
        });
        let parser = plan
            .parser
            .map(|p| (tool_format_name(p.format), p.parallel));
        Ok((plan.prompt, constraint, parser))
    }

    /// End-of-generation token ids.
    fn end_ids(&self) -> Vec<u32> {
        match &self.inner.tokenizer {
            Some(t) => t.end_ids().to_vec(),
            None => self.inner.model.config.eos_token_ids.clone(),
        }
    }

    /// Starts generating after `prompt` (ids); `sampling` is a JSON object of
    /// `SamplingParams` fields. Returns the token iterator: tokens as they come with
    /// `stream`, else all at the end (one wake-up of the caller instead of one per token).
    /// `constraint`: (kind, data) with kind `json_schema` (data: the schema as JSON text),
    /// `json_object`, `regex` or `lark`.
    #[pyo3(signature = (prompt, max_tokens, sampling, stop, top_logprobs=0, stream=true, constraint=None, lookup=0))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Vec<u32>,
        max_tokens: usize,
        sampling: &str,
        stop: Vec<String>,
        top_logprobs: usize,
        stream: bool,
        constraint: Option<(String, String)>,
        lookup: usize,
    ) -> PyResult<Stream> {
        let sampling: SamplingParams =
            serde_json::from_str(sampling).map_err(|e| invalid(format!("sampling: {e}")))?;
        let vocab = self.inner.model.config.vocab_size;
        sampling.validate(vocab).map_err(invalid)?;
        if prompt.is_empty() {
            return Err(invalid("empty prompt: at least one token is needed"));
        }
        if let Some(bad) = prompt.iter().find(|&&i| i as usize >= vocab) {
            return Err(invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab} tokens"
            )));
        }
        let n_ctx = self.inner.n_ctx;
        if prompt.len() >= n_ctx {
            return Err(invalid(format!(
                "prompt of {} tokens does not fit the context of {n_ctx} tokens (n_ctx)",
                prompt.len()
            )));
        }
        let grammar = match constraint {
            None => None,
            Some((kind, data)) => {
                let c = Constraint::from_tagged(&kind, &data).map_err(to_py)?;
                let tok = self.inner.tokenizer()?;
                // Compiling may take a moment (the first time, the vocabulary's trie).
                Some(py.detach(|| Grammar::new(tok, &c)).map_err(to_py)?)
            }
        };
        let opts = GenerateOptions {
            max_tokens,
            sampling,
            end_ids: self.end_ids(),
            top_logprobs,
            grammar,
            lookup,
            draft: (lookup == 0).then(|| self.inner.draft.clone()).flatten(),
            ..GenerateOptions::default()
        };
        let req = Request {
            prompt,
            opts,
            stop,
            stream,
        };
        stream::start(self.inner.clone(), req)
    }

    /// Logits of every position of `ids`, as (bytes of f32, T, V).
    fn logits<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<u32>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, usize)> {
        let inner = &self.inner;
        if ids.is_empty() {
            return Err(invalid("empty input: at least one token is needed"));
        }
        let rows = py
            .detach(|| -> llama3::Result<Vec<f32>> {
                let mut cache = inner.model.new_cache(1, ids.len())?;
                if cache.capacity() < ids.len() {
                    return Err(llama3::Error::Input(format!(
                        "{} tokens exceed the model's context of {}",
                        ids.len(),
                        cache.capacity()
                    )));
                }
                let l = inner.model.forward_tokens(&ids, &mut cache, Logits::All)?;
                Ok(l.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
            })
            .map_err(to_py)?;
        let v = inner.model.config.vocab_size;
        let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok((PyBytes::new(py, &bytes), ids.len(), v))
    }

    /// Embedding vectors of tokenized inputs, as (bytes of f32, N, D); `pooling` mean, last or
    /// cls (None: the model's GGUF pooling_type, else mean); `dimensions` keeps the first N
    /// components.
    #[pyo3(signature = (inputs, pooling=None, normalize=true, truncate=false, dimensions=None))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<Vec<u32>>,
        pooling: Option<&str>,
        normalize: bool,
        truncate: bool,
        dimensions: Option<usize>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, usize)> {
        let inner = &self.inner;
        let pooling = match pooling {
            Some(p) => p.parse::<Pooling>().map_err(to_py)?,
            None => inner.info.pooling.unwrap_or(Pooling::Mean),
        };
        let opts = EmbedOptions {
            pooling,
            normalize,
            truncate,
            ..EmbedOptions::default()
        };
        let vocab = inner.model.config.vocab_size;
        for (i, ids) in inputs.iter().enumerate() {
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(invalid(format!(
                    "input {i}: token id {bad} is outside the vocabulary of {vocab} tokens"
                )));
            }
        }
        let vectors = py
            .detach(|| -> llama3::Result<Vec<Vec<f32>>> {
                inputs
                    .iter()
                    .map(|ids| {
                        let mut v = embed(&inner.model, ids, &opts)?;
                        if let Some(d) = dimensions {
                            shorten(&mut v, d, normalize)?;
                        }
                        Ok(v)
                    })
                    .collect()
            })
            .map_err(to_py)?;
        let d = vectors.first().map_or(0, Vec::len);
        let bytes: Vec<u8> = vectors
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        Ok((PyBytes::new(py, &bytes), vectors.len(), d))
    }

    /// `log p(continuation | context)` for each continuation, as `llama3 eval` computes it:
    /// (logprob, n_tokens, is_greedy) each.
    fn score(
        &self,
        py: Python<'_>,
        context: &str,
        continuations: Vec<String>,
    ) -> PyResult<Vec<(f64, usize, bool)>> {
        let inner = &self.inner;
        let tok = inner.tokenizer()?;
        py.detach(|| -> llama3::Result<Vec<(f64, usize, bool)>> {
            let mut out = Vec::with_capacity(continuations.len());
            let mut scorer = llama3::eval::Scorer::new(&inner.model, inner.n_ctx)?;
            for c in &continuations {
                let (ctx, cont) = llama3::eval::encode_pair(tok, context, c)?;
                let s = scorer.score(&ctx, &[cont])?;
                out.extend(s.iter().map(|s| (s.logprob, s.n_tokens, s.is_greedy)));
            }
            Ok(out)
        })
        .map_err(to_py)
    }

    /// Perplexity of `text` (llama.cpp's chunks, or HF's sliding window with `stride`), as
    /// the JSON `llama3 perplexity --json` prints.
    #[pyo3(signature = (text, n_ctx=512, stride=None, batch=1, max_chunks=None))]
    fn perplexity(
        &self,
        py: Python<'_>,
        text: &str,
        n_ctx: usize,
        stride: Option<usize>,
        batch: usize,
        max_chunks: Option<usize>,
    ) -> PyResult<String> {
        use llama3::perplexity::{perplexity, PerplexityOptions, Protocol};
        let inner = &self.inner;
        let tok = inner.tokenizer()?;
        let report = py
            .detach(|| -> llama3::Result<String> {
                let tokens = tok.encode(text, true, false)?;
                let protocol = match stride {
                    Some(stride) => Protocol::SlidingWindow { stride },
                    None => Protocol::LlamaCpp,
                };
                let opts = PerplexityOptions {
                    protocol,
                    ctx: n_ctx,
                    batch: batch.max(1),
                    bos: if tok.adds_bos() { tok.bos_id() } else { None },
                    max_windows: max_chunks,
                };
                let r = perplexity(&inner.model, &tokens, &opts, |_| {})?;
                serde_json::to_string(&r).map_err(|e| llama3::Error::Input(e.to_string()))
            })
            .map_err(to_py)?;
        Ok(report)
    }

    /// Architecture, size, weight types, context and chat template, as JSON.
    fn info(&self) -> String {
        let i = &self.inner;
        let c = &i.model.config;
        serde_json::json!({
            "path": i.info.path,
            "format": i.info.format,
            "architecture": i.info.architecture,
            "name": i.info.name,
            "parameters": i.info.parameters,
            "file_bytes": i.info.file_bytes,
            "tensor_types": i.info.tensor_types,
            "n_ctx_train": c.max_position_embeddings,
            "n_ctx": i.n_ctx,
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "n_layers": c.num_hidden_layers,
            "n_heads": c.num_attention_heads,
            "n_kv_heads": c.num_key_value_heads,
            "device": llama3::device::name(i.model.device()),
            "dtype": format!("{:?}", i.model.dtype()).to_lowercase(),
            "chat_template": i.tokenizer.as_ref().and_then(|t| t.chat_template()).map(|t| t.source().to_string()),
        })
        .to_string()
    }
}
