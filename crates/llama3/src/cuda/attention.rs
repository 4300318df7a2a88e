//! Decode attention on a GPU in two launches per layer (`kernels/decode_attention.cu`): RoPE
//! on q and k, the new K/V rows into the cache and causal attention over it in splits of 64
//! keys, then the splits merged, for one new token per sequence. It stands in for ~10 candle
//! ops of that step (each a launch and an allocation), which bound a small model's decode
//! speed on a GPU.
//!
//! Dims: B sequences (one cache, all at position `pos`), H query heads, Hkv KV heads, Dh head
//! dim, C cache capacity.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{DevicePtr, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{bail, CudaStorage, CustomOp3, Layout, Shape, Tensor};

use super::{alloc, cuda, grid, on_gpu, ptr, rows};
use crate::kv::{Heads, KvCache};
use crate::Result;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode_attention.ptx"));
const MODULE: &str = "llama3_decode_attention";
/// The kernel's SPLIT, 32 * MAX_DPL, MAX_G, MAX_GD.
const SPLIT: usize = 64;
const MAX_DH: usize = 256;
const MAX_G: usize = 8;
const MAX_GD: usize = 1024;

/// Whether a one-token step with these shapes and this activation runs the kernel: our
/// kernels take `x` ([`super::takes`]) and the kernel's block takes the head shapes.
pub fn applies(heads: Heads, x: &Tensor) -> bool {
    let g = heads.h / heads.hkv.max(1);
    super::takes(x)
        && heads.hkv > 0
        && heads.h.is_multiple_of(heads.hkv)
        && heads.dh.is_multiple_of(2)
        && heads.dh <= MAX_DH
        && g <= MAX_G
        && g * heads.dh <= MAX_GD
}

/// q (B, H*Dh), k and v (B, Hkv*Dh) — rows may be views with a stride (of a fused
/// projection) — and cos, sin (1, Dh/2) of position `cache.pos()` in q's dtype: writes k (with
/// RoPE) and v into `layer` of `cache` at that position and returns the attention output
/// (B, H*Dh) in q's dtype. The caller advances the cache after the last layer.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    heads: Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    cache: &KvCache,
    layer: usize,
) -> Result<Tensor> {
    cache.reserve(1)?;
    let (kc, vc) = cache.layer(layer)?;
    let op = DecodeAttention {
        heads,
        kc: kc.clone(),
        vc: vc.clone(),
        cos: cos.to_dtype(q.dtype())?.contiguous()?,
        sin: sin.to_dtype(q.dtype())?.contiguous()?,
        pos: cache.pos(),
        round_q: cache.rounds_to_f16(),
    };
    Ok(q.apply_op3_no_bwd(k, v, &op)?)
}

