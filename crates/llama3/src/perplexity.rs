//! Perplexity of a token stream, under one of two protocols (the STYLE page asks to say which;
//! the numbers they give differ and are not comparable).
//!
//! * [`Protocol::LlamaCpp`], as `llama-perplexity` (llama.cpp `tools/perplexity/perplexity.cpp`,
//!   `perplexity()`): `n_tokens / ctx` independent chunks of `ctx` tokens (the tail is dropped),
//!   each run from an empty context with its first token replaced by BOS when the model adds BOS,
//!   and only the second half scored: the logits at positions `ctx/2 ..= ctx-2` predict tokens
//!   `ctx/2+1 ..= ctx-1`, i.e. `ctx - ctx/2 - 1` tokens per chunk (255 of 512). llama.cpp refuses
//!   texts shorter than `2 * ctx` tokens; so do we.
//! * [`Protocol::SlidingWindow`], as the transformers docs "Perplexity of fixed-length models":
//!   windows of up to `ctx` tokens starting every `stride` tokens, each scoring only the tokens
//!   after the previous window's end, so that every token but the first is scored exactly once.
//!   The docs weight each window's mean loss by `trg_len - 1`, which is the window's token count
//!   only for the first window; we sum per-token nlls instead (same tokens scored).
//!
//! `PPL = exp(mean nll)`, with llama.cpp's standard error ([`NllStats::ppl_stderr`]).

use std::ops::Range;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::model::{KvCache, Llama};
use crate::{Error, Result};

/// How the stream is cut into windows and which positions are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// llama.cpp's independent chunks, second half scored.
    LlamaCpp,
    /// HF's sliding window moving by `stride` tokens.
    SlidingWindow { stride: usize },
}

impl Protocol {
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::LlamaCpp => "llama.cpp",
            Protocol::SlidingWindow { .. } => "sliding-window",
        }
    }
}

/// One forward: `tokens[start .. start + len]`. The logits of window position `i - 1` predict
/// window token `i`, so `scored.start >= 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
    /// Window-local indices of the tokens whose nll counts.
    pub scored: Range<usize>,
}

/// The windows of `protocol` over `n_tokens` tokens with a context of `ctx`.
pub fn windows(protocol: Protocol, n_tokens: usize, ctx: usize) -> Result<Vec<Window>> {
    match protocol {
        Protocol::LlamaCpp => {
            // ctx - ctx/2 - 1 scored tokens per chunk must be at least one.
            if ctx < 3 {
                return Err(Error::Input(format!(
                    "context of {ctx} tokens is too small (at least 3)"
                )));
            }
            if n_tokens < 2 * ctx {
                return Err(Error::Input(format!(
                    "the text has {n_tokens} tokens; llama.cpp's protocol needs at least 2 * ctx = {} \
                     (use a smaller -c)",
                    2 * ctx
                )));
            }
            let first = ctx / 2;
            Ok((0..n_tokens / ctx)
                .map(|i| Window {
                    start: i * ctx,
                    len: ctx,
                    scored: first + 1..ctx,
                })
                .collect())
        }
        Protocol::SlidingWindow { stride } => {
            if ctx < 2 {
                return Err(Error::Input(format!(
                    "context of {ctx} tokens is too small (at least 2)"
                )));
            }
            if stride == 0 || stride > ctx {
                return Err(Error::Input(format!(
                    "stride {stride} must be between 1 and the context ({ctx}); a larger stride \
                     would skip tokens"
                )));
            }
            if n_tokens < 2 {
                return Err(Error::Input(format!(
                    "the text has {n_tokens} tokens; at least 2 are needed"
                )));
            }
            // transformers docs: for begin in range(0, n, stride): end = min(begin + ctx, n);
            // trg_len = end - prev_end; score the last trg_len tokens; stop when end == n.
            let mut out = Vec::new();
            let mut prev_end = 0;
            for start in (0..n_tokens).step_by(stride) {
                let end = (start + ctx).min(n_tokens);
                let len = end - start;
                let trg_len = end - prev_end;
                let scored = (len - trg_len).max(1)..len;
                // A last window of one token after a stride of ctx scores nothing (its token
                // has no context in it): HF's loop would add a NaN loss; skip it.
                if !scored.is_empty() {
                    out.push(Window { start, len, scored });
                }
                prev_end = end;
                if end == n_tokens {
                    break;
                }
            }
            Ok(out)
        }
    }
}

