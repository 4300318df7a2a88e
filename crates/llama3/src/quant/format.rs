//! The packed weight formats (`Format`): their sizes, their activation blocks, the one place
//! that picks each format's kernel, and the packing of GGUF blocks into blocks of 8 rows
//! (layouts: `packed.rs` for blocks of 32, `kquant.rs`, `iq4.rs`).

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::iq4::{self, Iq4};
use super::isa::{self, Isa};
use super::kquant::{self, Super};
use super::q8::{quantize_row_q8_0, quantize_row_q8_k, BlockQ8, BlockQ8K};
#[cfg(target_arch = "x86_64")]
use super::x8_k;
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

    /// Whether the kernels take activation super-blocks of 256 (`BlockQ8K`: the K-quants and
    /// IQ4_XS) rather than blocks of 32.
    pub(super) fn takes_superblocks(self) -> bool {
        matches!(self, Format::Super(_) | Format::Iq(Iq4::Xs))
    }

    /// `quantize` for the formats that take super-blocks.
    pub(super) fn quantize_k(x: &[f32], k: usize, m: usize) -> Vec<BlockQ8K> {
        match m {
            0..4 => x.chunks_exact(k).flat_map(quantize_row_q8_k).collect(),
            _ => x
                .par_chunks_exact(k)
                .flat_map_iter(quantize_row_q8_k)
                .collect(),
        }
    }
}

pub(super) fn kernel_f16<const R: usize>(
    w: &[u8],
    x: [&[f32]; R],
    out: &mut [[f32; 8]; R],
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: AVX2/FMA/F16C were detected (every SIMD path has them); the kernel checks
        // the slice lengths.
        unsafe { x8::f16_avx2(w, x, out) };
        return;
    }
    let _ = isa;
    x8::f16_scalar(w, x, out)
}

/// The kernel of a block format (every format but F16) on path `isa`: 8 columns of `R` rows.
/// Every path gives the same bits (the same integer sums, the same float work).
pub(super) fn kernel<const R: usize>(
    format: Format,
    w: &[u8],
    x: [&[BlockQ8]; R],
    out: &mut [[f32; 8]; R],
    isa: Isa,
) {
    // SAFETY: `isa` is one `Isa::available` found on this CPU (the features of each entry
    // point); the kernels check the slice lengths.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match isa {
            Isa::Avx2 => return simd_avx2(format, w, x, out),
            Isa::AvxVnni => return simd_avxvnni(format, w, x, out),
            Isa::Avx512Vnni => return simd_avx512vnni(format, w, x, out),
            Isa::Portable => {}
        }
    }
    let _ = isa;
    match format {
        Format::Blocks(Kind::Q4_0) => x8::q4_0_scalar(w, x, out),
        Format::Blocks(Kind::Q4_1) => x8::q4_1_scalar(w, x, out),
        Format::Blocks(Kind::Q5_0) => x8_q5::q5_scalar::<R, false>(w, x, out),
        Format::Blocks(Kind::Q5_1) => x8_q5::q5_scalar::<R, true>(w, x, out),
        Format::Blocks(Kind::Q8_0) => x8::q8_0_scalar(w, x, out),
        Format::Iq(Iq4::Nl) => iq4::nl_scalar(w, x, out),
        // Not reached: F16 takes f32 activations (`kernel_f16`), the others super-blocks
        // (`kernel_k`).
        Format::Super(_) | Format::Iq(Iq4::Xs) | Format::F16 => *out = [[f32::NAN; 8]; R],
    }
}

