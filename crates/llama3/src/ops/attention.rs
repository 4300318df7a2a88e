//! Attention: RoPE on q and k, the KV-cache append and causal `softmax(q·Kᵀ/√Dh)·V`, from
//! the projections' rows to the rows `o_proj` takes. Which implementation runs:
//!
//! | case                                                   | implementation                           |
//! |--------------------------------------------------------|------------------------------------------|
//! | CUDA, one new token per sequence, our kernels on       | `cuda::attention` (one launch + combine) |
//! | CPU f32 without gradients, Dh % 8 == 0, with a cache   | `cpu::attend` (one fused loop)           |
//! | CPU f32 training (gradients, no cache), Dh even         | `fused::attn` (own backward)             |
//! | anything else: GPU prompts and training, CPU bf16/f16, | candle ops ([`candle_attention`]), the   |
//! | odd head dims                                           | causal softmax through [`super::softmax`]|
//!
//! Every path computes what the candle path does (HF `LlamaAttention` with `repeat_kv`); with
//! an f16 cache the query and the probabilities are rounded to f16 as llama.cpp's f16 K/V
//! matmuls do. Tests: `attention::tests` (fused vs candle), the HF/llama.cpp goldens, the
//! emulated CUDA kernels (`tests/cuda_attention.rs`).

use candle_core::{DType, Tensor};

use super::{rope, softmax, Route};
use crate::kv::{Heads, KvCache, SeqRows};
use crate::Result;

/// Where attention over q, k, v runs; `rows_per_seq`: new rows of each sequence when all
/// have the same count, `cached`: whether a KV cache is written (inference). Paths without a
/// backward take no tensor that tracks gradients.
fn route(heads: Heads, qkv: [&Tensor; 3], rows_per_seq: Option<usize>, cached: bool) -> Route {
    let tracked = qkv.iter().any(|x| x.track_op());
    #[cfg(feature = "cuda")]
    if rows_per_seq == Some(1)
        && cached
        && qkv
            .iter()
            .all(|x| crate::cuda::attention::applies(heads, x))
    {
        return Route::Cuda;
    }
    let _ = rows_per_seq;
    let cpu_f32 = qkv
        .iter()
        .all(|x| x.device().is_cpu() && x.dtype() == DType::F32);
    if cpu_f32 && !tracked && cached && heads.dh.is_multiple_of(8) {
        return Route::CpuInference;
    }
    if cpu_f32 && tracked && !cached && heads.dh.is_multiple_of(2) {
        return Route::CpuTraining;
    }
    Route::Candle
}

/// One batch of sequences sharing a cache (or none, when training): q (B, T, H*Dh), k and v
/// (B, T, Hkv*Dh) as the projections give them, `cos`/`sin` (T, Dh/2) for positions
/// pos..pos+T, `mask` (T, S) additive causal, None when T = 1; `cache` is (cache, layer);
/// `prefix` (without a cache): keys with RoPE and values (1, Hkv, N, Dh) that come before
/// the new rows (prefix tuning; S = N + T). Returns (B, T, H*Dh).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    heads: Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    mask: Option<&Tensor>,
    cache: Option<(&mut KvCache, usize)>,
    prefix: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    if let Some(prefix) = prefix {
        return candle_attention(heads, q, k, v, cos, sin, mask, Kv::Prefix(prefix));
    }
    let (b, t, _) = q.dims3()?;
    let rows = (b == 1).then_some(t).or((t == 1).then_some(1));
    match (route(heads, [q, k, v], rows, cache.is_some()), cache) {
        #[cfg(feature = "cuda")]
        (Route::Cuda, Some((cache, layer))) => {
            // One token per sequence: RoPE, cache write and attention in one kernel.
            let (q, k, v) = (q.squeeze(1)?, k.squeeze(1)?, v.squeeze(1)?); // (B, ..)
            let y = crate::cuda::attention::attend(heads, &q, &k, &v, cos, sin, cache, layer)?;
            Ok(y.unsqueeze(1)?) // (B, 1, H*Dh)
        }
        (Route::CpuInference, Some((cache, layer))) if b == 1 => {
            // One sequence (a token or a prompt chunk): the fused loop batches use too; the
            // mask is the causal one, which it applies itself.
            let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
            let rows = SeqRows::new(t, flat(cos)?, flat(sin)?);
            let y = crate::cpu::attend::attend(heads, q, k, v, &[rows], &mut [cache], layer)?;
            Ok(y.reshape((1, t, ()))?)
        }
        (Route::CpuTraining, None) => {
            // RoPE, causal softmax and both products in one op with its own backward.
            // Without a cache the positions start at 0.
            let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
            let (cos, sin) = (flat(cos)?, flat(sin)?);
            crate::fused::attn::causal_attention(q, k, v, heads, &cos, &sin)
        }
        (_, Some(cache)) => candle_attention(heads, q, k, v, cos, sin, mask, Kv::Cache(cache)),
        (_, None) => candle_attention(heads, q, k, v, cos, sin, mask, Kv::None),
    }
}

