//! Tests of the K-quant kernels (`kquant.rs`, `x8_k.rs`) through `Packed`, against candle's
//! dequantization (independent code) and the f32 product of the dequantized weight.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::format::{every_path_agrees, kernel_k};
use super::packed::{gemm_many, Packed};
use super::q8::{quantize_row_q8_k, BlockQ8K};
use super::{test_data as data, Format, Super};

const TYPES: [GgmlDType; 3] = [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K];

fn weight(dtype: GgmlDType, w: Vec<f32>, n: usize, k: usize) -> QTensor {
    let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
    QTensor::quantize(&w, dtype).unwrap()
}

fn dense(x: &[f32], m: usize, q: &QTensor) -> Vec<f32> {
    let (_, k) = q.shape().dims2().unwrap();
    let xt = Tensor::from_vec(x.to_vec(), (m, k), &Device::Cpu).unwrap();
    let deq = q.dequantize(&Device::Cpu).unwrap();
    let y = xt.matmul(&deq.t().unwrap()).unwrap();
    y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `x` as the kernels see it: quantized to Q8_K super-blocks and back.
pub(super) fn requantized(x: &[f32]) -> Vec<f32> {
    quantize_row_q8_k(x)
        .iter()
        .flat_map(|b| b.qs.map(|q| b.d * q as f32))
        .collect()
}

#[test]
fn packing_is_lossless_and_rows_dequantize() {
    for dtype in TYPES {
        let (n, k) = (24, 512);
        let q = weight(dtype, data(n * k, 1), n, k);
        let p = Packed::new(&q).unwrap().unwrap();
        assert!(matches!(p.format(), Format::Super(_)));
        assert_eq!(p.to_qtensor().unwrap().data().unwrap(), q.data().unwrap());
        let deq = q.dequantize(&Device::Cpu).unwrap();
        let ids = [5u32, 0, 23, 5];
        let rows = p.rows(&ids).unwrap();
        let want = deq
            .index_select(&Tensor::new(&ids, &Device::Cpu).unwrap(), 0)
            .unwrap();
        let diff = (rows - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{dtype:?}");
        assert!(p.rows(&[24]).is_err());
        // Rows not a multiple of 8 are not packed (candle's matmul takes them, `info` says so).
        assert!(Packed::new(&weight(dtype, data(20 * k, 2), 20, k))
            .unwrap()
            .is_none());
    }
}

/// Random weights, and weights at the ends of their range (most quants at the maximum, against
/// activations of +-127: the int16 sums' near-worst case) for GEMV and GEMM shapes.
#[test]
fn gemm_matches_the_dense_product() {
    let (n, k) = (40, 768);
    let extreme: Vec<f32> = (0..n * k)
        .map(|i| match ((i / k) % 3, i % k) {
            (0, j) if j % 32 == 0 => -1.0,
            (0, _) | (1, _) => 1.0,
            (_, j) => [1.0, -1.0, 0.0, 0.5][(j / 5 + i / k) % 4],
        })
        .collect();
    for dtype in TYPES {
        for (wname, w) in [("random", data(n * k, 3)), ("extreme", extreme.clone())] {
            let q = weight(dtype, w, n, k);
            let p = Packed::new(&q).unwrap().unwrap();
            for m in [1, 3, 4, 70] {
                let x = match wname {
                    "random" => data(m * k, 4 + m as u64),
                    _ => (0..m * k).map(|i| [1.0, -1.0][(i / k) % 2]).collect(),
                };
                let got = p.gemm(&x, m);
                let exact = dense(&requantized(&x), m, &q);
                let plain = dense(&x, m, &q);
                for i in 0..m * n {
                    // The same activations: f32 rounding only.
                    let tol = 1e-5 * (k as f32) * exact[i].abs().max(1.0);
                    assert!(
                        (got[i] - exact[i]).abs() <= tol,
                        "{dtype:?} {wname} m={m} {i}: {} vs {}",
                        got[i],
                        exact[i]
                    );
                    // 8-bit activations: relative error ~1e-2 of |y| ~ sqrt(k)/3.
                    assert!(
                        (got[i] - plain[i]).abs() < 0.2,
                        "{dtype:?} {wname} m={m} {i}"
                    );
                }
                // Each row alone gives the batch's result, bit for bit.
                for j in [0, m - 1] {
                    let one = p.gemm(&x[j * k..(j + 1) * k], 1);
                    assert!(one == got[j * n..(j + 1) * n], "{dtype:?} row {j}");
                }
            }
        }
    }
}

/// The AVX2 kernels equal the portable ones bit for bit; several weights in one pass equal each
/// weight's own product.
#[test]
fn simd_equals_portable_and_many_equals_each() {
    let k = 512;
    for (dtype, sup) in TYPES.into_iter().zip([Super::Q4K, Super::Q5K, Super::Q6K]) {
        let q = weight(dtype, data(8 * k, 7), 8, k);
        let p = Packed::new(&q).unwrap().unwrap();
        let x = data(6 * k, 8);
        let xq: Vec<BlockQ8K> = x.chunks_exact(k).flat_map(quantize_row_q8_k).collect();
        let xs: [&[BlockQ8K]; 4] = std::array::from_fn(|i| &xq[i * k / 256..][..k / 256]);
        let w = q_bytes(&p);
        let f = Format::Super(sup);
        every_path_agrees(f, |isa, out| kernel_k(f, &w, xs, out, isa));

        let other = Packed::new(&weight(dtype, data(16 * k, 9), 16, k))
            .unwrap()
            .unwrap();
        for m in [1, 6] {
            let many = gemm_many(&[&p, &other], &x[..m * k], m);
            assert!(many[0] == p.gemm(&x[..m * k], m), "{dtype:?} m={m}");
            assert!(many[1] == other.gemm(&x[..m * k], m), "{dtype:?} m={m}");
        }
    }
}

/// The packed bytes of an 8-row weight (one group of 8).
fn q_bytes(p: &Packed) -> Vec<u8> {
    p.group_data(0).to_vec()
}
