//! Preference tuning: DPO (Rafailov et al. 2023) and the variants TRL's `DPOTrainer` names
//! `sigmoid` (DPO), `hinge`, `ipo` and `robust`, on JSONL pairs `{"prompt", "chosen",
//! "rejected"}`: plain strings (EOS ends each answer) or chat message lists rendered with the
//! chat template. A pair's log-probability is the sum over its answer's tokens; the reference's
//! comes from the model as training found it (adapters and virtual tokens off: the base model
//! under LoRA, a frozen copy under full training), computed beside each micro-batch. The loss
//! of a step is the mean over its pairs (over all ranks); rewards `beta (log p - log p_ref)`,
//! their accuracy (chosen above rejected) and margin are logged as TRL logs them.
//!
//! Dims: K pairs per micro-batch, R = 2K rows (the K chosen, then the K rejected), T tokens.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use llama3::tokenizer::{Message, Tokenizer};
use llama3::Llama;
use serde::{Deserialize, Serialize};

use crate::batches::{held_out_count, Dataset, HeldOut};
use crate::loss::{counted_positions, head_chunks, IGNORE_INDEX};
use crate::metrics::Rewards;
use crate::{Error, Result};

/// TRL's `loss_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    /// DPO: `-log sigmoid(beta d)`, d the chosen-minus-rejected log-ratio.
    #[default]
    Sigmoid,
    /// SLiC: `relu(1 - beta d)`.
    Hinge,
    /// IPO: `(d' - 1 / (2 beta))^2`, d' from per-token averaged log-ratios.
    Ipo,
    /// Robust DPO (Chowdhury et al.): noisy labels with `label_smoothing`.
    Robust,
}

impl std::str::FromStr for DpoLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sigmoid" => Ok(DpoLoss::Sigmoid),
            "hinge" => Ok(DpoLoss::Hinge),
            "ipo" => Ok(DpoLoss::Ipo),
            "robust" => Ok(DpoLoss::Robust),
            _ => Err(format!(
                "unknown DPO loss type {s:?} (expected sigmoid, hinge, ipo or robust)"
            )),
        }
    }
}

/// What the loss needs of the run's settings.
#[derive(Clone, Copy, Debug)]
pub struct DpoSettings {
    pub beta: f64,
    pub loss: DpoLoss,
    pub label_smoothing: f64,
}

/// One pair, tokenized as TRL tokenizes it: the prompt, and each answer as the part of
/// `prompt + answer` after the prompt (EOS appended to plain-text answers).
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    Plain(String),
    Chat(Vec<Message>),
}

/// Whether `path` holds preference pairs: a JSONL whose first line has `chosen`.
pub fn is_pair_file(path: &Path) -> bool {
    crate::sft::first_jsonl_line(path)
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .is_some_and(|v| v.get("chosen").is_some())
}

/// Reads and tokenizes every pair of `files`. A pair whose prompt alone fills `max_len` is
/// dropped (TRL drops them); longer ones are cut to `max_len` tokens. Returns the pairs and
/// how many were dropped. A line that is not a pair is an error naming the file and line.
pub fn load(files: &[PathBuf], tok: &Tokenizer, max_len: usize) -> Result<(Vec<Pair>, usize)> {
    let (mut out, mut dropped) = (Vec::new(), 0);
    for file in files {
        let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| Error::io(file, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let at = |m: String| Error::format(file, format!("line {}: {m}", n + 1));
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| at(format!("not JSON: {e}")))?;
            let field = |k: &str| -> Result<Text> {
                let x = v.get(k).ok_or_else(|| {
                    at(format!(
                        "a preference pair needs \"prompt\", \"chosen\" and \"rejected\"; \
                         no {k:?}"
                    ))
                })?;
                serde_json::from_value(x.clone()).map_err(|_| {
                    at(format!(
                        "{k:?} must be a string or a list of {{\"role\", \"content\"}} messages"
                    ))
                })
            };
            let (p, c, r) = (field("prompt")?, field("chosen")?, field("rejected")?);
            let pair = tokenize(tok, &p, &c, &r).map_err(|e| at(e.to_string()))?;
            if pair.prompt.len() >= max_len {
                dropped += 1;
                continue;
            }
            out.push(pair);
        }
    }
    Ok((out, dropped))
}