/// The new rows of N sequences that have their own caches (continuous batching): q (M, 1,
/// H*Dh), k and v (M, 1, Hkv*Dh), `seqs[i].t` rows of sequence i in order (M = Σ T_i): one
/// row each for a decode step, a prompt chunk for a sequence being prefilled. Returns
/// (M, 1, H*Dh).
pub fn attention_batch(
    heads: Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqs: &[SeqRows],
    caches: &mut [&mut KvCache],
    layer: usize,
) -> Result<Tensor> {
    if route(heads, [q, k, v], None, true) == Route::CpuInference {
        let y = crate::cpu::attend::attend(heads, q, k, v, seqs, caches, layer)?; // (M, H*Dh)
        return Ok(y.unsqueeze(1)?);
    }
    // Elsewhere each sequence on its own, through [`attention`] (a decode row on a GPU takes
    // the one-launch kernel there).
    let mut ys = Vec::with_capacity(caches.len());
    let mut r0 = 0;
    for (cache, s) in caches.iter_mut().zip(seqs) {
        // (T, 1, ..) rows of this sequence as a (1, T, ..) batch of one.
        let rows = |a: &Tensor| a.narrow(0, r0, s.t)?.reshape((1, s.t, ()));
        let (cos, sin) = s.tables(q.device(), q.dtype())?; // (T, Dh/2)
        let mask = match s.t {
            1 => None,
            t => Some(softmax::causal_mask(t, cache.pos(), q.device())?),
        };
        let cache = Some((&mut **cache, layer));
        let (qi, ki, vi) = (rows(q)?, rows(k)?, rows(v)?);
        let y = attention(
            heads,
            &qi,
            &ki,
            &vi,
            (&cos, &sin),
            mask.as_ref(),
            cache,
            None,
        )?;
        ys.push(y.reshape((s.t, 1, ()))?); // (T, 1, H*Dh)
        r0 += s.t;
    }
    Ok(Tensor::cat(&ys, 0)?) // (M, 1, H*Dh)
}

/// The keys and values before the new rows' in [`candle_attention`].
pub enum Kv<'a> {
    /// None: training without a prefix.
    None,
    /// A cache and the layer: the new rows are appended, attention reads all of its.
    Cache((&'a mut KvCache, usize)),
    /// Prefix tuning's keys (with RoPE) and values (1, Hkv, N, Dh), without a cache.
    Prefix((&'a Tensor, &'a Tensor)),
}

/// Attention from candle's ops (differentiable; the reference the fused paths are tested
/// against): q (B, T, H*Dh), k and v (B, T, Hkv*Dh) -> (B, T, H*Dh).
#[allow(clippy::too_many_arguments)]
pub fn candle_attention(
    heads: Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    kv: Kv,
) -> Result<Tensor> {
    let Heads { h, hkv, dh } = heads;
    let (b, t, _) = q.dims3()?;
    let g = h / hkv;
    let q = q.reshape((b, t, h, dh))?.transpose(1, 2)?; // (B, H, T, Dh)
    let k = k.reshape((b, t, hkv, dh))?.transpose(1, 2)?; // (B, Hkv, T, Dh)
    let v = v.reshape((b, t, hkv, dh))?.transpose(1, 2)?; // (B, Hkv, T, Dh)
    let q = rope::rope(&q, cos, sin)?;
    let k = rope::rope(&k, cos, sin)?;
    let f16_cache = matches!(&kv, Kv::Cache((c, _)) if c.rounds_to_f16());
    let (k, v) = match kv {
        Kv::Cache((cache, layer)) => cache.append(layer, &k, &v)?, // (B, Hkv, S, Dh)
        Kv::None => (k, v.contiguous()?),
        Kv::Prefix((pk, pv)) => {
            // (1, Hkv, N, Dh) before (B, Hkv, T, Dh): (B, Hkv, N+T, Dh)
            let (n, kv_dtype) = (pk.dim(2)?, k.dtype());
            let before = |p: &Tensor| -> Result<Tensor> {
                Ok(p.to_dtype(kv_dtype)?
                    .broadcast_as((b, hkv, n, dh))?
                    .contiguous()?)
            };
            (
                Tensor::cat(&[&before(pk)?, &k.contiguous()?], 2)?,
                Tensor::cat(&[&before(pv)?, &v.contiguous()?], 2)?,
            )
        }
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
    // Query head j*G + g reads KV head j (HF `repeat_kv` repeats each KV head G times), so
    // grouping the G query heads of a KV head along the row axis needs no K/V copies.
    let q = q.contiguous()?.reshape((b, hkv, g * t, dh))?; // (B, Hkv, G*T, Dh)
    let scale = 1.0 / (dh as f64).sqrt();
    let att = q.matmul(&k.t()?)?; // (B, Hkv, G*T, S)
    let att = softmax::causal_softmax(&att, scale, t, mask, v.dtype())?;
    let att = round(att)?;
    // v: contiguous, or the cache's narrowed view whose rows are (matmul takes its strides).
    let y = att.matmul(&v)?; // (B, Hkv, G*T, Dh)
    let y = y
        .reshape((b, h, t, dh))?
        .transpose(1, 2)?
        .reshape((b, t, h * dh))?; // (B, T, H*Dh)
    Ok(y)
}
