//! GGUF weights repacked eight rows at a time, for the kernels in `x8.rs`.
//!
//! A (N, K) weight of Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 blocks becomes N/8 groups; a group is K/32 "blocks of 8",
//! each holding block `b` of the group's 8 rows (c = 0..8 below); F16 is the same with blocks
//! of one element:
//!
//! ```text
//! Q4_0 (144 bytes): d[c] f16 x 8 | 4 x 32 bytes of nibbles as Q4_1's
//! Q4_1 (160 bytes): d[c] f16 x 8 | m[c] f16 x 8 | 4 x 32 bytes: byte 4c+j of vector v is
//!                   byte 4v+j of row c's nibbles (low nibble: element 4v+j, high: 16+4v+j)
//! Q5_0 (176 bytes): d[c] f16 x 8 | qh[c] u32 x 8 (bits regrouped, `x8_q5::spread`) | nibbles
//!                   as Q4_1's (Q5_1, 192: d, m, ...)
//! Q8_0 (272 bytes): d[c] f16 x 8 | 8 x 32 bytes: byte 4c+j of vector s is element 4s+j of row c
//! F16  (16 bytes):  element k of row c at 2c
//! ```
//!
//! In general the GGUF block's f16 header fields go first, field i of row c at 16i + 2c, and
//! then its payload in 4-byte pieces, piece v of row c at 16h + 32v + 4c (h header fields).
//!
//! It is a permutation of the GGUF bytes (the same size, lossless: `to_qtensor` gives the
//! original back), done once at load. Weight rows of a group are then read as one stream and
//! every load feeds 8 output columns.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

pub use super::format::Format;
use super::format::{kernel, kernel_f16, kernel_k, pack_block, unpack_block};
use super::iq4::Iq4;
use super::isa::Isa;
use super::q8::{BlockQ8, BlockQ8K};
#[cfg(target_arch = "x86_64")]
use super::{amx, amx_blk, amx_k};
use super::{q4_0, q4_1, q5, q8_0, Kind, SyncPtr};
use crate::{Error, Result};

#[derive(Debug)]
pub struct Packed {
    kind: Format,
    /// [out, in] = [n, k]
    shape: [usize; 2],
    data: Vec<u8>,
}

/// Activation rows per tile: the tile's quantized rows stay in L2 while a task's weight
/// groups stream past them.
const X_TILE: usize = 64;
/// Groups of 8 weight rows per parallel task.
const GROUPS_PER_TASK: usize = 4;

impl Packed {
    /// Whether a weight of `dtype` and `dims` can be packed: a type with kernels here, rows a
    /// multiple of 8.
    pub fn supports(dtype: GgmlDType, dims: &[usize]) -> bool {
        Format::of(dtype).is_some_and(
            |f| matches!(dims, [n, k] if n % 8 == 0 && k % f.block_elems() == 0 && *k > 0),
        )
    }

    /// Repacks CPU tensor `q` (see the module docs); `None` when [`Packed::supports`] says no.
    pub fn new(q: &QTensor) -> Result<Option<Self>> {
        if !matches!(q.device(), Device::Cpu) {
            return Ok(None);
        }
        Self::from_raw(q.dtype(), q.shape().dims(), &q.data()?)
    }

    /// Repacks GGUF bytes `raw` of a (N, K) tensor of `dtype`.
    pub fn from_raw(dtype: GgmlDType, dims: &[usize], raw: &[u8]) -> Result<Option<Self>> {
        match Format::of(dtype) {
            Some(f) if Self::supports(dtype, dims) => Self::pack(f, dims, raw).map(Some),
            _ => Ok(None),
        }
    }

    /// Repacks GGUF bytes `raw` of a (N, K) IQ4 tensor (types candle cannot hold, so this is
    /// their only form): rows must be a multiple of 8.
    pub fn from_iq4(iq: Iq4, dims: &[usize], raw: &[u8]) -> Result<Self> {
        match dims {
            [n, k] if n % 8 == 0 && k % iq.block_elems() == 0 && *k > 0 => {
                Self::pack(Format::Iq(iq), dims, raw)
            }
            _ => Err(Error::Unsupported(format!(
                "{} weight of shape {dims:?}: our IQ4 kernels take matrices with rows a \
                 multiple of 8 and columns a multiple of {}",
                iq.name(),
                iq.block_elems()
            ))),
        }
    }

