//! Training ops fused on the CPU, each a candle custom op with a hand-written backward, so a
//! training step's graph has a few large nodes instead of many element-wise ones (each of
//! which costs candle an allocation, a pass over memory and, in backward, a zeroed gradient
//! buffer plus an add). Results equal the differentiable reference ops within float rounding;
//! the tests here and the HF training goldens check both values and gradients.
//!
//! Dim legend: `N` rows, `D` model dim, `V` vocab.

pub mod attn;
pub mod ce;
pub mod exp;
pub mod gemm;
pub mod linear;
pub mod norm;
pub mod swiglu;

pub use ce::linear_cross_entropy_sum;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};

/// The f32 elements `layout` (contiguous) covers in `storage`.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: expected f32, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Runs `f` on the f32 elements of each of `ts` (contiguous CPU tensors are read in place,
/// others copied first): how the backward passes read their inputs and upstream gradient.
pub(crate) fn with_f32<const N: usize, R>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> candle_core::Result<R> {
    let owned = ts
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.contiguous())
        .collect::<candle_core::Result<Vec<Tensor>>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: Vec<&[f32]> = Vec::with_capacity(N);
    for (storage, layout) in &guards {
        let Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("fused ops run on the CPU");
        };
        slices.push(f32_slice(cpu, layout, "fused op")?);
    }
    match slices.try_into() {
        Ok(slices) => Ok(f(slices)),
        Err(_) => candle_core::bail!("fused op: {N} inputs expected"),
    }
}

/// Elements per parallel task of the element-wise passes.
pub(crate) const CHUNK: usize = 1 << 13;

/// What the fused ops' tests share: a fused result against the candle ops it replaces.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Tensor, Var};

    /// Largest absolute difference of two tensors of one shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all());
        d.and_then(|d| d.to_scalar()).unwrap()
    }

    /// `fused` and `reference` agree within `tol`, and so do the gradients of
    /// `sum(output * upstream)` for each of `vars` (distinct upstream values per element).
    pub fn check(fused: &Tensor, reference: &Tensor, upstream: &Tensor, vars: &[&Var], tol: f32) {
        let d = max_diff(fused, reference);
        assert!(d < tol, "values differ by {d}");
        let grads = |y: &Tensor| {
            (y * upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (gf, gr) = (grads(fused), grads(reference));
        for v in vars {
            let d = max_diff(gf.get(v).unwrap(), gr.get(v).unwrap());
            assert!(d < tol, "gradient differs by {d}");
        }
    }
}
