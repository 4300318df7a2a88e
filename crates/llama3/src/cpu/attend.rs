//! Attention with a KV cache on the CPU as one fused loop: RoPE on q and k, K/V written into
//! the cache (rounded to f16 when the cache keeps f16), causal `softmax(q·Kᵀ/√Dh)·V` per head
//! (`sdpa.rs`). One shape covers every use: the new positions of N sequences that have their
//! own caches, T_i rows each — one row per sequence for a batched decode step, T rows of one
//! sequence for a prompt (chunk), or both mixed when a server prefills new prompts in the
//! same forward as it decodes the running ones. It replaces ~15 candle ops per layer (each
//! with its own dispatch and allocation) and the masked square of scores; every row goes
//! through the same code whatever else is in the batch, so a sequence's result does not
//! depend on it.
//!
//! Numerics follow the candle path it replaces: HF half-rotation RoPE, f32 dot products,
//! softmax with the max subtracted, and with an f16 cache the query and the probabilities
//! rounded to f16 (as llama.cpp's f16 K/V matmuls do).

use candle_core::{CpuStorage, Device, InplaceOp2, Layout, Storage, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::sdpa;
use crate::kv::{Heads, KvCache, SeqRows};
use crate::{Error, Result};

/// Positions of one sequence per attention task (tasks are (sequence, KV head, positions)
/// triples, so a lone sequence's heads and a long prompt's rows share the cores too).
const TASK_POSITIONS: usize = 8;

/// q (M, H*Dh), k and v (M, Hkv*Dh): the new rows of N sequences, `seqs[i].t` of them for
/// sequence i, in order (M = Σ T_i). Appends each sequence's k, v to `caches[i]` at `layer`
/// and returns the causal attention output (M, H*Dh). The caller advances the caches.
pub fn attend(
    heads: Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqs: &[SeqRows],
    caches: &mut [&mut KvCache],
    layer: usize,
) -> Result<Tensor> {
    let Heads { h, hkv, dh } = heads;
    let half = dh / 2;
    let mut q = q.flatten_all()?.to_vec1::<f32>()?; // (M, H, Dh)
    let mut k = k.flatten_all()?.to_vec1::<f32>()?; // (M, Hkv, Dh)
    let v = v.flatten_all()?.to_vec1::<f32>()?; // (M, Hkv, Dh)
    let m: usize = seqs.iter().map(|s| s.t).sum();
    if q.len() != m * h * dh || k.len() != m * hkv * dh || v.len() != k.len() {
        return Err(Error::Input("fused attention: shapes do not match".into()));
    }
    if seqs.len() != caches.len()
        || seqs
            .iter()
            .any(|s| s.t == 0 || s.cos.len() != s.t * half || s.sin.len() != s.cos.len())
    {
        return Err(Error::Input(
            "fused attention: sequences, caches and RoPE tables do not match".into(),
        ));
    }
    // RoPE, then every sequence's new K/V rows into its cache: one task per sequence (each
    // writes its own cache).
    let mut parts = Vec::with_capacity(seqs.len());
    let (mut qs, mut ks, mut vs) = (&mut q[..], &mut k[..], &v[..]);
    for (s, c) in seqs.iter().zip(caches.iter_mut()) {
        let (qi, qrest) = std::mem::take(&mut qs).split_at_mut(s.t * h * dh);
        let (ki, krest) = std::mem::take(&mut ks).split_at_mut(s.t * hkv * dh);
        let (vi, vrest) = vs.split_at(s.t * hkv * dh);
        (qs, ks, vs) = (qrest, krest, vrest);
        parts.push((s, &mut **c, qi, ki, vi));
    }
    let firsts = parts
        .into_par_iter()
        .map(|(s, c, qi, ki, vi)| -> Result<usize> {
            for i in 0..s.t {
                let (cos, sin) = (&s.cos[i * half..][..half], &s.sin[i * half..][..half]);
                let (qr, kr) = (
                    &mut qi[i * h * dh..][..h * dh],
                    &mut ki[i * hkv * dh..][..hkv * dh],
                );
                prepare(heads, qr, kr, cos, sin, c.rounds_to_f16());
            }
            let first = c.pos();
            write_rows(c, layer, ki, vi)?;
            Ok(first)
        })
        .collect::<Result<Vec<usize>>>()?;
    // (T_i, Hkv, G*Dh) -> (Hkv, T_i, G*Dh) per sequence: a task's query rows (the G heads of
    // a KV head at each of its positions) contiguous.
    let g = h / hkv;
    // One row per sequence (a decode step): already in that layout.
    let single = seqs.iter().all(|s| s.t == 1);
    let qh = match single {
        true => std::borrow::Cow::Borrowed(&q[..]),
        false => std::borrow::Cow::Owned(transpose_heads(&q, seqs, hkv, g * dh, false)),
    };
    let mut out = vec![0f32; q.len()]; // (Hkv, T_i, G*Dh) per sequence
    let mut tasks = Vec::new(); // (sequence, KV head, first position, offset, output rows)
    let (mut rest, mut at) = (&mut out[..], 0);
    for (i, s) in seqs.iter().enumerate() {
        for j in 0..hkv {
            for t0 in (0..s.t).step_by(TASK_POSITIONS) {
                let len = TASK_POSITIONS.min(s.t - t0) * g * dh;
                let (o, tail) = std::mem::take(&mut rest).split_at_mut(len);
                rest = tail;
                tasks.push((i, j, t0, at, o));
                at += len;
            }
        }
    }
    let caches: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
    tasks.into_par_iter().try_for_each_init(
        Vec::new,
        |scratch, (i, j, t0, at, o)| -> Result<()> {
            let c = caches[i];
            let (cap, round) = (c.rows(), c.rounds_to_f16());
            with_cache(c, layer, |kv| {
                let qr = &qh[at..][..o.len()];
                attend_group(&kv, heads, j, cap, qr, firsts[i] + t0, round, o, scratch);
                Ok(())
            })
        },
    )?;
    let y = match single {
        true => out,
        false => transpose_heads(&out, seqs, hkv, g * dh, true), // (M, H, Dh)
    };
    Ok(Tensor::from_vec(y, (m, h * dh), &Device::Cpu)?)
}

/// Row-major (T_i, H, D) blocks of each sequence to head-major (H, T_i, D), or back with
/// `back`.
fn transpose_heads(x: &[f32], seqs: &[SeqRows], h: usize, d: usize, back: bool) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let mut base = 0;
    for s in seqs {
        for i in 0..s.t {
            for hh in 0..h {
                let rows = (base + (i * h + hh) * d, base + (hh * s.t + i) * d);
                let (from, to) = if back { (rows.1, rows.0) } else { rows };
                y[to..][..d].copy_from_slice(&x[from..][..d]);
            }
        }
        base += s.t * h * d;
    }
    y
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
        pos: c.pos(),
        round: c.rounds_to_f16(),
    };
    let rows = |x: &[f32]| Tensor::from_slice(x, (t, hkv * dh), &Device::Cpu);
    kc.inplace_op2(&rows(k)?, &op)?;
    vc.inplace_op2(&rows(v)?, &op)?;
    Ok(())
}

/// The K and V buffers of one layer, (Hkv, R, Dh) each (R: `KvCache::rows`).
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

/// `sdpa::attend` for the rows `q` of KV head `j`: (position, query head of the group)
/// pairs, G per position from `first` on, from whichever element type the cache holds.
#[allow(clippy::too_many_arguments)]
fn attend_group(
    kv: &KvSlices,
    heads: Heads,
    j: usize,
    cap: usize,
    q: &[f32],
    first: usize,
    round: bool,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (dh, g) = (heads.dh, heads.h / heads.hkv);
    let at = j * cap * dh;
    match kv {
        KvSlices::F32(k, v) => {
            sdpa::attend(q, first, g, &k[at..], &v[at..], dh, round, out, scratch)
        }
        KvSlices::F16(k, v) => {
            sdpa::attend(q, first, g, &k[at..], &v[at..], dh, round, out, scratch)
        }
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

/// Writes (T, Hkv*Dh) rows into a (1, Hkv, R, Dh) cache buffer from `pos` on.
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
