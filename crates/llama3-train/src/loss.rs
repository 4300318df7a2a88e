//! Causal-LM cross-entropy as HF `LlamaForCausalLM` computes it (`loss_utils.ForCausalLMLoss`):
//! logits in f32, position `t` predicts label `t + 1`, labels equal to -100 are not counted,
//! and the loss is the mean over counted positions.

use candle_core::{DType, Tensor};
use llama3::Llama;

use crate::{Error, Result};

/// Rows of (rows, V) logits alive at once in the loss (49152 x 256 f32 = 50 MB for SmolLM2).
pub const HEAD_ROWS: usize = 256;

/// Label value that is not counted (PyTorch `cross_entropy(ignore_index=-100)`).
pub const IGNORE_INDEX: i64 = -100;

/// Mean causal-LM loss of `model` on `ids` (B, T) u32 with `labels` (B, T) integer, as a
/// scalar tensor to call `backward` on. Errors when no label is counted (HF would give NaN).
pub fn causal_lm_loss(model: &Llama, ids: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (sum, n) = causal_lm_loss_sum(model, ids, labels)?;
    if n == 0 {
        return Err(Error::Input(
            "no counted labels: every label is -100 after the shift".into(),
        ));
    }
    Ok((sum / n as f64)?)
}

/// Summed causal-LM loss and the number of counted positions. Gradient accumulation divides
/// each micro-batch's sum by the count over the whole step, as HF's `num_items_in_batch` does,
/// so a step's loss is the mean over all its counted tokens whatever the micro-batching.
///
/// Only counted positions go through the head: (N, D) -> (N, V) instead of (B, T, V), which
/// is what makes chat fine-tuning with a large vocabulary fit in memory.
pub fn causal_lm_loss_sum(model: &Llama, ids: &Tensor, labels: &Tensor) -> Result<(Tensor, usize)> {
    let (b, t) = ids.dims2()?;
    let (rows, targets) = counted_positions(ids, labels)?;
    let hidden = model.forward_hidden(ids, None)?; // (B, T, D)
    if rows.is_empty() {
        return Ok((hidden.zeros_like()?.sum_all()?.to_dtype(DType::F32)?, 0));
    }
    let n = rows.len();
    // The head and the loss HEAD_ROWS rows at a time: without a graph (evaluation) the (N, V)
    // logits never exist at once.
    let mut total: Option<Tensor> = None;
    for part in head_chunks(model, &hidden.reshape((b * t, ()))?, &rows, &targets) {
        let part = part?;
        total = Some(match total {
            None => part,
            Some(acc) => (acc + part)?,
        });
    }
    match total {
        Some(sum) => Ok((sum, n)),
        None => Err(Error::Input("no counted labels".into())),
    }
}

/// Summed cross-entropy of `rows` of `hidden` (B*T, D) through the head against `targets`;
/// `hidden` is after the final norm. Where the head fuses with the loss
/// (`llama3::ops::loss`: logits never held whole, gradients in the same pass) one item; any
/// other head HEAD_ROWS rows per item through candle's ops.
pub fn head_chunks<'a>(
    model: &'a Llama,
    hidden: &'a Tensor,
    rows: &'a [u32],
    targets: &'a [u32],
) -> Box<dyn Iterator<Item = Result<Tensor>> + 'a> {
    let select = move |r: &[u32]| -> Result<Tensor> {
        Ok(hidden.index_select(&Tensor::new(r, hidden.device())?, 0)?) // (n, D)
    };
    let fused = || -> Result<Option<Tensor>> {
        let h = select(rows)?;
        Ok(model.lm_head.cross_entropy_sum(&h, targets)?)
    };
    match fused() {
        Ok(None) => {}
        Ok(Some(sum)) => return Box::new(std::iter::once(Ok(sum))),
        Err(e) => return Box::new(std::iter::once(Err(e))),
    }
    Box::new(
        rows.chunks(HEAD_ROWS)
            .zip(targets.chunks(HEAD_ROWS))
            .map(move |(r, tg)| {
                let logits = model.lm_head.forward(&select(r)?)?; // (n, V)
                cross_entropy_sum(&logits, &Tensor::new(tg, hidden.device())?)
            }),
    )
}

/// The flat rows of `ids` (B, T) whose next label is counted, and those labels (see
/// [`shifted_targets`]); `labels` must have the shape of `ids`.
pub fn counted_positions(ids: &Tensor, labels: &Tensor) -> Result<(Vec<u32>, Vec<u32>)> {
    let (b, t) = ids.dims2()?;
    if labels.dims() != [b, t] {
        return Err(Error::Input(format!(
            "labels have shape {:?}, input ids {:?}",
            labels.dims(),
            ids.dims()
        )));
    }
    shifted_targets(
        &labels.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?,
        b,
        t,
    )
}

/// How many positions of labels (B, T) are counted after the shift: the divisor of a step's
/// summed loss when it is split into micro-batches.
pub fn counted_labels(labels: &Tensor) -> Result<usize> {
    let (b, t) = labels.dims2()?;
    let labels = labels
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    Ok(shifted_targets(&labels, b, t)?.0.len())
}

/// For labels (B*T) row-major: the flat rows `b*T + t` whose next label `t + 1` is counted,
/// and those labels. Checks labels are ids or -100.
pub fn shifted_targets(labels: &[i64], b: usize, t: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for bi in 0..b {
        for ti in 0..t.saturating_sub(1) {
            let l = labels[bi * t + ti + 1];
            if l == IGNORE_INDEX {
                continue;
            }
            let id = u32::try_from(l).map_err(|_| {
                Error::Input(format!(
                    "label {l} at ({bi}, {}) is not a token id or -100",
                    ti + 1
                ))
            })?;
            rows.push((bi * t + ti) as u32);
            targets.push(id);
        }
    }
    Ok((rows, targets))
}

/// Summed cross-entropy of logits (N, V) against targets (N) u32, in f32
/// (`llama3::ops::loss::cross_entropy_sum`).
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(llama3::ops::loss::cross_entropy_sum(logits, targets)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shift_skips_ignored_and_last() {
        // B=1, T=4: labels [5, -100, 7, 8] -> rows 1 (predicts 7) and 2 (predicts 8).
        let (rows, targets) = shifted_targets(&[5, -100, 7, 8], 1, 4).unwrap();
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(targets, vec![7, 8]);
        assert!(shifted_targets(&[5, -3], 1, 2).is_err());
    }

    #[test]
    fn cross_entropy_of_uniform_is_log_v() {
        let logits = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let t = Tensor::new(&[0u32, 1, 3], &Device::Cpu).unwrap();
        let s = cross_entropy_sum(&logits, &t)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((s - 3.0 * 4f32.ln()).abs() < 1e-6);
        let t = Tensor::new(&[0u32, 1, 4], &Device::Cpu).unwrap();
        assert!(cross_entropy_sum(&logits, &t).is_err());
    }
}
