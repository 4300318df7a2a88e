//! The instruction sets the packed kernels run on, detected once, and the one integer step
//! that differs between them: `u8 · i8` products, four per 32-bit lane, accumulated.
//!
//! AVX2 has `maddubs` (pairs into saturating int16) then `madd` (pairs of those into int32);
//! the kernels accumulate a few `maddubs` in int16 where the magnitudes allow and widen then.
//! AVX-VNNI (Intel since Alder Lake / Sapphire Rapids, AMD Zen 5) and AVX512-VNNI with 256-bit
//! vectors (AMD Zen 4, Intel server parts since Ice Lake) have `vpdpbusd`, which does all of
//! it into int32 in one instruction. The integer sums are the same, so every path gives the
//! same bits; the kernels are written once over [`Dot`] and instantiated per instruction set
//! in `format.rs`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// A kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    /// AVX2 + AVX-VNNI (VEX `vpdpbusd`).
    AvxVnni,
    /// AVX2 + AVX512-VNNI/VL (EVEX `vpdpbusd` on 256-bit vectors).
    Avx512Vnni,
}

impl Isa {
    /// The best path this CPU has; `LLAMA3_ISA=portable|avx2|avxvnni|avx512vnni` picks a
    /// lesser one (for comparisons; a path the CPU lacks falls back to the best it has).
    pub fn detected() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let all = Isa::available();
            let best = all.last().copied().unwrap_or(Isa::Portable);
            let asked = std::env::var("LLAMA3_ISA").ok();
            asked
                .and_then(|a| all.into_iter().find(|i| i.name() == a.to_ascii_lowercase()))
                .unwrap_or(best)
        })
    }

    /// Every path this CPU can run, the portable one first.
    pub fn available() -> Vec<Isa> {
        let mut out = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            out.push(Isa::Avx2);
            if is_x86_feature_detected!("avxvnni") {
                out.push(Isa::AvxVnni);
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                out.push(Isa::Avx512Vnni);
            }
        }
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }
}

/// `acc += Σ_4 w_u8 · x_i8` per 32-bit lane, in the accumulator form of an instruction set.
///
/// # Safety
/// Every method needs its instruction set (AVX2; AVX-VNNI or AVX512-VNNI/VL for those
/// impls): call them only from code compiled for it, on a CPU that has it (`Isa::available`).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::missing_safety_doc)] // the trait's doc says it for every method
pub trait Dot {
    /// Into the narrow accumulator: int16 pairs on AVX2 (the caller bounds the magnitudes and
    /// widens in time), int32 with VNNI.
    unsafe fn acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
    /// A narrow accumulator as int32 lanes.
    unsafe fn widen(acc: __m256i) -> __m256i;
    /// Straight into int32 lanes (products too large to add in int16).
    unsafe fn acc32(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
    /// Two products added in int16 (each at most 16383 in magnitude), then into int32 lanes.
    unsafe fn pair32(acc: __m256i, w1: __m256i, x1: __m256i, w2: __m256i, x2: __m256i) -> __m256i;
    /// A narrow accumulator as int32 lanes times a per-lane scale given as `pair`: the scale
    /// (a signed 16-bit value) in both halves of each 32-bit lane (`scale_pair`). AVX2 does it
    /// in the widening `madd`; VNNI multiplies its int32 lanes.
    unsafe fn scaled(acc: __m256i, pair: __m256i) -> __m256i;
}

/// 8 scales (one per 32-bit lane, sign-extended) as `Dot::scaled` takes them.
///
/// # Safety
/// AVX2 (as every `Dot` method).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn scale_pair(v: __m256i) -> __m256i {
    _mm256_or_si256(
        _mm256_and_si256(v, _mm256_set1_epi32(0xffff)),
        _mm256_slli_epi32(v, 16),
    )
}

#[cfg(target_arch = "x86_64")]
pub struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Dot for Avx2 {
    #[inline(always)]
    unsafe fn acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x))
    }
    #[inline(always)]
    unsafe fn widen(acc: __m256i) -> __m256i {
        _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn acc32(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi32(acc, Self::widen(_mm256_maddubs_epi16(w, x)))
    }
    #[inline(always)]
    unsafe fn pair32(acc: __m256i, w1: __m256i, x1: __m256i, w2: __m256i, x2: __m256i) -> __m256i {
        let p = _mm256_add_epi16(_mm256_maddubs_epi16(w1, x1), _mm256_maddubs_epi16(w2, x2));
        _mm256_add_epi32(acc, Self::widen(p))
    }
    #[inline(always)]
    unsafe fn scaled(acc: __m256i, pair: __m256i) -> __m256i {
        _mm256_madd_epi16(acc, pair)
    }
}

#[cfg(target_arch = "x86_64")]
pub struct AvxVnni;

#[cfg(target_arch = "x86_64")]
impl Dot for AvxVnni {
    #[inline(always)]
    unsafe fn acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, w, x)
    }
    #[inline(always)]
    unsafe fn widen(acc: __m256i) -> __m256i {
        acc
    }
    #[inline(always)]
    unsafe fn acc32(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, w, x)
    }
    #[inline(always)]
    unsafe fn pair32(acc: __m256i, w1: __m256i, x1: __m256i, w2: __m256i, x2: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, w1, x1), w2, x2)
    }
    #[inline(always)]
    unsafe fn scaled(acc: __m256i, pair: __m256i) -> __m256i {
        _mm256_mullo_epi32(acc, _mm256_srai_epi32(pair, 16))
    }
}

#[cfg(target_arch = "x86_64")]
pub struct Avx512Vnni;

#[cfg(target_arch = "x86_64")]
impl Dot for Avx512Vnni {
    #[inline(always)]
    unsafe fn acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, x)
    }
    #[inline(always)]
    unsafe fn widen(acc: __m256i) -> __m256i {
        acc
    }
    #[inline(always)]
    unsafe fn acc32(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, x)
    }
    #[inline(always)]
    unsafe fn pair32(acc: __m256i, w1: __m256i, x1: __m256i, w2: __m256i, x2: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, w1, x1), w2, x2)
    }
    #[inline(always)]
    unsafe fn scaled(acc: __m256i, pair: __m256i) -> __m256i {
        _mm256_mullo_epi32(acc, _mm256_srai_epi32(pair, 16))
    }
}