    fn pack(kind: Format, dims: &[usize], raw: &[u8]) -> Result<Self> {
        let &[n, k] = dims else {
            return Err(Error::Input(format!("packed weight of shape {dims:?}")));
        };
        let kb = k / kind.block_elems();
        let (bb, gb) = (kind.block_bytes(), kind.group_bytes());
        if raw.len() != n * kb * bb {
            return Err(Error::Input(format!(
                "quantized weight ({n}, {k}): {} bytes of data, expected {}",
                raw.len(),
                n * kb * bb
            )));
        }
        let mut data = vec![0u8; n / 8 * kb * gb];
        data.par_chunks_mut(kb * gb)
            .enumerate()
            .for_each(|(g, dst)| {
                for (b, dst) in dst.chunks_exact_mut(gb).enumerate() {
                    for c in 0..8 {
                        let src = &raw[((g * 8 + c) * kb + b) * bb..][..bb];
                        pack_block(kind, src, dst, c);
                    }
                }
            });
        Ok(Self {
            kind,
            shape: [n, k],
            data,
        })
    }

    pub fn format(&self) -> Format {
        self.kind
    }

    /// GGUF's name of the weight's type.
    pub fn type_name(&self) -> &'static str {
        self.kind.name()
    }

    fn dtype(&self) -> Result<GgmlDType> {
        self.kind.dtype().ok_or_else(|| {
            Error::Unsupported(format!("{} weights have no candle type", self.type_name()))
        })
    }

    /// All rows in GGUF's block layout.
    fn raw(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.data.len());
        for r in 0..self.n() {
            self.row_blocks(r, &mut raw);
        }
        raw
    }

    /// (out, in)
    pub fn dims(&self) -> (usize, usize) {
        (self.shape[0], self.shape[1])
    }

    pub(super) fn n(&self) -> usize {
        self.shape[0]
    }

    fn k(&self) -> usize {
        self.shape[1]
    }

    /// [out, in]
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The packed bytes of group `g` (rows 8g..8g + 8).
    pub(super) fn group_data(&self, g: usize) -> &[u8] {
        let size = self.k() / self.kind.block_elems() * self.kind.group_bytes();
        &self.data[g * size..][..size]
    }

    /// Row `r` in GGUF's block layout.
    fn row_blocks(&self, r: usize, out: &mut Vec<u8>) {
        let kb = self.k() / self.kind.block_elems();
        let (bb, gb) = (self.kind.block_bytes(), self.kind.group_bytes());
        let group = &self.data[r / 8 * kb * gb..][..kb * gb];
        let start = out.len();
        out.resize(start + kb * bb, 0);
        for (b, src) in group.chunks_exact(gb).enumerate() {
            unpack_block(self.kind, src, &mut out[start + b * bb..][..bb], r % 8);
        }
    }

    /// The original GGUF tensor (the inverse of the packing, bit for bit).
    pub fn to_qtensor(&self) -> Result<QTensor> {
        let storage = candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Owned(self.raw()),
            &Device::Cpu,
            self.dtype()?,
        )?;
        Ok(QTensor::new(storage, (self.n(), self.k()))?)
    }

    /// (N, K) f32.
    pub fn dequantize(&self) -> Result<Tensor> {
        if let Format::Iq(iq) = self.kind {
            let mut out = Vec::with_capacity(self.n() * self.k());
            iq.dequantize(&self.raw(), &mut out);
            return Ok(Tensor::from_vec(out, (self.n(), self.k()), &Device::Cpu)?);
        }
        Ok(self.to_qtensor()?.dequantize(&Device::Cpu)?)
    }

    /// Rows `ids` as f32, (ids.len(), K): an embedding lookup.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        let mut out = Vec::with_capacity(ids.len() * self.k());
        let mut blocks = Vec::new();
        for &id in ids {
            let r = id as usize;
            if r >= self.n() {
                return Err(Error::Input(format!(
                    "token id {r} outside the embedding table ({} rows)",
                    self.n()
                )));
            }
            if matches!(self.kind, Format::Super(_)) {
                self.row_blocks(r, &mut blocks); // all rows, dequantized by candle below
                continue;
            }
            blocks.clear();
            self.row_blocks(r, &mut blocks);
            match self.kind {
                Format::Blocks(Kind::Q4_0) => q4_0::dequantize(&blocks, &mut out),
                Format::Blocks(Kind::Q4_1) => q4_1::dequantize(&blocks, &mut out),
                Format::Blocks(Kind::Q5_0) => q5::dequantize(&blocks, false, &mut out),
                Format::Blocks(Kind::Q5_1) => q5::dequantize(&blocks, true, &mut out),
                Format::Blocks(Kind::Q8_0) => q8_0::dequantize(&blocks, &mut out),
                Format::F16 => out.extend(
                    blocks
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                Format::Iq(iq) => iq.dequantize(&blocks, &mut out),
                Format::Super(_) => {}
            }
        }
        if let Format::Super(_) = self.kind {
            let storage = candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Owned(blocks),
                &Device::Cpu,
                self.dtype()?,
            )?;
            let q = QTensor::new(storage, (ids.len(), self.k()))?;
            return Ok(q.dequantize(&Device::Cpu)?);
        }
        Ok(Tensor::from_vec(out, (ids.len(), self.k()), &Device::Cpu)?)
    }

    /// `y (M, N) = x (M, K) @ W^T`.
    pub fn gemm(&self, x: &[f32], m: usize) -> Vec<f32> {
        gemm_many(&[self], x, m).pop().unwrap_or_default()
    }

    /// `x @ W^T` for (.., K) f32 `x` on the CPU -> (.., N).
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        match matmul_many(&[self], x)?.and_then(|mut ys| ys.pop()) {
            Some(y) => Ok(y),
            None => Err(Error::Input("packed matmul: no product".into())),
        }
    }
}

