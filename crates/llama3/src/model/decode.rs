//! Attention with a KV cache on the CPU as one fused loop: RoPE on q and k, K/V written into
//! the cache (rounded to f16 when the cache keeps f16), causal `softmax(q·Kᵀ/√Dh)·V` per head
//! (`sdpa.rs`). Two shapes: one new position for each of N sequences that have their own
//! caches (decode, alone or batched), and T new positions of one sequence (a prompt or a
//! chunk of one). It replaces ~15 candle ops per layer (each with its own dispatch and
//! allocation) and the masked square of scores; every row goes through the same code, so a
//! sequence's result does not depend on the batch.
//!
//! Numerics follow the candle path it replaces: HF half-rotation RoPE, f32 dot products,
//! softmax with the max subtracted, and with an f16 cache the query and the probabilities
//! rounded to f16 (as llama.cpp's f16 K/V matmuls do).

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::cache::KvCache;
use super::sdpa;
use crate::{Error, Result};

/// Shapes of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub h: usize,
    pub hkv: usize,
    pub dh: usize,
}

/// True when the fused path applies: CPU, f32 activations, no autograd.
pub fn applies(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && !x.track_op()
}

/// q (N, H*Dh), k and v (N, Hkv*Dh) for one new position of each sequence; `rope[i]` =
/// (cos, sin) of sequence i's position, Dh/2 each. Appends k, v to `caches[i]` at `layer` and
/// returns the attention output (N, 1, H*Dh). The caller advances the caches.
pub fn attend(
    heads: Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: &[(Vec<f32>, Vec<f32>)],
    caches: &mut [&mut KvCache],
    layer: usize,
) -> Result<Tensor> {
    let Heads { h, hkv, dh } = heads;
    let n = caches.len();
    let mut q = q.flatten_all()?.to_vec1::<f32>()?; // (N, H, Dh)
    let mut k = k.flatten_all()?.to_vec1::<f32>()?; // (N, Hkv, Dh)
    let v = v.flatten_all()?.to_vec1::<f32>()?; // (N, Hkv, Dh)
    if q.len() != n * h * dh || k.len() != n * hkv * dh || v.len() != k.len() || rope.len() != n {
        return Err(Error::Input("fused attention: shapes do not match".into()));
    }
    // Write every sequence's new K/V row, then attend over each cache.
    let mut lens = Vec::with_capacity(n);
    for (i, c) in caches.iter_mut().enumerate() {
        let (cos, sin) = &rope[i];
        let qi = &mut q[i * h * dh..(i + 1) * h * dh];
        let ki = &mut k[i * hkv * dh..(i + 1) * hkv * dh];
        let pos = c.len();
        prepare(heads, qi, ki, cos, sin, c.rounds_to_f16());
        write_rows(c, layer, ki, &v[i * hkv * dh..(i + 1) * hkv * dh])?;
        lens.push(pos + 1);
    }
    let mut out = vec![0f32; n * h * dh];
    // One task per (sequence, head): a lone sequence's heads share the cores too.
    let caches: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
    out.par_chunks_mut(dh).enumerate().try_for_each_init(
        Vec::new,
        |scratch, (ih, o)| -> Result<()> {
            let (i, hh) = (ih / h, ih % h);
            let c = caches[i];
            let (cap, s, round) = (c.capacity(), lens[i], c.rounds_to_f16());
            with_cache(c, layer, |kv| {
                let qh = &q[ih * dh..][..dh];
                attend_head(&kv, heads, hh, cap, qh, s - 1, round, o, scratch);
                Ok(())
            })
        },
    )?;
    Ok(Tensor::from_vec(out, (n, 1, h * dh), &Device::Cpu)?)
}

/// Rows of a prompt chunk per attention task (tasks are (head, chunk) pairs).
const PREFILL_ROWS: usize = 16;