/// Running sums of per-token negative log-likelihoods (natural log).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllStats {
    pub sum: f64,
    pub sum_sq: f64,
    pub count: usize,
}

impl NllStats {
    pub fn push(&mut self, nll: f64) {
        self.sum += nll;
        self.sum_sq += nll * nll;
        self.count += 1;
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }

    pub fn ppl(&self) -> f64 {
        self.mean().exp()
    }

    /// llama.cpp's standard error of the PPL (delta method on the mean nll):
    /// `ppl * sqrt((E[nll²] - E[nll]²) / (n - 1))`. None with fewer than two tokens or a
    /// variance that rounds to zero or below (llama.cpp prints an error then).
    pub fn ppl_stderr(&self) -> Option<f64> {
        if self.count < 2 {
            return None;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        (var > 0.0).then(|| self.ppl() * (var / (n - 1.0)).sqrt())
    }
}

/// `-log softmax(logits)[target]` the way llama.cpp's `log_softmax` computes it: f32 max and
/// `exp`, the sum in f64.
pub fn token_nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    let logit = logits
        .get(target as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    f64::from(max - logit) + sum.ln()
}

#[derive(Clone, Debug)]
pub struct PerplexityOptions {
    pub protocol: Protocol,
    /// Window length in tokens (`-c`).
    pub ctx: usize,
    /// Windows per forward (B); only windows of the same shape share a forward.
    pub batch: usize,
    /// Written over the first token of each llama.cpp chunk: the model's BOS when it adds one
    /// (`llama_vocab_get_add_bos`), else None. Unused by the sliding window.
    pub bos: Option<u32>,
    /// Evaluate only the first N windows (llama.cpp `--chunks`).
    pub max_windows: Option<usize>,
}

/// Where an evaluation stands, passed to the progress callback after each forward.
#[derive(Clone, Debug)]
pub struct Progress {
    pub windows_done: usize,
    pub windows_total: usize,
    /// Tokens run through the model so far / in all.
    pub tokens_done: usize,
    pub tokens_total: usize,
    pub stats: NllStats,
    pub elapsed: Duration,
}

/// The result, as `llama3 perplexity --json` prints it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub protocol: String,
    pub ctx: usize,
    /// None for llama.cpp's protocol (its chunks do not overlap).
    pub stride: Option<usize>,
    /// Tokens in the text.
    pub n_tokens: usize,
    pub n_windows: usize,
    /// Tokens run through the model (overlapping windows count their overlap again).
    pub n_evaluated: usize,
    pub n_scored: usize,
    pub nll_mean: f64,
    pub ppl: f64,
    pub ppl_stderr: Option<f64>,
    pub seconds: f64,
    /// `n_evaluated / seconds`.
    pub tokens_per_second: f64,
}

/// The windows [`perplexity`] will run for `n_tokens` tokens: [`windows`] checked against the
/// model's context and cut to `max_windows`. Lets a caller report errors and sizes up front.
pub fn plan(model: &Llama, n_tokens: usize, opts: &PerplexityOptions) -> Result<Vec<Window>> {
    let max_ctx = model.config.max_position_embeddings;
    if opts.ctx > max_ctx {
        return Err(Error::Input(format!(
            "context of {} tokens exceeds the model's {max_ctx}",
            opts.ctx
        )));
    }
    let mut wins = windows(opts.protocol, n_tokens, opts.ctx)?;
    if let Some(m) = opts.max_windows {
        if m == 0 {
            return Err(Error::Input("at least one chunk must be evaluated".into()));
        }
        wins.truncate(m);
    }
    Ok(wins)
}