/// `y_i (M, N_i) = x (M, K) @ W_i^T` for weights of one format and K (q/k/v, gate/up): the
/// activations are quantized once and all products run in one parallel pass. Weights that
/// differ in format or K are refused (empty result).
pub fn gemm_many(ws: &[&Packed], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let Some(first) = ws.first() else {
        return Vec::new();
    };
    let (format, k) = (first.kind, first.k());
    if ws.iter().any(|w| w.kind != format || w.k() != k) {
        return Vec::new();
    }
    let isa = Isa::detected();
    match format {
        Format::F16 => drive(ws, x, k, m, &F16Kernel(isa)),
        f if f.takes_superblocks() => {
            let xq = Format::quantize_k(x, k, m);
            let kernel = SuperKernel(format, isa);
            #[cfg(target_arch = "x86_64")]
            if m >= amx::MIN_ROWS && amx::takes(format) && amx::available() {
                // K-quants and IQ4_XS (`amx_xs.rs`).
                return amx_k::gemm_k(ws, &xq, k / 256, m, &kernel);
            }
            drive(ws, &xq, k / 256, m, &kernel)
        }
        _ => {
            let xq = format.quantize(x, k, m);
            let kernel = BlockKernel(format, isa);
            #[cfg(target_arch = "x86_64")]
            if m >= amx::MIN_ROWS && amx::takes(format) && amx::available() {
                return amx_blk::gemm(format, ws, (&xq, k / 32), m, &kernel);
            }
            drive(ws, &xq, k / 32, m, &kernel)
        }
    }
}

/// A format's kernel on one path, for `drive`: 8 columns of `R` activation rows of `A`.
pub(super) trait Tile<A>: Sync {
    fn run<const R: usize>(&self, w: &[u8], x: [&[A]; R], out: &mut [[f32; 8]; R]);
    /// Whether calls of 8 rows pay (AVX-512's 32 vector registers hold their accumulators).
    fn rows8(&self) -> bool;
}

struct F16Kernel(Isa);
struct BlockKernel(Format, Isa);
pub(super) struct SuperKernel(pub(super) Format, pub(super) Isa);

impl Tile<f32> for F16Kernel {
    fn run<const R: usize>(&self, w: &[u8], x: [&[f32]; R], out: &mut [[f32; 8]; R]) {
        kernel_f16(w, x, out, self.0)
    }
    fn rows8(&self) -> bool {
        false
    }
}

impl Tile<BlockQ8> for BlockKernel {
    fn run<const R: usize>(&self, w: &[u8], x: [&[BlockQ8]; R], out: &mut [[f32; 8]; R]) {
        kernel(self.0, w, x, out, self.1)
    }
    fn rows8(&self) -> bool {
        self.1 == Isa::Avx512Vnni
    }
}

impl Tile<BlockQ8K> for SuperKernel {
    fn run<const R: usize>(&self, w: &[u8], x: [&[BlockQ8K]; R], out: &mut [[f32; 8]; R]) {
        kernel_k(self.0, w, x, out, self.1)
    }
    fn rows8(&self) -> bool {
        false // measured slower: their 3-4 accumulators per row do not fit 8 rows
    }
}

/// `x @ W_i^T` for (.., K) f32 `x` on the CPU and packed weights of one format and K (see
/// [`gemm_many`]); `None` when they differ.
pub fn matmul_many(ws: &[&Packed], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
    let Some(first) = ws.first() else {
        return Ok(Some(Vec::new()));
    };
    let k = first.k();
    let dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        return Err(Error::Input(format!(
            "matmul of {:?} with a ({}, {}) weight",
            dims,
            first.n(),
            k
        )));
    }
    let m = x.elem_count() / k;
    // Read in place (no copy of the activations) when f32 and contiguous, as they are.
    let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let ys = {
        let (st, l) = x.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*st else {
            return Err(Error::Input(
                "packed matmul: the input is not on the CPU".into(),
            ));
        };
        gemm_many(ws, &v[l.start_offset()..][..m * k], m)
    };
    if ys.len() != ws.len() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(ys.len());
    for (y, w) in ys.into_iter().zip(ws) {
        let mut out_dims = dims.clone();
        if let Some(last) = out_dims.last_mut() {
            *last = w.n();
        }
        out.push(Tensor::from_vec(y, out_dims, &Device::Cpu)?);
    }
    Ok(Some(out))
}