/// The kernel of a format that takes activation super-blocks (`Format::takes_superblocks`),
/// as `kernel`.
pub(super) fn kernel_k<const R: usize>(
    format: Format,
    w: &[u8],
    x: [&[BlockQ8K]; R],
    out: &mut [[f32; 8]; R],
    isa: Isa,
) {
    // SAFETY: as in `kernel`.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match isa {
            Isa::Avx2 => return simd_k_avx2(format, w, x, out),
            Isa::AvxVnni => return simd_k_avxvnni(format, w, x, out),
            Isa::Avx512Vnni => return simd_k_avx512vnni(format, w, x, out),
            Isa::Portable => {}
        }
    }
    let _ = isa;
    match format {
        Format::Super(Super::Q4K) => kquant::q4k_scalar::<R, false>(w, x, out),
        Format::Super(Super::Q5K) => kquant::q4k_scalar::<R, true>(w, x, out),
        Format::Super(Super::Q6K) => kquant::q6k_scalar(w, x, out),
        Format::Iq(Iq4::Xs) => iq4::xs_scalar(w, x, out),
        // Not reached: the formats of `kernel` and `kernel_f16`.
        Format::Blocks(_) | Format::Iq(Iq4::Nl) | Format::F16 => *out = [[f32::NAN; 8]; R],
    }
}

/// One entry point per SIMD path: the kernels (generic over the path's `Dot`, always
/// inlined) compiled with its target features.
macro_rules! simd_entry {
    ($name:ident, $name_k:ident, $features:literal, $dot:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(
            format: Format,
            w: &[u8],
            x: [&[BlockQ8]; R],
            out: &mut [[f32; 8]; R],
        ) {
            match format {
                Format::Blocks(Kind::Q4_0) => x8::q4_0::<$dot, R>(w, x, out),
                Format::Blocks(Kind::Q4_1) => x8::q4_1::<$dot, R>(w, x, out),
                Format::Blocks(Kind::Q5_0) => x8_q5::q5::<$dot, R, false>(w, x, out),
                Format::Blocks(Kind::Q5_1) => x8_q5::q5::<$dot, R, true>(w, x, out),
                Format::Blocks(Kind::Q8_0) => x8::q8_0::<$dot, R>(w, x, out),
                Format::Iq(Iq4::Nl) => iq4::nl_simd::<$dot, R>(w, x, out),
                Format::Super(_) | Format::Iq(Iq4::Xs) | Format::F16 => *out = [[f32::NAN; 8]; R],
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name_k<const R: usize>(
            format: Format,
            w: &[u8],
            x: [&[BlockQ8K]; R],
            out: &mut [[f32; 8]; R],
        ) {
            match format {
                Format::Super(Super::Q4K) => x8_k::q4k::<$dot, R, false>(w, x, out),
                Format::Super(Super::Q5K) => x8_k::q4k::<$dot, R, true>(w, x, out),
                Format::Super(Super::Q6K) => x8_k::q6k::<$dot, R>(w, x, out),
                Format::Iq(Iq4::Xs) => iq4::xs_simd::<$dot, R>(w, x, out),
                Format::Blocks(_) | Format::Iq(Iq4::Nl) | Format::F16 => *out = [[f32::NAN; 8]; R],
            }
        }
    };
}

simd_entry!(simd_avx2, simd_k_avx2, "avx2,fma,f16c", isa::Avx2);
simd_entry!(
    simd_avxvnni,
    simd_k_avxvnni,
    "avx2,fma,f16c,avxvnni",
    isa::AvxVnni
);
simd_entry!(
    simd_avx512vnni,
    simd_k_avx512vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    isa::Avx512Vnni
);

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

/// Runs `format`'s kernel on every path this CPU has and checks that each gives the portable
/// result bit for bit; reports the paths it could not run as skipped.
#[cfg(test)]
pub(super) fn every_path_agrees<const R: usize>(
    format: Format,
    run: impl Fn(Isa, &mut [[f32; 8]; R]),
) -> [[f32; 8]; R] {
    let mut want = [[0f32; 8]; R];
    run(Isa::Portable, &mut want);
    let have = Isa::available();
    for isa in [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni] {
        if !have.contains(&isa) {
            let test = format!("quant kernel paths ({format:?})");
            llama3_testutil::skip(&test, &format!("{} not on this CPU", isa.name()));
            continue;
        }
        let mut got = [[0f32; 8]; R];
        run(isa, &mut got);
        assert_eq!(got, want, "{format:?} on {}", isa.name());
    }
    want
}
