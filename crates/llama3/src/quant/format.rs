//! The packed weight formats (`Format`): their sizes, their activation blocks, the one place
//! that picks each format's kernel, and the packing of GGUF blocks into blocks of 8 rows
//! (layouts: `packed.rs` for blocks of 32, `kquant.rs`, `iq4.rs`).

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::iq4::{self, Iq4};
use super::kquant::{self, Super};
use super::q8::{quantize_row_q8_0, BlockQ8};
use super::{x8, x8_q5, Kind};

/// What a packed weight holds: GGUF blocks of 32, K-quant super-blocks of 256 or IQ4 blocks
/// (with 8-bit-activation kernels), or f16 values (f32 activations; a GGUF or
/// `quantize --type f16` file's matrices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Blocks(Kind),
    Super(Super),
    Iq(Iq4),
    F16,
}

impl Format {
    pub(super) fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::F16 => Some(Format::F16),
            GgmlDType::Q4K => Some(Format::Super(Super::Q4K)),
            GgmlDType::Q5K => Some(Format::Super(Super::Q5K)),
            GgmlDType::Q6K => Some(Format::Super(Super::Q6K)),
            d => Kind::of(d).map(Format::Blocks),
        }
    }

    /// Elements of a row per block (the packing unit along K).
    pub(super) fn block_elems(self) -> usize {
        match self {
            Format::Blocks(_) => 32,
            Format::Super(_) => kquant::QK,
            Format::Iq(i) => i.block_elems(),
            Format::F16 => 1,
        }
    }

    pub(super) fn block_bytes(self) -> usize {
        match self {
            Format::Blocks(k) => k.block_bytes(),
            Format::Super(s) => s.block_bytes(),
            Format::Iq(i) => i.block_bytes(),
            Format::F16 => 2,
        }
    }

    /// Bytes of one block of 8 rows.
    pub(super) fn group_bytes(self) -> usize {
        match self {
            Format::Blocks(Kind::Q4_0) => x8::Q4_0_GROUP,
            Format::Blocks(Kind::Q4_1) => x8::Q4_1_GROUP,
            Format::Blocks(Kind::Q5_0) => x8_q5::group(1),
            Format::Blocks(Kind::Q5_1) => x8_q5::group(2),
            Format::Blocks(Kind::Q8_0) => x8::Q8_0_GROUP,
            Format::Super(s) => s.group_bytes(),
            Format::Iq(i) => i.group_bytes(),
            Format::F16 => x8::F16_GROUP,
        }
    }

    /// candle's type (none for IQ4).
    pub(super) fn dtype(self) -> Option<GgmlDType> {
        Some(match self {
            Format::Blocks(Kind::Q4_0) => GgmlDType::Q4_0,
            Format::Blocks(Kind::Q4_1) => GgmlDType::Q4_1,
            Format::Blocks(Kind::Q5_0) => GgmlDType::Q5_0,
            Format::Blocks(Kind::Q5_1) => GgmlDType::Q5_1,
            Format::Blocks(Kind::Q8_0) => GgmlDType::Q8_0,
            Format::Super(Super::Q4K) => GgmlDType::Q4K,
            Format::Super(Super::Q5K) => GgmlDType::Q5K,
            Format::Super(Super::Q6K) => GgmlDType::Q6K,
            Format::F16 => GgmlDType::F16,
            Format::Iq(_) => return None,
        })
    }

    /// GGUF's name of the type.
    pub fn name(self) -> &'static str {
        match (self, self.dtype()) {
            (Format::Iq(i), _) => i.name(),
            (_, Some(t)) => crate::weights::gguf::ggml_name(t),
            (_, None) => "?",
        }
    }

    /// Quantizes activation rows (`m` of `k`) to the blocks this format's kernels take, in
    /// parallel when there are several (a batch or a prompt).
    pub(super) fn quantize(self, x: &[f32], k: usize, m: usize) -> Vec<BlockQ8> {
        let one = |r: &[f32]| match self {
            Format::Blocks(kind) => kind.quantize(r),
            _ => quantize_row_q8_0(r),
        };
        match m {
            0..4 => x.chunks_exact(k).flat_map(one).collect(),
            _ => x.par_chunks_exact(k).flat_map_iter(one).collect(),
        }
    }
}

pub(super) fn kernel_f16<const R: usize>(
    w: &[u8],
    x: [&[f32]; R],
    out: &mut [[f32; 8]; R],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2/FMA/F16C were detected; the kernel checks the slice lengths.
        unsafe { x8::f16_avx2(w, x, out) };
        return;
    }
    let _ = avx2;
    x8::f16_scalar(w, x, out)
}

/// The kernel of a block format (every format but F16): 8 columns of `R` rows.
pub(super) fn kernel<const R: usize>(
    format: Format,
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
    avx2: bool,
) {
    match format {
        Format::Blocks(kind) => kernel_32(kind, w, x, out, avx2),
        Format::Super(sup) => kernel_k(sup, w, x, out, avx2),
        Format::Iq(iq) => kernel_iq(iq, w, x, out, avx2),
        // Not reached: F16 takes f32 activations (`kernel_f16`).
        Format::F16 => *out = [[f32::NAN; 8]; R],
    }
}