/// T new positions of one sequence (a prompt or a chunk of one): q (T, H*Dh), k and v
/// (T, Hkv*Dh), `cos`/`sin` (T, Dh/2) row-major. Appends k, v to `cache` at `layer` and returns
/// the causal attention output (1, T, H*Dh). The caller advances the cache.
#[allow(clippy::too_many_arguments)]
pub fn prefill(
    heads: Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &[f32],
    sin: &[f32],
    cache: &mut KvCache,
    layer: usize,
) -> Result<Tensor> {
    let Heads { h, hkv, dh } = heads;
    let mut q = q.flatten_all()?.to_vec1::<f32>()?; // (T, H, Dh)
    let mut k = k.flatten_all()?.to_vec1::<f32>()?; // (T, Hkv, Dh)
    let v = v.flatten_all()?.to_vec1::<f32>()?; // (T, Hkv, Dh)
    let t = q.len() / (h * dh);
    let half = dh / 2;
    if q.len() != t * h * dh || k.len() != t * hkv * dh || v.len() != k.len() {
        return Err(Error::Input("fused attention: shapes do not match".into()));
    }
    if cos.len() != t * half || sin.len() != cos.len() {
        return Err(Error::Input(
            "fused attention: RoPE tables do not match".into(),
        ));
    }
    let round = cache.rounds_to_f16();
    for i in 0..t {
        let (c, s) = (&cos[i * half..][..half], &sin[i * half..][..half]);
        let (qi, ki) = (
            &mut q[i * h * dh..][..h * dh],
            &mut k[i * hkv * dh..][..hkv * dh],
        );
        prepare(heads, qi, ki, c, s, round);
    }
    let pos = cache.len();
    write_rows(cache, layer, &k, &v)?;
    // (T, H, Dh) -> (H, T, Dh): each head's rows contiguous for the kernel.
    let mut qh = vec![0f32; q.len()];
    for (i, row) in q.chunks_exact(h * dh).enumerate() {
        for (hh, x) in row.chunks_exact(dh).enumerate() {
            qh[(hh * t + i) * dh..][..dh].copy_from_slice(x);
        }
    }
    let cap = cache.capacity();
    let mut out = vec![0f32; q.len()]; // (H, T, Dh)
    with_cache(cache, layer, |kv| {
        out.par_chunks_mut(t * dh)
            .enumerate()
            .flat_map(|(hh, o)| {
                o.par_chunks_mut(PREFILL_ROWS * dh)
                    .enumerate()
                    .map(move |(c, o)| (hh, c * PREFILL_ROWS, o))
            })
            .for_each_init(Vec::new, |scratch, (hh, r0, o)| {
                let rows = o.len() / dh;
                let qr = &qh[(hh * t + r0) * dh..][..rows * dh];
                attend_head(&kv, heads, hh, cap, qr, pos + r0, round, o, scratch);
            });
        Ok(())
    })?;
    // (H, T, Dh) -> (T, H*Dh)
    for (hh, oh) in out.chunks_exact(t * dh).enumerate() {
        for (i, x) in oh.chunks_exact(dh).enumerate() {
            q[(i * h + hh) * dh..][..dh].copy_from_slice(x);
        }
    }
    Ok(Tensor::from_vec(q, (1, t, h * dh), &Device::Cpu)?)
}

/// RoPE on one position's q (H*Dh) and k (Hkv*Dh); with an f16 cache the query is rounded
/// too (after RoPE).
fn prepare(heads: Heads, q: &mut [f32], k: &mut [f32], cos: &[f32], sin: &[f32], round: bool) {
    q.chunks_exact_mut(heads.dh)
        .for_each(|x| rotate(x, cos, sin));
    if round {
        sdpa::round_f16(q);
    }
    k.chunks_exact_mut(heads.dh)
        .for_each(|x| rotate(x, cos, sin));
}