/// TRL's `tokenize_fn`: the answer starts where `prompt` and `prompt + answer` tokenized part.
fn tokenize(tok: &Tokenizer, prompt: &Text, chosen: &Text, rejected: &Text) -> Result<Pair> {
    let (p, c, r) = match (prompt, chosen, rejected) {
        (Text::Plain(p), Text::Plain(c), Text::Plain(r)) => {
            let enc = |s: &str, eos: bool| -> Result<Vec<u32>> {
                let mut ids = tok.encode(s, true, true)?;
                if eos {
                    ids.extend(tok.eos_id());
                }
                Ok(ids)
            };
            (
                enc(p, false)?,
                enc(&format!("{p}{c}"), true)?,
                enc(&format!("{p}{r}"), true)?,
            )
        }
        (Text::Chat(p), Text::Chat(c), Text::Chat(r)) => {
            let with = |a: &[Message]| [p.as_slice(), a].concat();
            (
                tok.encode_chat(p, true)?,
                tok.encode_chat(&with(c), false)?,
                tok.encode_chat(&with(r), false)?,
            )
        }
        _ => {
            return Err(Error::Input(
                "prompt, chosen and rejected must all be strings or all message lists".into(),
            ))
        }
    };
    let common = |a: &[u32]| p.iter().zip(a).take_while(|(x, y)| x == y).count();
    let n = common(&c).min(common(&r));
    Ok(Pair {
        prompt: p[..n].to_vec(),
        chosen: c[n..].to_vec(),
        rejected: r[n..].to_vec(),
    })
}

/// Pairs as a dataset: rows `idx` give 2K rows, the chosen then the rejected, right-padded
/// with `pad`, labels on the answers only; cut at `max_len` tokens.
pub struct Pairs {
    pub pairs: Vec<Pair>,
    pub pad: u32,
    pub max_len: usize,
}

impl HeldOut for Pairs {
    fn split(mut self, fraction: f64) -> (Pairs, Option<Pairs>) {
        let n = self.pairs.len();
        let Some(k) = held_out_count(n, fraction) else {
            return (self, None);
        };
        let pairs = self.pairs.split_off(n - k);
        let (pad, max_len) = (self.pad, self.max_len);
        (
            self,
            Some(Pairs {
                pairs,
                pad,
                max_len,
            }),
        )
    }
}

impl Dataset for Pairs {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let rows: Vec<(&[u32], &[u32])> = [false, true]
            .iter()
            .flat_map(|&rejected| {
                idx.iter().map(move |&i| {
                    let p = &self.pairs[i];
                    (
                        p.prompt.as_slice(),
                        if rejected { &p.rejected } else { &p.chosen }.as_slice(),
                    )
                })
            })
            .collect();
        let len = |(p, a): &(&[u32], &[u32])| (p.len() + a.len()).min(self.max_len);
        let t = rows.iter().map(len).max().unwrap_or(1);
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        for row in &rows {
            let (p, a) = row;
            let n = len(row);
            ids.extend(p.iter().chain(a.iter()).take(n));
            ids.extend(std::iter::repeat_n(self.pad, t - n));
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, p.len().min(n)));
            labels.extend(a.iter().take(n.saturating_sub(p.len())).map(|&i| i as i64));
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, t - n));
        }
        let r = rows.len();
        let ids = Tensor::from_vec(ids, (r, t), device)?;
        let labels = Tensor::from_vec(labels, (r, t), device)?.to_dtype(DType::I64)?;
        Ok((ids, labels))
    }

    fn unit(&self) -> String {
        "preference pairs".into()
    }
}