/// Perplexity of `tokens` (already tokenized, BOS included if the model adds one). Each batch
/// of windows runs from an empty KV cache (f16 for quantized models, as llama.cpp's default),
/// and the LM head runs only on the positions whose logits are scored (llama.cpp likewise asks
/// logits only for `pos >= first`).
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Report> {
    let wins = plan(model, tokens.len(), opts)?;
    let vocab = model.config.vocab_size;
    let batch = opts.batch.max(1);
    let tokens_total: usize = wins.iter().map(|w| w.len).sum();
    let start_time = Instant::now();
    let mut stats = NllStats::default();
    let mut cache: Option<(usize, KvCache)> = None;
    let (mut done, mut tokens_done) = (0, 0);
    while done < wins.len() {
        // Consecutive windows of the same shape, up to `batch` of them.
        let w0 = &wins[done];
        let b = wins[done..]
            .iter()
            .take(batch)
            .take_while(|w| w.len == w0.len && w.scored == w0.scored)
            .count();
        let group = &wins[done..done + b];
        let (len, scored) = (w0.len, w0.scored.clone());
        let mut ids = Vec::with_capacity(b * len);
        let mut targets = Vec::with_capacity(b * scored.len());
        for w in group {
            let at = ids.len();
            ids.extend_from_slice(&tokens[w.start..w.start + len]);
            if let (Protocol::LlamaCpp, Some(bos)) = (opts.protocol, opts.bos) {
                ids[at] = bos;
            }
            targets.extend_from_slice(&tokens[w.start + scored.start..w.start + scored.end]);
        }
        let kv = match &mut cache {
            Some((cb, c)) if *cb == b => c,
            _ => &mut cache.insert((b, model.new_cache(b, opts.ctx)?)).1,
        };
        kv.truncate(0);
        let ids = Tensor::from_vec(ids, (b, len), model.device())?;
        let hidden = model.forward_hidden(&ids, Some(kv))?; // (B, T, D)
        let hidden = hidden
            .narrow(1, scored.start - 1, scored.len())?
            .contiguous()?;
        let logits = model.lm_head.forward(&hidden)?; // (B, scored, V)
        let logits = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let nlls: Vec<f64> = logits
            .par_chunks(vocab)
            .zip(targets.par_iter())
            .map(|(row, &t)| token_nll(row, t))
            .collect();
        // Summed in order so the result does not depend on the thread count.
        nlls.into_iter().for_each(|nll| stats.push(nll));
        done += b;
        tokens_done += b * len;
        on_progress(&Progress {
            windows_done: done,
            windows_total: wins.len(),
            tokens_done,
            tokens_total,
            stats,
            elapsed: start_time.elapsed(),
        });
    }
    let seconds = start_time.elapsed().as_secs_f64();
    Ok(Report {
        protocol: opts.protocol.name().into(),
        ctx: opts.ctx,
        stride: match opts.protocol {
            Protocol::LlamaCpp => None,
            Protocol::SlidingWindow { stride } => Some(stride),
        },
        n_tokens: tokens.len(),
        n_windows: wins.len(),
        n_evaluated: tokens_done,
        n_scored: stats.count,
        nll_mean: stats.mean(),
        ppl: stats.ppl(),
        ppl_stderr: stats.ppl_stderr(),
        seconds,
        tokens_per_second: tokens_done as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored_global(ws: &[Window]) -> Vec<usize> {
        ws.iter()
            .flat_map(|w| w.scored.clone().map(move |i| w.start + i))
            .collect()
    }

    #[test]
    fn llamacpp_chunks_score_second_half() {
        let ws = windows(Protocol::LlamaCpp, 2047, 512).unwrap();
        assert_eq!(ws.len(), 3); // 2047 / 512, the tail of 511 dropped
        for (i, w) in ws.iter().enumerate() {
            assert_eq!((w.start, w.len, w.scored.clone()), (i * 512, 512, 257..512));
        }
        assert_eq!(scored_global(&ws).len(), 3 * 255);
        // Tiny: ctx 4 -> first 2, scored token 3 only (logits of position 2).
        let ws = windows(Protocol::LlamaCpp, 9, 4).unwrap();
        assert_eq!(scored_global(&ws), vec![3, 7]);
        // Odd ctx: first = 2, scored 3..5.
        let ws = windows(Protocol::LlamaCpp, 10, 5).unwrap();
        assert_eq!(scored_global(&ws), vec![3, 4, 8, 9]);
        // The held-out text: 78,227 tokens -> 152 chunks, 38,760 scored.
        let ws = windows(Protocol::LlamaCpp, 78_227, 512).unwrap();
        assert_eq!((ws.len(), scored_global(&ws).len()), (152, 152 * 255));
    }

    #[test]
    fn llamacpp_needs_two_contexts() {
        assert!(windows(Protocol::LlamaCpp, 1023, 512).is_err());
        assert!(windows(Protocol::LlamaCpp, 1024, 512).is_ok());
        assert!(windows(Protocol::LlamaCpp, 100, 2).is_err());
    }

    #[test]
    fn sliding_window_hand_example() {
        // n 10, ctx 4, stride 2: windows [0,4) [2,6) [4,8) [6,10).
        let ws = windows(Protocol::SlidingWindow { stride: 2 }, 10, 4).unwrap();
        let got: Vec<_> = ws
            .iter()
            .map(|w| (w.start, w.len, w.scored.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(0, 4, 1..4), (2, 4, 2..4), (4, 4, 2..4), (6, 4, 2..4)]
        );
        // Last window shorter and scoring fewer than stride: n 11 -> [8,11) scores token 10.
        let ws = windows(Protocol::SlidingWindow { stride: 2 }, 11, 4).unwrap();
        assert_eq!(
            ws.last().map(|w| (w.start, w.len, w.scored.clone())),
            Some((8, 3, 2..3))
        );
        // stride == ctx: disjoint chunks, whose first token has nothing before it in its window
        // and goes unscored (the docs' "suboptimal, non-sliding-window strategy").
        let ws = windows(Protocol::SlidingWindow { stride: 4 }, 10, 4).unwrap();
        let got: Vec<_> = ws
            .iter()
            .map(|w| (w.start, w.len, w.scored.clone()))
            .collect();
        assert_eq!(got, vec![(0, 4, 1..4), (4, 4, 1..4), (8, 2, 1..2)]);
        // ... and a one-token tail window, which would score nothing, is left out.
        let ws = windows(Protocol::SlidingWindow { stride: 4 }, 9, 4).unwrap();
        assert_eq!(ws.last().map(|w| w.start), Some(4));
    }

    #[test]
    fn sliding_window_scores_every_token_once() {
        for n in [2, 3, 7, 16, 17, 100] {
            for ctx in [2, 3, 5, 8, 16, 200] {
                for stride in 1..=ctx {
                    let ws = windows(Protocol::SlidingWindow { stride }, n, ctx).unwrap();
                    // stride < ctx: every token but the first, once; stride == ctx: all but
                    // each chunk's first.
                    let want: Vec<usize> =
                        (1..n).filter(|i| stride < ctx || i % ctx != 0).collect();
                    assert_eq!(scored_global(&ws), want, "{n} {ctx} {stride}");
                    for w in &ws {
                        assert!(!w.scored.is_empty());
                        assert!(w.len <= ctx && w.scored.start >= 1 && w.scored.end == w.len);
                        // Each scored token sees at least ctx - stride tokens (or all before it).
                        let seen = w.scored.start;
                        assert!(seen >= (ctx - stride).min(w.start + seen));
                    }
                }
            }
        }
        assert!(windows(Protocol::SlidingWindow { stride: 5 }, 10, 4).is_err());
        assert!(windows(Protocol::SlidingWindow { stride: 0 }, 10, 4).is_err());
        assert!(windows(Protocol::SlidingWindow { stride: 1 }, 1, 4).is_err());
    }

    #[test]
    fn stderr_formula() {
        let mut s = NllStats::default();
        for x in [1.0, 2.0, 3.0] {
            s.push(x);
        }
        let e2 = 2f64.exp();
        assert!((s.ppl() - e2).abs() < 1e-12);
        // var = 14/3 - 4 = 2/3; / (n - 1) = 1/3.
        let want = e2 * (1.0f64 / 3.0).sqrt();
        assert!((s.ppl_stderr().unwrap() - want).abs() < 1e-12);
        let mut one = NllStats::default();
        one.push(1.0);
        assert_eq!(one.ppl_stderr(), None);
        one.push(1.0);
        assert_eq!(one.ppl_stderr(), None); // zero variance
    }

    #[test]
    fn token_nll_of_known_distribution() {
        let uniform = [0.5f32; 4];
        assert!((token_nll(&uniform, 2) - 4f64.ln()).abs() < 1e-12);
        let p = [0.4f32, 0.3, 0.2, 0.1];
        let logits: Vec<f32> = p.iter().map(|x| x.ln() + 1000.0).collect();
        for (i, pi) in p.iter().enumerate() {
            assert!((token_nll(&logits, i as u32) + f64::from(*pi).ln()).abs() < 1e-4);
        }
    }
}
