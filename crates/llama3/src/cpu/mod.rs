//! CPU inference kernels for attention: the fused loop over a KV cache (`attend`) and the
//! per-row scaled dot-product attention it runs (`sdpa`, AVX2 in `sdpa_avx2.rs`); and dense
//! f32 weights times a few rows (`matvec`: decoding an f32 model). Leaves:
//! slices and tensors in and out; `crate::ops::attention` decides when they run.

pub mod attend;
pub mod matvec;
mod sdpa;

pub use sdpa::round_f16;
