//! Grouped-query attention (covers MHA `G = 1` and MQA `Hkv = 1`), RoPE, KV-cache append and
//! the causal mask. Written with differentiable ops only (candle's fused `softmax_last_dim`
//! has no backward).

use candle_core::{DType, Device, Tensor, D};

use super::cache::KvCache;
use super::decode::{self, SeqRows};
use super::linear::{Linear, Stack};
use super::rope;
use crate::Result;

#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear, // (H*Dh, D)
    pub k_proj: Linear, // (Hkv*Dh, D)
    pub v_proj: Linear, // (Hkv*Dh, D)
    pub o_proj: Linear, // (D, H*Dh)
    /// q/k/v weights stacked for inference (one matmul); see [`Stack`].
    pub qkv: Option<Stack>,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

impl Attention {
    /// (B, T, D) -> (B, T, D). `cos`/`sin` (T, Dh/2) for positions pos..pos+T; `mask` (T, S)
    /// additive, None when T = 1; `cache` is (cache, layer index), None when training.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        #[cfg(feature = "cuda")]
        let cache = match cache {
            Some((cache, layer)) if t == 1 && crate::cuda::attention::applies(self.heads(), x) => {
                // One token per sequence on a GPU: RoPE, cache write and attention in one
                // kernel (`crate::cuda::attention`).
                let (q, k, v) = self.project_rows(x)?; // (B, 1, ..)
                let (q, k, v) = (q.squeeze(1)?, k.squeeze(1)?, v.squeeze(1)?);
                let y = crate::cuda::attention::attend(
                    self.heads(),
                    &q,
                    &k,
                    &v,
                    cos,
                    sin,
                    cache,
                    layer,
                )?;
                return self.o_proj.forward(&y.unsqueeze(1)?); // (B, 1, D)
            }
            c => c,
        };
        let cache = match cache {
            Some((cache, layer)) if b == 1 && self.fuses(x) => {
                // One sequence (a token or a prompt chunk): the fused CPU loop that batches
                // use too; `mask` is the causal one, which it applies itself.
                let rows = SeqRows::new(
                    t,
                    cos.flatten_all()?.to_vec1()?,
                    sin.flatten_all()?.to_vec1()?,
                );
                let (q, k, v) = self.project_rows(x)?;
                let y = decode::attend(self.heads(), &q, &k, &v, &[rows], &mut [cache], layer)?;
                return self.o_proj.forward(&y.reshape((1, t, ()))?);
            }
            c => c,
        };
        let (q, k, v) = self.project_rows(x)?;
        if cache.is_none()
            && crate::fused::trains_on_cpu(&[&q, &k, &v])
            && self.head_dim.is_multiple_of(2)
        {
            // Training: RoPE, causal softmax and both products in one op with its own
            // backward (`fused::attn`). Without a cache the positions start at 0.
            let (cos, sin) = (cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?);
            let heads = crate::fused::attn::Heads {
                h: self.n_head,
                hkv: self.n_head_kv,
                dh: self.head_dim,
            };
            let y = crate::fused::attn::causal_attention(&q, &k, &v, heads, &cos, &sin)?;
            return self.o_proj.forward(&y);
        }
        let (q, k, v) = self.split_heads(q, k, v)?;
        let y = self.attend(q, k, v, cos, sin, mask, cache)?;
        self.o_proj.forward(&y)
    }

    /// The new rows of N sequences that have their own caches (continuous batching): `seqs[i].t`
    /// rows of sequence i, in order, as (M, 1, D) with M = Σ T_i — one row each for a decode
    /// step, a prompt chunk for a sequence being prefilled. The projections run as one batch,
    /// attention per sequence. (M, 1, D) -> (M, 1, D).
    pub fn forward_batch(
        &self,
        x: &Tensor,
        seqs: &[SeqRows],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_rows(x)?;
        if self.fuses(x) {
            let y = decode::attend(self.heads(), &q, &k, &v, seqs, caches, layer)?; // (M, H*Dh)
            return self.o_proj.forward(&y.unsqueeze(1)?);
        }
        let mut ys = Vec::with_capacity(caches.len());
        let mut r0 = 0;
        for (cache, s) in caches.iter_mut().zip(seqs) {
            // (T, 1, ..) rows of this sequence as a (1, T, ..) batch of one.
            let rows = |a: &Tensor| a.narrow(0, r0, s.t)?.reshape((1, s.t, ()));
            let (q, k, v) = self.split_heads(rows(&q)?, rows(&k)?, rows(&v)?)?;
            let (cos, sin) = s.tables(x.device(), x.dtype())?; // (T, Dh/2)
            #[cfg(feature = "cuda")]
            if s.t == 1 && crate::cuda::attention::applies(self.heads(), x) {
                // A decode row on a GPU: the one-launch kernel, as `forward` does.
                let row = |a: &Tensor| a.narrow(0, r0, 1)?.squeeze(1); // (1, ..)
                let (q, k, v) = (row(&q)?, row(&k)?, row(&v)?);
                let y = crate::cuda::attention::attend(
                    self.heads(),
                    &q,
                    &k,
                    &v,
                    &cos,
                    &sin,
                    cache,
                    layer,
                )?;
                ys.push(y.unsqueeze(1)?); // (1, 1, H*Dh)
                r0 += 1;
                continue;
            }
            let mask = match s.t {
                1 => None,
                t => Some(causal_mask(t, cache.len(), x.device())?),
            };
            let cache = Some((&mut **cache, layer));
            let y = self.attend(q, k, v, &cos, &sin, mask.as_ref(), cache)?; // (1, T, H*Dh)
            ys.push(y.reshape((s.t, 1, ()))?);
            r0 += s.t;
        }
        let y = Tensor::cat(&ys, 0)?; // (M, 1, H*Dh)
        self.o_proj.forward(&y)
    }

    /// Whether the fused CPU loops (`decode.rs`) take `x`.
    fn fuses(&self, x: &Tensor) -> bool {
        decode::applies(x) && self.head_dim.is_multiple_of(8)
    }

    fn heads(&self) -> decode::Heads {
        decode::Heads {
            h: self.n_head,
            hkv: self.n_head_kv,
            dh: self.head_dim,
        }
    }

    /// (B, T, D) -> q (B, T, H*Dh), k and v (B, T, Hkv*Dh), rows as the projections give them.
    fn project_rows(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let ls = [&self.q_proj, &self.k_proj, &self.v_proj];
        let [q, k, v] = Linear::forward_many(ls, x, self.qkv.as_ref())?;
        Ok((q, k, v))
    }

    /// q (B, T, H*Dh), k and v (B, T, Hkv*Dh) -> q (B, H, T, Dh), k and v (B, Hkv, T, Dh).
    fn split_heads(&self, q: Tensor, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = q.dims3()?;
        let (h, hkv, dh) = (self.n_head, self.n_head_kv, self.head_dim);
        let q = q.reshape((b, t, h, dh))?.transpose(1, 2)?; // (B, H, T, Dh)
        let k = k.reshape((b, t, hkv, dh))?.transpose(1, 2)?; // (B, Hkv, T, Dh)
        let v = v.reshape((b, t, hkv, dh))?.transpose(1, 2)?; // (B, Hkv, T, Dh)
        Ok((q, k, v))
    }

    /// RoPE, KV-cache append and scaled dot-product attention: q (B, H, T, Dh), k and v
    /// (B, Hkv, T, Dh) -> (B, T, H*Dh), before `o_proj`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, h, t, _) = q.dims4()?;
        let (hkv, dh) = (self.n_head_kv, self.head_dim);
        let g = h / hkv;
        let q = rope::apply(&q, cos, sin)?;
        let k = rope::apply(&k, cos, sin)?;
        let f16_cache = cache.as_ref().is_some_and(|(c, _)| c.rounds_to_f16());
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?, // (B, Hkv, S, Dh)
            None => (k, v.contiguous()?),
        };
        // With an f16 cache, llama.cpp (ggml_mul_mat on f16 K/V) also rounds the query and the
        // attention probabilities to f16; doing the same keeps our logits next to its.
        let round = |x: Tensor| -> Result<Tensor> {
            Ok(if f16_cache {
                x.to_dtype(DType::F16)?.to_dtype(x.dtype())?
            } else {
                x
            })
        };
        let q = round(q)?;
        let s = k.dim(2)?;
        // Query head j*G + g reads KV head j (HF `repeat_kv` repeats each KV head G times), so
        // grouping the G query heads of a KV head along the row axis needs no K/V copies.
        let q = q.contiguous()?.reshape((b, hkv, g * t, dh))?; // (B, Hkv, G*T, Dh)
        let scale = 1.0 / (dh as f64).sqrt();
        let att = q.matmul(&k.t()?)?; // (B, Hkv, G*T, S)
        let att = match fused_softmax(&att, scale, t)? {
            Some(p) => p,
            None => {
                let att = (att * scale)?;
                let att = match mask {
                    Some(m) => att
                        .reshape((b, hkv, g, t, s))?
                        .broadcast_add(&m.to_dtype(att.dtype())?)?
                        .reshape((b, hkv, g * t, s))?,
                    None => att,
                };
                // Softmax in f32 (candle's fused kernel sums in f32 whatever the dtype, so
                // inference skips the casts).
                match att.track_op() {
                    true => softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?,
                    false => softmax_last_dim(&att)?,
                }
            }
        };
        let att = round(att)?;
        // v: contiguous, or the cache's narrowed view whose rows are (matmul takes its strides).
        let y = att.matmul(&v)?; // (B, Hkv, G*T, Dh)
        let y = y
            .reshape((b, h, t, dh))?
            .transpose(1, 2)?
            .reshape((b, t, h * dh))?; // (B, T, H*Dh)
        Ok(y)
    }
}

