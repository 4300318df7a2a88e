//! Decode attention on a GPU in two launches per layer (`kernels/decode_attention.cu`): RoPE
//! on q and k, the new K/V rows into the cache and causal attention over it in splits of 64
//! keys, then the splits merged, for one new token per sequence. It stands in for ~10 candle
//! ops of that step (each a launch and an allocation), which bound a small model's decode
//! speed on a GPU. The kernel's logic is
//! tested on the CPU (`tests/cuda_kernels.rs`); the GPU suite checks the launches.
//!
//! Dims: B sequences (one cache, all at position `pos`), H query heads, Hkv KV heads, Dh head
//! dim, C cache capacity.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{
    CudaStream, DevicePtr, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use candle_core::cuda::{CudaStorageSlice, WrapErr};
use candle_core::{
    bail, CudaDevice, CudaStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor,
};

use super::cache::KvCache;
use super::decode::Heads;
use crate::Result;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode_attention.ptx"));
const MODULE: &str = "llama3_decode_attention";
/// The kernel's NWARPS * 32, SPLIT, 32 * MAX_DPL, MAX_G, MAX_GD.
const THREADS: u32 = 256;
const SPLIT: usize = 64;
const MAX_DH: usize = 256;
const MAX_G: usize = 8;
const MAX_GD: usize = 1024;

static ENABLED: OnceLock<AtomicBool> = OnceLock::new();

fn enabled() -> &'static AtomicBool {
    // LLAMA3_FUSED_DECODE=0 keeps candle's ops (to compare, or to work around a driver issue).
    ENABLED.get_or_init(|| {
        AtomicBool::new(std::env::var("LLAMA3_FUSED_DECODE").map_or(true, |v| v != "0"))
    })
}

/// Turns the fused kernel on or off for the whole process (default on; the GPU suite compares
/// both).
pub fn set_enabled(on: bool) {
    enabled().store(on, Ordering::Relaxed);
}

/// Whether a one-token step with these shapes and this activation runs the kernel: on a GPU,
/// inference, f32/bf16/f16, and head shapes the kernel's block takes.
pub fn applies(heads: Heads, x: &Tensor) -> bool {
    let g = heads.h / heads.hkv.max(1);
    x.device().is_cuda()
        && !x.track_op()
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && heads.hkv > 0
        && heads.h.is_multiple_of(heads.hkv)
        && heads.dh.is_multiple_of(2)
        && heads.dh <= MAX_DH
        && g <= MAX_G
        && g * heads.dh <= MAX_GD
        && enabled().load(Ordering::Relaxed)
}

/// q (B, H*Dh), k and v (B, Hkv*Dh) — rows may be views with a stride (of a fused
/// projection) — and cos, sin (1, Dh/2) of position `cache.len()` in q's dtype: writes k (with
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
        pos: cache.len(),
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

/// A device pointer `offset` elements into a float slice, its kind as the kernel numbers
/// them (0 f32, 1 bf16, 2 f16) and the guard that records the use on the stream.
fn ptr<'a>(
    s: &'a CudaStorageSlice,
    offset: usize,
    stream: &'a CudaStream,
) -> candle_core::Result<(u64, i32, SyncOnDrop<'a>)> {
    Ok(match s {
        CudaStorageSlice::F32(x) => {
            let (p, g) = x.device_ptr(stream);
            (p + 4 * offset as u64, 0, g)
        }
        CudaStorageSlice::BF16(x) => {
            let (p, g) = x.device_ptr(stream);
            (p + 2 * offset as u64, 1, g)
        }
        CudaStorageSlice::F16(x) => {
            let (p, g) = x.device_ptr(stream);
            (p + 2 * offset as u64, 2, g)
        }
        _ => bail!("decode attention: f32, bf16 or f16 expected"),
    })
}

fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> candle_core::Result<CudaStorageSlice> {
    // SAFETY: the kernel writes every element before anything reads them.
    Ok(unsafe {
        match dtype {
            DType::F32 => CudaStorageSlice::F32(dev.alloc::<f32>(n)?),
            DType::BF16 => CudaStorageSlice::BF16(dev.alloc::<half::bf16>(n)?),
            DType::F16 => CudaStorageSlice::F16(dev.alloc::<half::f16>(n)?),
            d => bail!("decode attention: {d:?} activations"),
        }
    })
}

/// (B, N) rows of `n` elements, unit stride within a row: B and the row stride.
fn rows(l: &Layout, n: usize, what: &str) -> candle_core::Result<(usize, usize)> {
    let (b, m) = l.shape().dims2()?;
    if m != n || l.stride()[1] != 1 {
        bail!(
            "decode attention: {what} rows of {n} elements expected, got {:?} (strides {:?})",
            l.dims(),
            l.stride()
        );
    }
    Ok((b, l.stride()[0]))
}

/// A contiguous GPU tensor's storage and start offset.
fn on_gpu(t: &Tensor) -> candle_core::Result<(candle_core::StorageRef<'_>, usize)> {
    let (s, l) = t.storage_and_layout();
    if !l.is_contiguous() || !matches!(&*s, Storage::Cuda(_)) {
        bail!("decode attention: cache and RoPE tables must be contiguous on the GPU");
    }
    let o = l.start_offset();
    Ok((s, o))
}

fn cuda(s: &Storage) -> candle_core::Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("decode attention: not on the GPU"),
    }
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "llama3-decode-attention"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        bail!("decode attention: the CUDA kernel runs on a GPU only (the CPU has decode.rs)")
    }

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
        let (kcs, kco) = on_gpu(&self.kc)?;
        let (vcs, vco) = on_gpu(&self.vc)?;
        let (coss, coso) = on_gpu(&self.cos)?;
        let (sins, sino) = on_gpu(&self.sin)?;
        let dev = q.device.clone();
        let stream = dev.cuda_stream();
        let y = alloc(&dev, q.dtype(), b * h * dh)?;
        let g = h / hkv;
        let nsplit = (self.pos + 1).div_ceil(SPLIT);
        // SAFETY: the first kernel writes every split's sums, max and sum before the second
        // reads them.
        let part = unsafe { dev.alloc::<f32>(b * hkv * nsplit * g * dh)? };
        let ml = unsafe { dev.alloc::<f32>(b * hkv * nsplit * g * 2)? };
        {
            let (qp, xk, _gq) = ptr(&q.slice, ql.start_offset(), &stream)?;
            let (kp, kk, _gk) = ptr(&k.slice, kl.start_offset(), &stream)?;
            let (vp, vk, _gv) = ptr(&v.slice, vl.start_offset(), &stream)?;
            let (cp, cosk, _gc) = ptr(&cuda(&coss)?.slice, coso, &stream)?;
            let (sp, sink, _gs) = ptr(&cuda(&sins)?.slice, sino, &stream)?;
            let (kcp, ck, _gkc) = ptr(&cuda(&kcs)?.slice, kco, &stream)?;
            let (vcp, vck, _gvc) = ptr(&cuda(&vcs)?.slice, vco, &stream)?;
            let (yp, _, _gy) = ptr(&y, 0, &stream)?;
            let (pp, _gp) = part.device_ptr(&stream);
            let (mp, _gm) = ml.device_ptr(&stream);
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
            let cfg = LaunchConfig {
                grid_dim: (nsplit as u32, hkv as u32, b as u32),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
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
            let cfg = LaunchConfig {
                grid_dim: (hkv as u32, b as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
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
