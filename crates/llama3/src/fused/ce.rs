//! The LM head and the cross-entropy in one op: hidden rows (N, D) and the head weight (V, D)
//! give `sum_i logsumexp(h_i W^T) - (h_i W^T)[target_i]` without the (N, V) logits ever
//! existing at once (`chunk_rows` rows at a time, one reused buffer). When gradients are wanted they
//! are computed in the same pass, as Liger's fused linear cross-entropy does: the chunk's
//! logits become `softmax - onehot` in place, then `dh = P W` and `dW += P^T h`; `bwd`
//! scales them by the upstream gradient. That saves the logits' forward graph (for a 32k
//! vocabulary and 2048 rows, ~15 passes over 262 MB) and a second head matmul.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;
use super::gemm::{gemm, Mat};
use crate::{Error, Result};

/// Rows of logits alive at once: about 64 MiB of them (512 rows of a 32k vocabulary, 130 of
/// Llama 3's 128k), at least 32; bigger chunks pack the head weight fewer times.
fn chunk_rows(v: usize) -> usize {
    ((16 << 20) / v.max(1)).clamp(32, 512)
}

/// Summed cross-entropy of `h` (N, D) through the head weight `w` (V, D) against `targets`
/// (N ids), as a scalar f32 tensor with gradients to `h` and to a trained `w`. None when the
/// weight or the rows are not f32 on the CPU (the caller takes the unfused path).
pub fn linear_cross_entropy_sum(w: &Tensor, h: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
    if w.dtype() != DType::F32 || h.dtype() != DType::F32 || !w.device().is_cpu() {
        return Ok(None);
    }
    let (n, d) = h.dims2()?;
    let (v, dw) = w.dims2()?;
    if d != dw || targets.len() != n {
        return Err(Error::Input(format!(
            "linear cross-entropy: hidden {:?}, head {:?}, {} targets",
            h.dims(),
            w.dims(),
            targets.len()
        )));
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        return Err(Error::Input(format!(
            "label {bad} is outside the vocabulary of {v} tokens"
        )));
    }
    let op = LinearCe {
        targets: targets.to_vec(),
        grad_h: h.track_op(),
        grad_w: w.track_op(),
        grads: Mutex::new(None),
    };
    Ok(Some(h.contiguous()?.apply_op2(&w.contiguous()?, op)?))
}

struct LinearCe {
    targets: Vec<u32>,
    grad_h: bool,
    grad_w: bool,
    /// dloss/dh (N, D) and dloss/dW (V, D) for an upstream gradient of 1, from the forward.
    grads: Mutex<Option<(Option<Tensor>, Option<Tensor>)>>,
}

impl CustomOp2 for LinearCe {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let (n, d) = l1.shape().dims2()?;
        let v = l2.shape().dims2()?.0;
        let mut dh = self.grad_h.then(|| vec![0f32; n * d]);
        let mut dw = self.grad_w.then(|| vec![0f32; v * d]);
        let loss = forward_backward(h, w, d, &self.targets, dh.as_deref_mut(), dw.as_deref_mut())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let dev = candle_core::Device::Cpu;
        let dh = dh.map(|g| Tensor::from_vec(g, (n, d), &dev)).transpose()?;
        let dw = dw.map(|g| Tensor::from_vec(g, (v, d), &dev)).transpose()?;
        if let Ok(mut slot) = self.grads.lock() {
            *slot = Some((dh, dw));
        }
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grads = match self.grads.lock() {
            Ok(g) => g.clone(),
            Err(_) => None,
        };
        let Some((dh, dw)) = grads else {
            candle_core::bail!("linear cross-entropy: backward before forward");
        };
        let g = grad_res.to_dtype(DType::F32)?;
        let scale = |t: Option<Tensor>| t.map(|t| t.broadcast_mul(&g)).transpose();
        Ok((scale(dh)?, scale(dw)?))
    }
}

/// The summed loss of rows `h` (N, D) through `w` (V, D) against `targets`; fills `dh`
/// (N, D) and `dw` (V, D) with the gradients of that sum when given.
pub fn forward_backward(
    h: &[f32],
    w: &[f32],
    d: usize,
    targets: &[u32],
    mut dh: Option<&mut [f32]>,
    mut dw: Option<&mut [f32]>,
) -> Result<f64> {
    let n = targets.len();
    let v = w.len() / d.max(1);
    let grad = dh.is_some() || dw.is_some();
    let chunk = chunk_rows(v);
    let mut logits = vec![0f32; chunk.min(n) * v];
    let mut loss = 0f64;
    for (c, start) in (0..n).step_by(chunk).enumerate() {
        let rows = chunk.min(n - start);
        let hc = Mat::rows(&h[start * d..(start + rows) * d], rows, d);
        let p = &mut logits[..rows * v];
        // (rows, D) x (D, V) -> (rows, V)
        gemm(p, hc, Mat::rows(w, v, d).t(), false)?;
        let tg = &targets[start..start + rows];
        let losses: Vec<f64> = p
            .par_chunks_mut(v)
            .zip(tg.par_iter())
            .map(|(row, &t)| row_loss(row, t as usize, grad))
            .collect();
        loss += losses.iter().sum::<f64>();
        if let Some(dh) = dh.as_deref_mut() {
            // (rows, V) x (V, D) -> (rows, D)
            let dst = &mut dh[start * d..(start + rows) * d];
            gemm(dst, Mat::rows(p, rows, v), Mat::rows(w, v, d), false)?;
        }
        if let Some(dw) = dw.as_deref_mut() {
            // (V, rows) x (rows, D) -> (V, D), summed over chunks
            gemm(dw, Mat::rows(p, rows, v).t(), hc, c > 0)?;
        }
    }
    Ok(loss)
}

