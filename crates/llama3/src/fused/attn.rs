//! Causal self-attention for training, RoPE included: q (B, T, H*Dh) and k, v
//! (B, T, Hkv*Dh), rows as the projections give them, -> (B, T, H*Dh) before `o_proj`, with
//! a hand-written backward to q, k and v. One task per (sequence, KV head) holds that head's
//! rotated K and V and runs its G query heads with small single-threaded products, so the
//! (B, H, T, T) scores never pass through candle's element-wise ops. The probabilities are
//! kept for the backward (B*H*T*T f32; 12.6 MB per layer at 8 x 256 with 6 heads).
//!
//! Backward (per head, P the causal softmax, O = P V, scale s = 1/sqrt(Dh)):
//! `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - rowsum(P * dP))`, `dQr = s dS Kr`,
//! `dKr = s dS^T Qr`, then the rotation undone on dQr and dKr.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{gemm_with, Mat};
use super::{f32_slice, with_f32};
use crate::kv::Heads;
use crate::{Error, Result};

/// Causal attention with RoPE over q (B, T, H*Dh), k and v (B, T, Hkv*Dh), f32 on the CPU;
/// `cos`/`sin` (T, Dh/2) row-major for positions 0..T. Query head `i` reads KV head
/// `i / (H / Hkv)` (HF `repeat_kv`).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: Heads,
    cos: &[f32],
    sin: &[f32],
) -> Result<Tensor> {
    let (b, t, qw) = q.dims3()?;
    let Heads { h, hkv, dh } = heads;
    let ok = qw == h * dh
        && k.dims() == [b, t, hkv * dh]
        && v.dims() == [b, t, hkv * dh]
        && hkv > 0
        && h.is_multiple_of(hkv)
        && dh.is_multiple_of(2)
        && cos.len() == t * dh / 2
        && sin.len() == cos.len();
    if !ok {
        return Err(Error::Input(format!(
            "fused attention: q {:?}, k {:?}, v {:?}, {heads:?}, {} rope values",
            q.dims(),
            k.dims(),
            v.dims(),
            cos.len()
        )));
    }
    let op = Attn {
        heads,
        cos: cos.to_vec(),
        sin: sin.to_vec(),
        probs: Mutex::new(None),
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

struct Attn {
    heads: Heads,
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// (B, H, T, T) causal softmax from the forward.
    probs: Mutex<Option<Vec<f32>>>,
}

/// Rows `0..t` of head `head` (width `dh`) of a (T, width) row block, rotated by RoPE (or by
/// its inverse with `sign` = -1), into a (T, Dh) buffer.
fn gather(
    src: &[f32],
    width: usize,
    head: usize,
    dh: usize,
    rope: Option<(&Attn, f32)>,
) -> Vec<f32> {
    let t = src.len() / width;
    let half = dh / 2;
    let mut out = vec![0f32; t * dh];
    for (i, row) in out.chunks_exact_mut(dh).enumerate() {
        let x = &src[i * width + head * dh..][..dh];
        match rope {
            None => row.copy_from_slice(x),
            Some((op, sign)) => {
                let (c, s) = (&op.cos[i * half..][..half], &op.sin[i * half..][..half]);
                for j in 0..half {
                    let (x1, x2, sj) = (x[j], x[j + half], sign * s[j]);
                    row[j] = x1 * c[j] - x2 * sj;
                    row[j + half] = x2 * c[j] + x1 * sj;
                }
            }
        }
    }
    out
}

/// Writes a (T, Dh) buffer into head `head` of a (T, width) row block, undoing the rotation
/// when `rope` is given (the gradient of a rotation is the inverse rotation).
fn scatter(
    dst: &mut [f32],
    width: usize,
    head: usize,
    src: &[f32],
    dh: usize,
    rope: Option<&Attn>,
) {
    let g = gather(src, dh, 0, dh, rope.map(|op| (op, -1.0)));
    for (i, row) in g.chunks_exact(dh).enumerate() {
        dst[i * width + head * dh..][..dh].copy_from_slice(row);
    }
}

impl Attn {
    /// Causal softmax of the scaled scores in place, row by row; entries past the diagonal 0.
    fn softmax(s: &mut [f32], t: usize, scale: f32) {
        for (i, row) in s.chunks_exact_mut(t).enumerate() {
            let (seen, future) = row.split_at_mut(i + 1);
            seen.iter_mut().for_each(|x| *x *= scale);
            let max = crate::fused::exp::max(seen);
            let sum = super::exp::exp_sub_sum(seen, max);
            let inv = 1.0 / sum;
            seen.iter_mut().for_each(|x| *x *= inv);
            future.fill(0.0);
        }
    }
}

impl CustomOp3 for Attn {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let (b, t, _) = l1.shape().dims3()?;
        let Heads { h, hkv, dh } = self.heads;
        let g = h / hkv;
        let scale = 1.0 / (dh as f32).sqrt();
        let (qw, kw) = (h * dh, hkv * dh);
        let mut probs = vec![0f32; b * h * t * t];
        // Per (sequence, KV head): its G heads' outputs, (G, T, Dh).
        let outs: Vec<candle_core::Result<Vec<f32>>> = probs
            .par_chunks_mut(g * t * t)
            .enumerate()
            .map(|(task, p)| {
                let (bi, j) = (task / hkv, task % hkv);
                let (qb, kb, vb) = (
                    &q[bi * t * qw..][..t * qw],
                    &k[bi * t * kw..][..t * kw],
                    &v[bi * t * kw..][..t * kw],
                );
                let kr = gather(kb, kw, j, dh, Some((self, 1.0)));
                let vv = gather(vb, kw, j, dh, None);
                let mut out = vec![0f32; g * t * dh];
                for gi in 0..g {
                    let qr = gather(qb, qw, j * g + gi, dh, Some((self, 1.0)));
                    let s = &mut p[gi * t * t..][..t * t];
                    gemm1(s, Mat::rows(&qr, t, dh), Mat::rows(&kr, t, dh).t(), false)?;
                    Self::softmax(s, t, scale);
                    let o = &mut out[gi * t * dh..][..t * dh];
                    gemm1(o, Mat::rows(s, t, t), Mat::rows(&vv, t, dh), false)?;
                }
                Ok(out)
            })
            .collect();
        let mut y = vec![0f32; b * t * qw];
        for (task, out) in outs.into_iter().enumerate() {
            let (bi, j) = (task / hkv, task % hkv);
            let out = out?;
            for gi in 0..g {
                let o = &out[gi * t * dh..][..t * dh];
                scatter(&mut y[bi * t * qw..][..t * qw], qw, j * g + gi, o, dh, None);
            }
        }
        if let Ok(mut slot) = self.probs.lock() {
            *slot = Some(probs);
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        let Some(probs) = guard.as_ref() else {
            candle_core::bail!("causal attention: backward before forward");
        };
        let (b, t, _) = q.dims3()?;
        let Heads { h, hkv, dh } = self.heads;
        let g = h / hkv;
        let scale = 1.0 / (dh as f32).sqrt();
        let (qw, kw) = (h * dh, hkv * dh);
        // Per (sequence, KV head): dQr of its G heads (G, T, Dh), dKr and dV (T, Dh).
        type Part = (Vec<f32>, Vec<f32>, Vec<f32>);
        let parts = with_f32([q, k, v, grad], |[qv, kv, vv, dy]| {
            probs
                .par_chunks(g * t * t)
                .enumerate()
                .map(|(task, p)| {
                    let (bi, j) = (task / hkv, task % hkv);
                    let (qb, kb, vb, db) = (
                        &qv[bi * t * qw..][..t * qw],
                        &kv[bi * t * kw..][..t * kw],
                        &vv[bi * t * kw..][..t * kw],
                        &dy[bi * t * qw..][..t * qw],
                    );
                    let kr = gather(kb, kw, j, dh, Some((self, 1.0)));
                    let vh = gather(vb, kw, j, dh, None);
                    let mut dq = vec![0f32; g * t * dh];
                    let mut dk = vec![0f32; t * dh];
                    let mut dv = vec![0f32; t * dh];
                    let mut ds = vec![0f32; t * t];
                    for gi in 0..g {
                        let hi = j * g + gi;
                        let qr = gather(qb, qw, hi, dh, Some((self, 1.0)));
                        let d_o = gather(db, qw, hi, dh, None);
                        let p = Mat::rows(&p[gi * t * t..][..t * t], t, t);
                        // dV += P^T dO; dP = dO V^T
                        gemm1(&mut dv, p.t(), Mat::rows(&d_o, t, dh), gi > 0)?;
                        gemm1(
                            &mut ds,
                            Mat::rows(&d_o, t, dh),
                            Mat::rows(&vh, t, dh).t(),
                            false,
                        )?;
                        let rows = ds.chunks_exact_mut(t).zip(p.data.chunks_exact(t));
                        for (i, (dsr, pr)) in rows.enumerate() {
                            let (seen, future) = dsr.split_at_mut(i + 1);
                            let dot: f32 = seen.iter().zip(pr).map(|(a, b)| a * b).sum();
                            for (d, &pv) in seen.iter_mut().zip(pr) {
                                *d = pv * (*d - dot) * scale;
                            }
                            future.fill(0.0);
                        }
                        gemm1(
                            &mut dq[gi * t * dh..][..t * dh],
                            Mat::rows(&ds, t, t),
                            Mat::rows(&kr, t, dh),
                            false,
                        )?;
                        gemm1(
                            &mut dk,
                            Mat::rows(&ds, t, t).t(),
                            Mat::rows(&qr, t, dh),
                            gi > 0,
                        )?;
                    }
                    Ok((dq, dk, dv))
                })
                .collect::<Vec<candle_core::Result<Part>>>()
        })?;
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; b * t * qw],
            vec![0f32; b * t * kw],
            vec![0f32; b * t * kw],
        );
        for (task, part) in parts.into_iter().enumerate() {
            let (bi, j) = (task / hkv, task % hkv);
            let (pq, pk, pv) = part?;
            for gi in 0..g {
                let src = &pq[gi * t * dh..][..t * dh];
                scatter(
                    &mut dq[bi * t * qw..][..t * qw],
                    qw,
                    j * g + gi,
                    src,
                    dh,
                    Some(self),
                );
            }
            scatter(&mut dk[bi * t * kw..][..t * kw], kw, j, &pk, dh, Some(self));
            scatter(&mut dv[bi * t * kw..][..t * kw], kw, j, &pv, dh, None);
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// A single-threaded product (the caller runs one per task).
fn gemm1(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) -> candle_core::Result<()> {
    gemm_with(dst, a, b, accumulate, false).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{rope, softmax};
    use candle_core::{Device, Var};

    /// The differentiable candle ops the model used before (RoPE, repeat_kv, masked softmax).
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        hd: Heads,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Tensor {
        let (b, t, _) = q.dims3().unwrap();
        let split = |x: &Tensor, n: usize| {
            x.reshape((b, t, n, hd.dh))
                .unwrap()
                .transpose(1, 2)
                .unwrap() // (B, n, T, Dh)
        };
        let q = rope::rope(&split(q, hd.h), cos, sin).unwrap();
        let k = rope::rope(&split(k, hd.hkv), cos, sin).unwrap();
        let v = split(v, hd.hkv);
        let g = hd.h / hd.hkv;
        let rep = |x: Tensor| {
            let x = x.unsqueeze(2).unwrap().repeat((1, 1, g, 1, 1)).unwrap();
            x.reshape((b, hd.h, t, hd.dh)).unwrap()
        };
        let (k, v) = (rep(k), rep(v));
        let att = (q.matmul(&k.t().unwrap()).unwrap() / (hd.dh as f64).sqrt()).unwrap();
        let mask = softmax::causal_mask(t, 0, q.device()).unwrap();
        let att = softmax::softmax_last_dim(&att.broadcast_add(&mask).unwrap()).unwrap();
        let y = att.matmul(&v).unwrap(); // (B, H, T, Dh)
        y.transpose(1, 2)
            .unwrap()
            .reshape((b, t, hd.h * hd.dh))
            .unwrap()
    }

    #[test]
    fn values_and_gradients_match_the_candle_ops() {
        let dev = Device::Cpu;
        let (b, t) = (2, 37);
        let hd = Heads {
            h: 6,
            hkv: 2,
            dh: 8,
        };
        let var = |n: usize| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, n * hd.dh), &dev).unwrap()).unwrap()
        };
        let (q, k, v) = (var(hd.h), var(hd.hkv), var(hd.hkv));
        let half = hd.dh / 2;
        let ang: Vec<f32> = (0..t * half)
            .map(|i| (i / half) as f32 / 10000f32.powf((2 * (i % half)) as f32 / hd.dh as f32))
            .collect();
        let table = |f: fn(f32) -> f32| {
            let v: Vec<f32> = ang.iter().map(|&a| f(a)).collect();
            Tensor::from_vec(v, (t, half), &dev).unwrap()
        };
        let (cos, sin) = (table(f32::cos), table(f32::sin));
        let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let fused = causal_attention(&q, &k, &v, hd, &flat(&cos), &flat(&sin)).unwrap();
        let want = reference(&q, &k, &v, hd, &cos, &sin);
        let w = Tensor::randn(0f32, 1.0, fused.shape(), &dev).unwrap();
        crate::fused::testing::check(&fused, &want, &w, &[&q, &k, &v], 1e-4);
        let bad = causal_attention(&q, &k, &v, Heads { h: 5, ..hd }, &flat(&cos), &flat(&sin));
        assert!(bad.is_err());
    }
}