/// The reference policy: `model` as training finds it, with adapters and virtual tokens
/// off and no gradients (what TRL's `ref_model` or disabled adapters give). Shares the
/// weights' storage; full training swaps the trained weights for copies, so this keeps the
/// initial ones.
pub fn reference(model: &Llama) -> Llama {
    let mut r = model.detached();
    for (_, lin) in r.linears_mut() {
        lin.lora.clear();
    }
    r.virtual_tokens = None;
    r
}

/// Each row's summed log-probability of its counted labels (the answer's tokens), (R,), and
/// how many tokens each row counts.
pub fn row_logps(model: &Llama, ids: &Tensor, labels: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let (r, t) = ids.dims2()?;
    let (rows, targets) = counted_positions(ids, labels)?;
    let hidden = model.forward_hidden(ids, None)?.reshape((r * t, ()))?; // (R*T, D)
    let mut sums = Vec::with_capacity(r);
    let mut counts = Vec::with_capacity(r);
    for row in 0..r {
        let range = (row * t) as u32..((row + 1) * t) as u32;
        let pick: Vec<usize> = (0..rows.len())
            .filter(|&i| range.contains(&rows[i]))
            .collect();
        let (rs, ts): (Vec<u32>, Vec<u32>) = pick.iter().map(|&i| (rows[i], targets[i])).unzip();
        counts.push(rs.len());
        let mut ce = hidden.zeros_like()?.sum_all()?.to_dtype(DType::F32)?;
        if !rs.is_empty() {
            for part in head_chunks(model, &hidden, &rs, &ts) {
                ce = (ce + part?)?;
            }
        }
        sums.push(ce.neg()?);
    }
    Ok((Tensor::stack(&sums, 0)?, counts))
}

/// Sums over a micro-batch's pairs, for the log (summed over micro-batches and ranks).
#[derive(Clone, Copy, Debug, Default)]
pub struct PairSums {
    pub pairs: f64,
    pub correct: f64,
    pub chosen: f64,
    pub rejected: f64,
}

impl PairSums {
    pub fn add(&mut self, o: &PairSums) {
        self.pairs += o.pairs;
        self.correct += o.correct;
        self.chosen += o.chosen;
        self.rejected += o.rejected;
    }

    pub fn as_array(&self) -> [f64; 4] {
        [self.pairs, self.correct, self.chosen, self.rejected]
    }

    pub fn from_array(a: [f64; 4]) -> Self {
        Self {
            pairs: a[0],
            correct: a[1],
            chosen: a[2],
            rejected: a[3],
        }
    }

    /// TRL's `rewards/*` means.
    pub fn rewards(&self) -> Rewards {
        let n = self.pairs.max(1.0);
        Rewards {
            accuracy: self.correct / n,
            margin: (self.chosen - self.rejected) / n,
            chosen: self.chosen / n,
            rejected: self.rejected / n,
        }
    }
}

