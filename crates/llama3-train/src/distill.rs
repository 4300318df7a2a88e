//! Knowledge distillation (Hinton et al. 2015), as `llama3 train --teacher MODEL`: on the
//! same tokens, the loss is `(1 - α) CE(student, labels) + α T² KL(p_T || q_T)` with
//! `p_T = softmax(teacher logits / T)` and `q_T = softmax(student logits / T)`, summed over
//! the counted positions (those the cross-entropy counts) and divided by their number as the
//! plain loss is. The teacher's logits are computed on the fly, without a graph. Dim legend:
//! `N` counted positions (a chunk of them), `V` vocab.

use std::path::Path;

use candle_core::{DType, Tensor, D};
use llama3::tokenizer::Tokenizer;
use llama3::Llama;

use crate::loss::{counted_positions, cross_entropy_sum, HEAD_ROWS};
use crate::{Error, Result};

/// The teacher and the loss's weights.
pub struct Teacher {
    pub model: Llama,
    /// Weight of the KL term (`--kd-alpha`); the cross-entropy gets `1 - alpha`.
    pub alpha: f64,
    /// Softmax temperature of both distributions (`--kd-temperature`).
    pub temperature: f64,
}

impl Teacher {
    /// Loads `path` (HF directory or GGUF) as the teacher of a student with `vocab` tokens
    /// and tokenizer `tok`: an error when their vocabularies differ.
    pub fn load(
        path: &Path,
        vocab: usize,
        tok: &Tokenizer,
        alpha: f64,
        temperature: f64,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let opts = llama3::loader::LoadOptions {
            dtype: DType::F32,
            device: device.clone(),
            progress: None,
            tokenizer: true,
        };
        let loaded = llama3::loader::load(path, &opts)?;
        let theirs = loaded.model.config.vocab_size;
        let probe = "Hello, world! 123 déjà vu";
        let same_tok = match &loaded.tokenizer {
            Some(t) => t.encode(probe, true, true)? == tok.encode(probe, true, true)?,
            None => true,
        };
        if theirs != vocab || !same_tok {
            return Err(Error::Input(format!(
                "--teacher {}: its vocabulary ({theirs} tokens{}) is not the student's ({vocab}); \
                 distillation compares their distributions token by token",
                path.display(),
                if same_tok { "" } else { ", another tokenizer" }
            )));
        }
        Ok(Self {
            model: loaded.model,
            alpha,
            temperature,
        })
    }
}

/// Summed distillation loss of `student` on `ids` (B, T) with `labels` (B, T), and the number
/// of counted positions (see `loss::causal_lm_loss_sum`, whose positions it uses).
pub fn loss_sum(
    student: &Llama,
    teacher: &Teacher,
    ids: &Tensor,
    labels: &Tensor,
) -> Result<(Tensor, usize)> {
    let (b, t) = ids.dims2()?;
    let (rows, targets) = counted_positions(ids, labels)?;
    let hidden = student.forward_hidden(ids, None)?.reshape((b * t, ()))?; // (B*T, D)
    if rows.is_empty() {
        return Ok((hidden.zeros_like()?.sum_all()?.to_dtype(DType::F32)?, 0));
    }
    let teacher_hidden = teacher
        .model
        .forward_hidden(ids, None)?
        .reshape((b * t, ()))?
        .detach();
    let mut total: Option<Tensor> = None;
    for (r, tg) in rows.chunks(HEAD_ROWS).zip(targets.chunks(HEAD_ROWS)) {
        let idx = Tensor::new(r, ids.device())?;
        let s = student.lm_head.forward(&hidden.index_select(&idx, 0)?)?; // (N, V)
        let th = teacher_hidden.index_select(&idx, 0)?;
        let tl = teacher.model.lm_head.forward(&th)?.detach(); // (N, V)
        let targets = Tensor::new(tg, ids.device())?;
        let part = kd_sum(&s, &tl, &targets, teacher.alpha, teacher.temperature)?;
        total = Some(match total {
            None => part,
            Some(acc) => (acc + part)?,
        });
    }
    match total {
        Some(sum) => Ok((sum, rows.len())),
        None => Err(Error::Input("no counted labels".into())),
    }
}

/// `(1 - α) Σ CE(s, targets) + α T² Σ KL(softmax(t/T) || softmax(s/T))` over the rows of
/// student logits `s` (N, V) and teacher logits `t` (N, V).
pub fn kd_sum(s: &Tensor, t: &Tensor, targets: &Tensor, alpha: f64, temp: f64) -> Result<Tensor> {
    let s = s.to_dtype(DType::F32)?;
    let ce = cross_entropy_sum(&s, targets)?;
    if alpha == 0.0 {
        return Ok(ce);
    }
    let log_q = log_softmax(&(&s / temp)?)?;
    let log_p = log_softmax(&(t.to_dtype(DType::F32)? / temp)?)?.detach();
    let kl = (log_p.exp()? * (&log_p - log_q)?)?.sum_all()?;
    Ok(((ce * (1.0 - alpha))? + (kl * (alpha * temp * temp))?)?)
}

/// Row-wise log-softmax of (N, V), differentiable: `x - max - log Σ exp(x - max)`.
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The loss equals a direct f64 evaluation of its formula.
    #[test]
    fn kd_sum_is_the_formula() {
        let (n, v) = (3, 5);
        let s: Vec<f32> = (0..n * v)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let t: Vec<f32> = (0..n * v)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 2.0)
            .collect();
        let targets = [1u32, 4, 0];
        let dev = Device::Cpu;
        let (alpha, temp) = (0.7, 2.0);
        let got = kd_sum(
            &Tensor::from_slice(&s, (n, v), &dev).unwrap(),
            &Tensor::from_slice(&t, (n, v), &dev).unwrap(),
            &Tensor::new(&targets, &dev).unwrap(),
            alpha,
            temp,
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
        let lsm = |x: &[f32], scale: f64| -> Vec<f64> {
            let y: Vec<f64> = x.iter().map(|&a| a as f64 / scale).collect();
            let m = y.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + y.iter().map(|a| (a - m).exp()).sum::<f64>().ln();
            y.iter().map(|a| a - lse).collect()
        };
        let mut want = 0.0;
        for r in 0..n {
            let (sr, tr) = (&s[r * v..(r + 1) * v], &t[r * v..(r + 1) * v]);
            let ce = -lsm(sr, 1.0)[targets[r] as usize];
            let (lq, lp) = (lsm(sr, temp), lsm(tr, temp));
            let kl: f64 = lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum();
            want += (1.0 - alpha) * ce + alpha * temp * temp * kl;
        }
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
}
