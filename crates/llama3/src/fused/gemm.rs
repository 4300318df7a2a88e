//! f32 matrix products into caller-owned buffers, over the `gemm` crate (the kernels candle's
//! CPU matmul uses), with strides so transposes are free. Bounds are checked here, so the
//! one `unsafe` call stays inside.

use crate::{Error, Result};

/// A (rows, cols) matrix in `data`: element (i, j) at `i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major (rows, cols).
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, without a copy.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m, n) = a (m, k) @ b (k, n)`, plus the old `dst` when `accumulate`; `dst` row-major
/// with `m * n` elements. Threads: rayon's pool.
pub fn gemm(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) -> Result<()> {
    gemm_with(dst, a, b, accumulate, true)
}

/// [`gemm`] on the calling thread alone when not `parallel` (inside a parallel task).
pub fn gemm_with(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool, parallel: bool) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || dst.len() != m * n || !a.fits() || !b.fits() {
        return Err(Error::Input(format!(
            "gemm: ({m}, {k}) x ({}, {n}) into {} elements",
            b.rows,
            dst.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let par = match parallel && threads > 1 {
        true => gemm::Parallelism::Rayon(threads),
        false => gemm::Parallelism::None,
    };
    // SAFETY: every index the product touches is in bounds: a and b were checked by `fits`,
    // dst holds m * n elements with row stride n; the three buffers are distinct borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_transposes_and_accumulation() {
        // a (2, 3), b (3, 2) given as the transpose of a row-major (2, 3).
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bt = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut c = vec![0.0; 4];
        gemm(&mut c, Mat::rows(&a, 2, 3), Mat::rows(&bt, 2, 3).t(), false).unwrap();
        assert_eq!(c, vec![-2.0, 4.0, -2.0, 13.0]);
        gemm(&mut c, Mat::rows(&a, 2, 3), Mat::rows(&bt, 2, 3).t(), true).unwrap();
        assert_eq!(c, vec![-4.0, 8.0, -4.0, 26.0]);
        assert!(gemm(&mut c, Mat::rows(&a, 2, 3), Mat::rows(&a, 2, 3), false).is_err());
        assert!(gemm(
            &mut c[..3],
            Mat::rows(&a, 2, 3),
            Mat::rows(&bt, 2, 3).t(),
            false
        )
        .is_err());
    }
}