/// The tiling shared by every format: rows `xs` of `stride` activations (quantized blocks or
/// f32) against each weight of `ws`, 8 or 4 rows per kernel call and the rest one by one.
/// Tasks are runs of a weight's groups of 8 rows, all weights' in one parallel pass.
fn drive<A: Sync>(
    ws: &[&Packed],
    xs: &[A],
    stride: usize,
    m: usize,
    kernel: &impl Tile<A>,
) -> Vec<Vec<f32>> {
    column_tasks(ws, m, GROUPS_PER_TASK, |wt, g0, (out, n)| {
        let gsize = wt.k() / wt.kind.block_elems() * wt.kind.group_bytes();
        let gs = g0..(g0 + GROUPS_PER_TASK).min(n / 8);
        for j0 in (0..m).step_by(X_TILE) {
            let j1 = (j0 + X_TILE).min(m);
            for g in gs.clone() {
                let w = &wt.data[g * gsize..][..gsize];
                group_rows(kernel, w, xs, stride, j0..j1, (out, n, g));
            }
        }
    })
}

/// The outputs of `m` rows against each weight of `ws`, and the one parallel pass that fills
/// them: a task per run of `step` groups of 8 weight rows (`task(w, g, (out, n))` from group
/// g of weight w, `out` its output of `n` columns), all weights' tasks together. Each task
/// must write every element of its columns.
pub(super) fn column_tasks(
    ws: &[&Packed],
    m: usize,
    step: usize,
    task: impl Fn(&Packed, usize, (SyncPtr, usize)) + Sync,
) -> Vec<Vec<f32>> {
    // Not zeroed: the tasks write every element before the lengths are set.
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(m * w.n())).collect();
    let outs: Vec<SyncPtr> = ys.iter_mut().map(|y| SyncPtr(y.as_mut_ptr())).collect();
    // (weight, first group) of every task
    let tasks: Vec<(usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(i, w)| (0..w.n() / 8).step_by(step).map(move |g| (i, g)))
        .collect();
    tasks
        .par_iter()
        .with_min_len(if m < 4 { 4 } else { 1 })
        .for_each(|&(i, g)| task(ws[i], g, (outs[i], ws[i].n())));
    for (y, w) in ys.iter_mut().zip(ws) {
        // SAFETY: the tasks covered every (row, group of 8 columns) of every weight, so all
        // m * n elements were written (f32 has no invalid bit patterns either way).
        unsafe { y.set_len(m * w.n()) };
    }
    ys
}

/// Activation rows `rows` (of `stride` blocks each in `xs`) against weight group `g` (`w`, 8
/// rows) into columns 8g..8g + 8 of `out` (`n` wide): 8 or 4 rows per kernel call, the rest
/// one by one. The caller owns those outputs.
#[inline(always)]
pub(super) fn group_rows<A>(
    kernel: &impl Tile<A>,
    w: &[u8],
    xs: &[A],
    stride: usize,
    rows: std::ops::Range<usize>,
    (out, n, g): (SyncPtr, usize, usize),
) {
    // R rows from j: the kernel's tile stored into row j + i, columns 8g..8g + 8.
    fn tile<A, const R: usize>(
        kernel: &impl Tile<A>,
        w: &[u8],
        xs: &[A],
        stride: usize,
        j: usize,
        (out, n, g): (SyncPtr, usize, usize),
    ) {
        let rows: [&[A]; R] = std::array::from_fn(|i| &xs[(j + i) * stride..][..stride]);
        let mut t = [[0f32; 8]; R];
        kernel.run(w, rows, &mut t);
        for (i, row) in t.iter().enumerate() {
            // SAFETY: the caller owns these outputs; (j + i) < m, 8g + 8 <= n.
            unsafe { store(out, (j + i) * n + 8 * g, row) };
        }
    }
    let (mut j, rows8) = (rows.start, kernel.rows8());
    while rows8 && j + 8 <= rows.end {
        tile::<A, 8>(kernel, w, xs, stride, j, (out, n, g));
        j += 8;
    }
    while j + 4 <= rows.end {
        tile::<A, 4>(kernel, w, xs, stride, j, (out, n, g));
        j += 4;
    }
    for j in j..rows.end {
        tile::<A, 1>(kernel, w, xs, stride, j, (out, n, g));
    }
}

/// # Safety
/// `at + 8` elements from `out` must be in bounds and written by no one else.
unsafe fn store(out: SyncPtr, at: usize, row: &[f32; 8]) {
    std::ptr::copy_nonoverlapping(row.as_ptr(), out.get().add(at), 8);
}

#[cfg(test)]
#[path = "packed_tests.rs"]
mod tests;