struct DecodeAttention {
    heads: Heads,
    /// The layer's cache buffers (B, Hkv, C, Dh), written in place through their storage.
    kc: Tensor,
    vc: Tensor,
    cos: Tensor,
    sin: Tensor,
    pos: usize,
    /// f16 cache under f32 activations: queries and probabilities rounded to f16.
    round_q: bool,
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "llama3-decode-attention"
    }

    super::gpu_only!(a b c);

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Heads { h, hkv, dh } = self.heads;
        let (b, q_rs) = rows(ql, h * dh, "q")?;
        let (bk, k_rs) = rows(kl, hkv * dh, "k")?;
        let (bv, v_rs) = rows(vl, hkv * dh, "v")?;
        let cache_dims = self.kc.dims();
        if bk != b || bv != b || cache_dims.len() != 4 || cache_dims[..2] != [b, hkv] {
            bail!("decode attention: {b} rows of q, {bk} of k, {bv} of v, cache {cache_dims:?}");
        }
        let cap = cache_dims[2];
        if cache_dims[3] != dh || self.vc.dims() != cache_dims || self.pos >= cap {
            bail!(
                "decode attention: cache {cache_dims:?} cannot take position {}",
                self.pos
            );
        }
        if self.cos.elem_count() != dh / 2 || self.sin.elem_count() != dh / 2 {
            bail!(
                "decode attention: RoPE tables of {} values for a head of {dh}",
                dh / 2
            );
        }
        let (kcs, kco) = on_gpu(&self.kc, "the K cache")?;
        let (vcs, vco) = on_gpu(&self.vc, "the V cache")?;
        let (coss, coso) = on_gpu(&self.cos, "cos")?;
        let (sins, sino) = on_gpu(&self.sin, "sin")?;
        let dev = q.device.clone();
        let stream = dev.cuda_stream();
        let y = alloc(&dev, q.dtype(), b * h * dh)?;
        let g = h / hkv;
        let nsplit = (self.pos + 1).div_ceil(SPLIT);
        // SAFETY: the first kernel writes every split's sums, max and sum before the second
        // reads them.
        // One buffer: the splits' sums (B, Hkv, P, G*Dh), then their max and sum (.., G, 2).
        let n_part = b * hkv * nsplit * g * dh;
        let scratch = unsafe { dev.alloc::<f32>(n_part + b * hkv * nsplit * g * 2)? };
        {
            let (qp, xk, _gq) = ptr(&q.slice, ql.start_offset(), &stream)?;
            let (kp, kk, _gk) = ptr(&k.slice, kl.start_offset(), &stream)?;
            let (vp, vk, _gv) = ptr(&v.slice, vl.start_offset(), &stream)?;
            let (cp, cosk, _gc) = ptr(&cuda(&coss)?.slice, coso, &stream)?;
            let (sp, sink, _gs) = ptr(&cuda(&sins)?.slice, sino, &stream)?;
            let (kcp, ck, _gkc) = ptr(&cuda(&kcs)?.slice, kco, &stream)?;
            let (vcp, vck, _gvc) = ptr(&cuda(&vcs)?.slice, vco, &stream)?;
            let (yp, _, _gy) = ptr(&y, 0, &stream)?;
            let (pp, _gp) = scratch.device_ptr(&stream);
            let mp = pp + 4 * n_part as u64;
            if [kk, vk, cosk, sink] != [xk; 4] || vck != ck {
                bail!("decode attention: q, k, v, cos and sin must share a dtype, K and V too");
            }
            let (q_rs, k_rs, v_rs) = (q_rs as i64, k_rs as i64, v_rs as i64);
            let ints = [hkv, g, dh, cap, self.pos].map(|x| x as i32);
            let scale = 1.0 / (dh as f32).sqrt();
            let round_q = self.round_q as i32;
            let func = dev.get_or_load_custom_func("decode_attention", MODULE, PTX)?;
            let mut bld = func.builder();
            for p in [&qp, &kp, &vp] {
                bld.arg(p);
            }
            for rs in [&q_rs, &k_rs, &v_rs] {
                bld.arg(rs);
            }
            for p in [&cp, &sp, &kcp, &vcp, &pp, &mp] {
                bld.arg(p);
            }
            for i in &ints {
                bld.arg(i);
            }
            bld.arg(&scale);
            for i in [&xk, &ck, &round_q] {
                bld.arg(i);
            }
            let cfg = grid(nsplit, hkv, b);
            // SAFETY: the arguments match the kernel's signature (three pointers, three i64
            // strides, six pointers, five i32, one f32, three i32); the shapes were checked
            // above, so every access stays inside the buffers.
            unsafe { bld.launch(cfg) }.w()?;

            let func = dev.get_or_load_custom_func("decode_attention_combine", MODULE, PTX)?;
            let mut bld = func.builder();
            for p in [&pp, &mp, &yp] {
                bld.arg(p);
            }
            let ints = [hkv, g, dh, nsplit].map(|x| x as i32);
            for i in &ints {
                bld.arg(i);
            }
            bld.arg(&xk);
            let cfg = grid(hkv, b, 1);
            // SAFETY: three pointers, five i32, as the kernel declares; sizes as allocated.
            unsafe { bld.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage {
                slice: y,
                device: dev,
            },
            Shape::from((b, h * dh)),
        ))
    }
}