fn kernel_32<const R: usize>(
    kind: Kind,
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2/FMA/F16C were detected; the kernels check the slice lengths.
        unsafe {
            match kind {
                Kind::Q4_0 => x8::q4_0_avx2(w, x, out),
                Kind::Q4_1 => x8::q4_1_avx2(w, x, out),
                Kind::Q5_0 => x8_q5::q5_avx2::<R, false>(w, x, out),
                Kind::Q5_1 => x8_q5::q5_avx2::<R, true>(w, x, out),
                Kind::Q8_0 => x8::q8_0_avx2(w, x, out),
            }
        }
        return;
    }
    let _ = avx2;
    match kind {
        Kind::Q4_0 => x8::q4_0_scalar(w, x, out),
        Kind::Q4_1 => x8::q4_1_scalar(w, x, out),
        Kind::Q5_0 => x8_q5::q5_scalar::<R, false>(w, x, out),
        Kind::Q5_1 => x8_q5::q5_scalar::<R, true>(w, x, out),
        Kind::Q8_0 => x8::q8_0_scalar(w, x, out),
    }
}

fn kernel_iq<const R: usize>(
    iq: Iq4,
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2/FMA/F16C were detected; the kernels check the slice lengths.
        unsafe {
            match iq {
                Iq4::Nl => iq4::avx2::<R, false>(w, x, out),
                Iq4::Xs => iq4::avx2::<R, true>(w, x, out),
            }
        }
        return;
    }
    let _ = avx2;
    match iq {
        Iq4::Nl => iq4::scalar::<R, false>(w, x, out),
        Iq4::Xs => iq4::scalar::<R, true>(w, x, out),
    }
}

fn kernel_k<const R: usize>(
    sup: Super,
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2/FMA/F16C were detected; the kernels check the slice lengths.
        unsafe {
            match sup {
                Super::Q4K => super::x8_k::q4k_avx2::<R, false>(w, x, out),
                Super::Q5K => super::x8_k::q4k_avx2::<R, true>(w, x, out),
                Super::Q6K => super::x8_k::q6k_avx2(w, x, out),
            }
        }
        return;
    }
    let _ = avx2;
    match sup {
        Super::Q4K => kquant::q4k_scalar::<R, false>(w, x, out),
        Super::Q5K => kquant::q4k_scalar::<R, true>(w, x, out),
        Super::Q6K => kquant::q6k_scalar(w, x, out),
    }
}

/// f16 header fields at the start of a GGUF block (d; d and m for Q4_1 and Q5_1).
fn header_fields(kind: Kind) -> usize {
    match kind {
        Kind::Q4_1 | Kind::Q5_1 => 2,
        Kind::Q4_0 | Kind::Q5_0 | Kind::Q8_0 => 1,
    }
}

/// Row `c`'s GGUF block `src` into the block of 8 `dst` (the module docs' general rule).
pub(super) fn pack_block(kind: Format, src: &[u8], dst: &mut [u8], c: usize) {
    let k = match kind {
        Format::Blocks(k) => k,
        Format::Super(s) => return s.pack(src, dst, c),
        Format::Iq(i) => return i.pack(src, dst, c),
        Format::F16 => return dst[2 * c..2 * c + 2].copy_from_slice(src),
    };
    let h = header_fields(k);
    for i in 0..h {
        dst[16 * i + 2 * c..][..2].copy_from_slice(&src[2 * i..][..2]);
    }
    for (v, piece) in src[2 * h..].chunks_exact(4).enumerate() {
        dst[16 * h + 32 * v + 4 * c..][..4].copy_from_slice(piece);
    }
    if matches!(k, Kind::Q5_0 | Kind::Q5_1) {
        let qh = &mut dst[16 * h + 4 * c..][..4];
        let spread = x8_q5::spread(u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]));
        qh.copy_from_slice(&spread.to_le_bytes());
    }
}

/// The inverse of `pack_block`.
pub(super) fn unpack_block(kind: Format, src: &[u8], dst: &mut [u8], c: usize) {
    let k = match kind {
        Format::Blocks(k) => k,
        Format::Super(s) => return s.unpack(src, dst, c),
        Format::Iq(i) => return i.unpack(src, dst, c),
        Format::F16 => return dst.copy_from_slice(&src[2 * c..2 * c + 2]),
    };
    let h = header_fields(k);
    for i in 0..h {
        dst[2 * i..][..2].copy_from_slice(&src[16 * i + 2 * c..][..2]);
    }
    for (v, piece) in dst[2 * h..].chunks_exact_mut(4).enumerate() {
        piece.copy_from_slice(&src[16 * h + 32 * v + 4 * c..][..4]);
    }
    if matches!(k, Kind::Q5_0 | Kind::Q5_1) {
        let qh = &mut dst[2 * h..][..4];
        let gathered = x8_q5::gather(u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]));
        qh.copy_from_slice(&gathered.to_le_bytes());
    }
}