/// On a GPU: `softmax(scale * att + mask)` in one kernel with its own backward
/// (`crate::cuda::softmax`), for scores (B, Hkv, G*T, S) of T new positions. The mask
/// `attend` gets is always `causal_mask(T, S - T)` (or none for one position, where it masks
/// nothing), which the kernel applies itself. None where it does not apply.
fn fused_softmax(att: &Tensor, scale: f64, t: usize) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if crate::cuda::softmax::applies(att) {
        return Ok(Some(crate::cuda::softmax::causal(att, scale, t)?));
    }
    let _ = (att, scale, t);
    Ok(None)
}

/// Softmax over the last dim. With gradients tracked it is built from differentiable ops, the
/// max detached (softmax is shift-invariant, so its gradient through the shift is zero);
/// otherwise candle's fused kernel.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(candle_nn::ops::softmax_last_dim(x)?);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Additive causal mask (T, S) for T new positions after `pos` cached ones: query i may see
/// keys 0..=pos+i.
pub fn causal_mask(t: usize, pos: usize, device: &Device) -> Result<Tensor> {
    let s = pos + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (t, s), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The fused CPU path (`decode.rs`) against the candle ops it replaces, with GQA,
    /// sequences at different positions, prompt chunks mixed with decode rows, and both cache
    /// precisions.
    #[test]
    fn fused_decode_matches_the_candle_path() {
        use crate::weights::Weight;
        let dev = Device::Cpu;
        let (d, h, hkv, dh) = (32, 4, 2, 8);
        let lin = |o: usize, i: usize, seed: f32| {
            let w = Tensor::randn(seed, 0.3, (o, i), &dev).unwrap();
            Linear::new(Weight::Dense(w))
        };
        let attn = Attention {
            q_proj: lin(h * dh, d, 0.0),
            k_proj: lin(hkv * dh, d, 0.1),
            v_proj: lin(hkv * dh, d, -0.1),
            o_proj: lin(d, h * dh, 0.05),
            qkv: None,
            n_head: h,
            n_head_kv: hkv,
            head_dim: dh,
        };
        let cfg = crate::config::LlamaConfig::from_hf_json(&serde_json::json!({
            "model_type": "llama", "hidden_size": d, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": h, "num_key_value_heads": hkv,
            "vocab_size": 10, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        }))
        .unwrap();
        let rope_of = |pos: usize| -> (Vec<f32>, Vec<f32>) {
            (0..dh / 2)
                .map(|i| {
                    let a = pos as f32 * 10000f32.powf(-((2 * i) as f32) / dh as f32);
                    (a.cos(), a.sin())
                })
                .unzip()
        };
        for precision in [DType::F32, DType::F16] {
            let new = || KvCache::new(&cfg, 1, 16, DType::F32, precision, &dev).unwrap();
            let (mut fused, mut plain) = ([new(), new()], [new(), new()]);
            // Rows per sequence and step: prompt chunks mixed with single decode rows, a
            // sequence missing from some steps.
            let steps: [&[usize]; 5] = [&[3, 1], &[1, 4], &[1], &[2], &[1, 1]];
            for (step, ts) in steps.iter().enumerate() {
                let m: usize = ts.iter().sum();
                let x = Tensor::randn(0f32, 1.0, (m, 1, d), &dev).unwrap();
                let seqs: Vec<SeqRows> = ts
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| {
                        let rows: Vec<_> = (0..t).map(|j| rope_of(fused[i].len() + j)).collect();
                        SeqRows::new(
                            t,
                            rows.iter().flat_map(|r| r.0.clone()).collect(),
                            rows.iter().flat_map(|r| r.1.clone()).collect(),
                        )
                    })
                    .collect();
                let mut refs: Vec<&mut KvCache> = fused.iter_mut().take(ts.len()).collect();
                let got = attn.forward_batch(&x, &seqs, &mut refs, 0).unwrap();
                refs.iter_mut().zip(*ts).for_each(|(c, &t)| c.advance(t));
                let mut r0 = 0;
                for (i, s) in seqs.iter().enumerate() {
                    let cos = Tensor::from_slice(&s.cos, (s.t, dh / 2), &dev).unwrap();
                    let sin = Tensor::from_slice(&s.sin, (s.t, dh / 2), &dev).unwrap();
                    let xi = x.narrow(0, r0, s.t).unwrap().reshape((1, s.t, d)).unwrap();
                    let (q, k, v) = attn.project_rows(&xi).unwrap();
                    let (q, k, v) = attn.split_heads(q, k, v).unwrap();
                    let c = &mut plain[i];
                    let mask = (s.t > 1).then(|| causal_mask(s.t, c.len(), &dev).unwrap());
                    let y = attn
                        .attend(q, k, v, &cos, &sin, mask.as_ref(), Some((c, 0)))
                        .unwrap();
                    c.advance(s.t);
                    let want = attn.o_proj.forward(&y).unwrap().reshape((s.t, 1, d));
                    let diff = (got.narrow(0, r0, s.t).unwrap() - want.unwrap())
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(diff < 1e-5, "{precision:?} step {step} seq {i}: {diff}");
                    r0 += s.t;
                }
            }
            assert_eq!((fused[0].len(), fused[1].len()), (8, 6));
        }
    }

    /// The differentiable path (taken when gradients are tracked) and candle's fused kernels
    /// (inference) must agree: softmax, RMSNorm and RoPE.
    #[test]
    fn differentiable_and_fused_ops_agree() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (2, 3, 5, 8), &dev).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(
            max_diff(
                &softmax_last_dim(&x).unwrap(),
                &softmax_last_dim(v.as_tensor()).unwrap()
            ) < 1e-6
        );

        let w = Tensor::randn(1f32, 0.1, 8, &dev).unwrap();
        let norm = super::super::RmsNorm::new(w, 1e-5);
        assert!(
            max_diff(
                &norm.forward(&x).unwrap(),
                &norm.forward(v.as_tensor()).unwrap()
            ) < 1e-5
        );

        let cos = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let fused = rope::apply(&x, &cos, &sin).unwrap();
        let plain = rope::apply(v.as_tensor(), &cos, &sin).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);

        // And gradients flow through the differentiable path.
        let loss = softmax_last_dim(
            &rope::apply(&norm.forward(v.as_tensor()).unwrap(), &cos, &sin).unwrap(),
        )
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(v.as_tensor())
            .expect("gradient reaches the input");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }
}