/// The summed loss of the pairs of `policy` (R,) log-probabilities (with gradients) against
/// the reference's `reference` (R,), `counts` tokens per row (IPO's averages).
pub fn pair_loss_sum(
    policy: &Tensor,
    reference: &[f64],
    counts: &[usize],
    s: &DpoSettings,
) -> Result<(Tensor, PairSums)> {
    let r = policy.dim(0)?;
    let k = r / 2;
    if r != 2 * k || reference.len() != r || counts.len() != r || k == 0 {
        return Err(Error::Input(format!(
            "DPO: {r} policy rows, {} reference rows: expected 2 per pair",
            reference.len()
        )));
    }
    let dev = policy.device();
    let vec = |v: Vec<f64>| -> Result<Tensor> { Ok(Tensor::new(v, dev)?.to_dtype(DType::F32)?) };
    let (pc, pr) = (policy.narrow(0, 0, k)?, policy.narrow(0, k, k)?);
    let (rc, rr) = (vec(reference[..k].to_vec())?, vec(reference[k..].to_vec())?);
    let chosen_ratio = (&pc - &rc)?; // (K,)
    let rejected_ratio = (&pr - &rr)?;
    let beta = s.beta;
    // softplus(x) = log(1 + e^x), stable: max(x, 0) + log(1 + e^-|x|).
    let softplus = |x: &Tensor| -> Result<Tensor> {
        Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
    };
    let d = (&chosen_ratio - &rejected_ratio)?;
    let losses = match s.loss {
        DpoLoss::Sigmoid => softplus(&(&d * -beta)?)?,
        DpoLoss::Hinge => ((&d * -beta)? + 1.0)?.relu()?,
        DpoLoss::Ipo => {
            let per = |ratio: &Tensor, lens: &[usize]| -> Result<Tensor> {
                let l: Vec<f64> = lens.iter().map(|&n| n.max(1) as f64).collect();
                Ok(ratio.div(&vec(l)?)?)
            };
            let d = (per(&chosen_ratio, &counts[..k])? - per(&rejected_ratio, &counts[k..])?)?;
            (d - 1.0 / (2.0 * beta))?.sqr()?
        }
        DpoLoss::Robust => {
            let ls = s.label_smoothing;
            let clean = (softplus(&(&d * -beta)?)? * (1.0 - ls))?;
            let flipped = (softplus(&(&d * beta)?)? * ls)?;
            ((clean - flipped)? / (1.0 - 2.0 * ls))?
        }
    };
    let values = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?) };
    let (cr, rr) = (values(&chosen_ratio)?, values(&rejected_ratio)?);
    let mut sums = PairSums {
        pairs: k as f64,
        ..Default::default()
    };
    for (c, r) in cr.iter().zip(&rr) {
        let (c, r) = (beta * c, beta * r);
        sums.correct += (c > r) as u8 as f64;
        sums.chosen += c;
        sums.rejected += r;
    }
    Ok((losses.sum_all()?, sums))
}

/// The summed DPO loss of a micro-batch (`Pairs::batch` rows) and its pair sums.
pub fn loss_sum(
    policy: &Llama,
    reference: &Llama,
    ids: &Tensor,
    labels: &Tensor,
    s: &DpoSettings,
) -> Result<(Tensor, PairSums)> {
    let (logps, counts) = row_logps(policy, ids, labels)?;
    let (ref_logps, _) = row_logps(reference, ids, labels)?;
    let ref_logps = ref_logps.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    pair_loss_sum(&logps, &ref_logps, &counts, s)
}

/// The mean loss and the rewards over the held-out pairs (`cfg.eval_batches` batches, split
/// over the ranks as the language-model evaluation is).
pub fn evaluate(
    model: &Llama,
    reference: &Llama,
    valid: &dyn Dataset,
    cfg: &crate::config::TrainConfig,
    comm: &dyn crate::dist::Collective,
) -> Result<(f64, PairSums)> {
    let model = &model.detached();
    let s = cfg.dpo_settings();
    let device = model.device().clone();
    let (mut loss, mut sums) = (0f64, PairSums::default());
    let idx: Vec<usize> = (0..valid.len()).collect();
    let chunks = idx.chunks(cfg.batch_size).take(cfg.eval_batches.max(1));
    for (i, chunk) in chunks.enumerate() {
        if i % comm.size() != comm.rank() {
            continue;
        }
        let (ids, labels) = valid.batch(chunk, &device)?;
        let (l, p) = loss_sum(model, reference, &ids, &labels, &s)?;
        loss += l.to_scalar::<f32>()? as f64;
        sums.add(&p);
    }
    let [p0, p1, p2, p3] = sums.as_array();
    let mut all = [loss, p0, p1, p2, p3];
    comm.all_reduce_f64(&mut all)?;
    let sums = PairSums::from_array([all[1], all[2], all[3], all[4]]);
    Ok((all[0] / sums.pairs.max(1.0), sums))
}