/// `logsumexp(row) - row[t]`; with `grad`, `row` becomes `softmax(row) - onehot(t)`.
fn row_loss(row: &mut [f32], t: usize, grad: bool) -> f64 {
    let max = crate::fused::exp::max(row);
    let picked = row[t];
    let sum = super::exp::exp_sub_sum(row, max);
    let loss = (max as f64 + (sum as f64).ln()) - picked as f64;
    if grad {
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
        row[t] -= 1.0;
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// The unfused reference: logits, logsumexp, gather, as candle ops.
    fn reference(h: &Tensor, w: &Tensor, targets: &[u32]) -> Tensor {
        let logits = h.matmul(&w.t().unwrap()).unwrap();
        let max = logits.max_keepdim(D::Minus1).unwrap().detach();
        let lse = (logits
            .broadcast_sub(&max)
            .unwrap()
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap()
            + &max)
            .unwrap();
        let t = Tensor::new(targets, h.device())
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let picked = logits.gather(&t, 1).unwrap();
        (lse - picked).unwrap().sum_all().unwrap()
    }

    use crate::fused::testing::max_diff;

    #[test]
    fn loss_and_gradients_match_the_unfused_ops() {
        let dev = Device::Cpu;
        // More rows than one chunk, a vocabulary that is not a multiple of anything.
        let (n, d, v) = (chunk_rows(301) + 37, 24, 301);
        let h = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (n, d), &dev).unwrap())).unwrap();
        let w = Var::from_tensor(&(Tensor::randn(0f32, 0.5, (v, d), &dev).unwrap())).unwrap();
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        let fused = linear_cross_entropy_sum(w.as_tensor(), h.as_tensor(), &targets)
            .unwrap()
            .unwrap();
        let want = reference(h.as_tensor(), w.as_tensor(), &targets);
        let (a, b) = (
            fused.to_scalar::<f32>().unwrap(),
            want.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() <= 1e-5 * b.abs(), "{a} vs {b}");
        // An upstream gradient other than 1.
        let gf = (fused * 0.25).unwrap().backward().unwrap();
        let gr = (want * 0.25).unwrap().backward().unwrap();
        for x in [&h, &w] {
            let (gf, gr) = (gf.get(x).unwrap(), gr.get(x).unwrap());
            let scale: f32 = gr.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            let diff = max_diff(gf, gr);
            assert!(
                diff <= 1e-6 + 1e-4 * scale,
                "gradient differs by {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn frozen_weight_gets_no_gradient_and_bad_targets_are_errors() {
        let dev = Device::Cpu;
        let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (11, 8), &dev).unwrap();
        let head = w.clone();
        let loss = linear_cross_entropy_sum(&head, h.as_tensor(), &[0, 1, 2, 3, 10])
            .unwrap()
            .unwrap();
        let g = loss.backward().unwrap();
        assert!(g.get(&h).is_some());
        assert!(g.get(&w).is_none());
        assert!(linear_cross_entropy_sum(&head, h.as_tensor(), &[0, 1, 2, 3, 11]).is_err());
        assert!(linear_cross_entropy_sum(&head, h.as_tensor(), &[0, 1]).is_err());
        // Not fusable: the caller's path.
        let half = w.to_dtype(DType::F16).unwrap();
        assert!(linear_cross_entropy_sum(&half, h.as_tensor(), &[0; 5])
            .unwrap()
            .is_none());
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use std::time::Instant;

    /// `cargo test --release -p llama3 fused::ce::speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn head_speed() {
        let (n, d, v) = (2048, 288, 32000);
        let h: Vec<f32> = crate::quant::test_data(n * d, 1);
        let w: Vec<f32> = crate::quant::test_data(v * d, 2);
        let targets: Vec<u32> = (0..n).map(|i| (i * 7919 % v) as u32).collect();
        let mut dh = vec![0f32; n * d];
        let mut dw = vec![0f32; v * d];
        let rows = chunk_rows(v);
        let mut p = vec![0f32; rows * v];
        for _ in 0..3 {
            let t = Instant::now();
            gemm(
                &mut p,
                Mat::rows(&h[..rows * d], rows, d),
                Mat::rows(&w, v, d).t(),
                false,
            )
            .unwrap();
            let a = t.elapsed().as_secs_f64();
            let t = Instant::now();
            gemm(
                &mut dh[..rows * d],
                Mat::rows(&p, rows, v),
                Mat::rows(&w, v, d),
                false,
            )
            .unwrap();
            let b = t.elapsed().as_secs_f64();
            let t = Instant::now();
            gemm(
                &mut dw,
                Mat::rows(&p, rows, v).t(),
                Mat::rows(&h[..rows * d], rows, d),
                true,
            )
            .unwrap();
            let c = t.elapsed().as_secs_f64();
            let t = Instant::now();
            forward_backward(&h, &w, d, &targets, Some(&mut dh), Some(&mut dw)).unwrap();
            let all = t.elapsed().as_secs_f64();
            let gf = 2.0 * (rows * d * v) as f64 / 1e9;
            println!(
                "logits {:.1} GFLOP/s, dh {:.1}, dw {:.1}; whole head {:.0} ms = {:.1} GFLOP/s",
                gf / a,
                gf / b,
                gf / c,
                all * 1e3,
                3.0 * gf * (n / rows) as f64 / all
            );
        }
    }
}
