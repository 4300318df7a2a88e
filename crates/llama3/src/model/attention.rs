//! Grouped-query attention (covers MHA `G = 1` and MQA `Hkv = 1`): the q/k/v projections,
//! attention itself (`ops::attention`: RoPE, KV-cache append, causal softmax, wherever it
//! runs) and the output projection.

use candle_core::Tensor;

use super::linear::{Linear, Stack};
use crate::kv::{Heads, KvCache, SeqRows};
use crate::ops;
use crate::Result;

pub use crate::ops::softmax::{causal_mask, softmax_last_dim};

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
    /// additive, None when T = 1; `cache` is (cache, layer index), None when training;
    /// `prefix`: keys (with RoPE) and values (1, Hkv, N, Dh) before the new rows' (prefix
    /// tuning without a cache).
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
        prefix: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_rows(x)?;
        let (heads, rope) = (self.heads(), (cos, sin));
        let y = ops::attention::attention(heads, &q, &k, &v, rope, mask, cache, prefix)?;
        self.o_proj.forward(&y) // (B, T, D)
    }

    /// The heads' output before `o_proj`, without a cache: (B, T, D) -> (B, T, H*Dh). What
    /// pruning measures of o_proj's input (`crate::prune`).
    pub fn attend(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_rows(x)?;
        ops::attention::attention(self.heads(), &q, &k, &v, (cos, sin), mask, None, None)
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
        let y = ops::attention::attention_batch(self.heads(), &q, &k, &v, seqs, caches, layer)?;
        self.o_proj.forward(&y) // (M, 1, D)
    }

    pub fn heads(&self) -> Heads {
        Heads {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

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
                    let c = &mut plain[i];
                    let mask = (s.t > 1).then(|| causal_mask(s.t, c.len(), &dev).unwrap());
                    let heads = attn.heads();
                    let cache = ops::attention::Kv::Cache((&mut *c, 0));
                    let y = ops::attention::candle_attention(
                        heads,
                        &q,
                        &k,
                        &v,
                        &cos,
                        &sin,
                        mask.as_ref(),
                        cache,
                    )
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
        let fused = ops::rope::rope(&x, &cos, &sin).unwrap();
        let plain = ops::rope::rope(v.as_tensor(), &cos, &sin).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);

        // And gradients flow through the differentiable path.
        let loss = softmax_last_dim(
            &ops::rope::rope(&norm.forward(v.as_tensor()).unwrap(), &cos, &sin).unwrap(),
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