/// Writes T rows of k and v (T, Hkv*Dh) at the cache's position in `layer`.
fn write_rows(c: &mut KvCache, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
    let (kc, vc) = c.layer(layer)?;
    let (_, hkv, _, dh) = kc.dims4()?;
    let t = k.len() / (hkv * dh);
    c.reserve(t)?;
    let op = WriteRows {
        pos: c.len(),
        round: c.rounds_to_f16(),
    };
    let rows = |x: &[f32]| Tensor::from_slice(x, (t, hkv * dh), &Device::Cpu);
    kc.inplace_op2(&rows(k)?, &op)?;
    vc.inplace_op2(&rows(v)?, &op)?;
    Ok(())
}

/// The K and V buffers of one layer, (Hkv, capacity, Dh) each.
enum KvSlices<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

/// Runs `f` on the K and V buffers of `layer` (see [`KvSlices`]).
fn with_cache<T>(c: &KvCache, layer: usize, f: impl FnOnce(KvSlices) -> Result<T>) -> Result<T> {
    let (kc, vc) = c.layer(layer)?;
    let (ks, kl) = kc.storage_and_layout();
    let (vs, vl) = vc.storage_and_layout();
    let (ko, vo) = (kl.start_offset(), vl.start_offset());
    match (&*ks, &*vs) {
        (Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) => {
            f(KvSlices::F32(&k[ko..], &v[vo..]))
        }
        (Storage::Cpu(CpuStorage::F16(k)), Storage::Cpu(CpuStorage::F16(v))) => {
            f(KvSlices::F16(&k[ko..], &v[vo..]))
        }
        _ => Err(Error::Input(
            "fused attention needs an f32 or f16 cache on the CPU".into(),
        )),
    }
}

/// `sdpa::attend` for the rows `q` of query head `hh` (KV head `hh / g`), from whichever
/// element type the cache holds.
#[allow(clippy::too_many_arguments)]
fn attend_head(
    kv: &KvSlices,
    heads: Heads,
    hh: usize,
    cap: usize,
    q: &[f32],
    first: usize,
    round: bool,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let dh = heads.dh;
    let at = hh / (heads.h / heads.hkv) * cap * dh;
    match kv {
        KvSlices::F32(k, v) => sdpa::attend(q, first, &k[at..], &v[at..], dh, round, out, scratch),
        KvSlices::F16(k, v) => sdpa::attend(q, first, &k[at..], &v[at..], dh, round, out, scratch),
    }
}

/// HF half rotation in place: pairs (i, i + Dh/2).
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = a * sin[i] + b * cos[i];
    }
}

/// Writes (T, Hkv*Dh) rows into a (1, Hkv, capacity, Dh) cache buffer from `pos` on.
struct WriteRows {
    pos: usize,
    round: bool,
}

impl InplaceOp2 for WriteRows {
    fn name(&self) -> &'static str {
        "kv-write-rows"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<()> {
        let CpuStorage::F32(s) = src else {
            candle_core::bail!("kv-write-rows: f32 rows only");
        };
        let (&[_, hkv, cap, dh], true, true) = (dl.dims(), dl.is_contiguous(), sl.is_contiguous())
        else {
            candle_core::bail!("kv-write-rows: contiguous (1, Hkv, S, Dh) buffers only");
        };
        let t = sl.shape().elem_count() / (hkv * dh);
        if self.pos + t > cap {
            candle_core::bail!("kv-write-rows: {t} rows at {} overflow {cap}", self.pos);
        }
        let s = &s[sl.start_offset()..][..t * hkv * dh];
        let at = |i: usize, hh: usize| dl.start_offset() + (hh * cap + self.pos + i) * dh;
        for (i, src) in s.chunks_exact(hkv * dh).enumerate() {
            for (hh, x) in src.chunks_exact(dh).enumerate() {
                match dst {
                    CpuStorage::F32(d) => {
                        let row = &mut d[at(i, hh)..][..dh];
                        row.copy_from_slice(x);
                        if self.round {
                            sdpa::round_f16(row);
                        }
                    }
                    CpuStorage::F16(d) => {
                        d[at(i, hh)..][..dh].convert_from_f32_slice(x);
                    }
                    _ => candle_core::bail!("kv-write-rows: f32 or f16 caches only"),
                }
            }
        }
        Ok(())
    }
}
