//! Tests of the packed kernels (`packed.rs`). Their speed: `crates/llama3/benches/quant.rs`.

mod unit {
    use super::super::*;
    use crate::quant::isa::Isa;
    use crate::quant::q8::BlockQ8;
    use crate::quant::x8;

    use crate::quant::test_data as data;

    fn blocks(p: &Packed) -> Kind {
        match p.format() {
            Format::Blocks(k) => k,
            Format::F16 | Format::Super(_) | Format::Iq(_) => panic!("not a block format of 32"),
        }
    }

    fn weight(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> QTensor {
        let w = Tensor::from_vec(data(n * k, seed), (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, dtype).unwrap()
    }

    #[test]
    fn packing_is_lossless_and_rows_dequantize() {
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::F16,
        ] {
            let q = weight(dtype, 24, 96, 1);
            let p = Packed::new(&q).unwrap().unwrap();
            assert_eq!(p.to_qtensor().unwrap().data().unwrap(), q.data().unwrap());
            let deq = q.dequantize(&Device::Cpu).unwrap();
            let rows = p.rows(&[5, 0, 23]).unwrap();
            let want = deq
                .index_select(&Tensor::new(&[5u32, 0, 23], &Device::Cpu).unwrap(), 0)
                .unwrap();
            let diff = (rows - want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{dtype:?}");
            assert!(p.rows(&[24]).is_err());
        }
        // Rows not a multiple of 8: not packed (the row kernels take them).
        assert!(Packed::new(&weight(GgmlDType::Q4_1, 20, 64, 2))
            .unwrap()
            .is_none());
    }

    /// Against the f32 product of the dequantized weight and against the row-dot kernels.
    #[test]
    fn gemm_matches_references() {
        let (n, k) = (48, 320);
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let q = weight(dtype, n, k, 3);
            let p = Packed::new(&q).unwrap().unwrap();
            let kind = blocks(&p);
            for m in [1, 3, 4, 70] {
                let x = data(m * k, 4 + m as u64);
                let got = p.gemm(&x, m);
                let rows = crate::quant::gemm(kind, &x, &q.data().unwrap(), m, k, n);
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let deq = q.dequantize(&Device::Cpu).unwrap();
                let dense = xt.matmul(&deq.t().unwrap()).unwrap();
                let dense = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for i in 0..m * n {
                    // Same integer sums, floats added in another order.
                    assert!((got[i] - rows[i]).abs() < 1e-4, "{dtype:?} m={m} {i}");
                    // 8-bit activations: relative error ~1e-2 of |y| ~ sqrt(k)/3.
                    assert!((got[i] - dense[i]).abs() < 0.1, "{dtype:?} m={m} {i}");
                }
            }
        }
    }

    /// Several weights in one pass give each weight's own product, bit for bit.
    #[test]
    fn gemm_many_equals_each_gemm() {
        let k = 96;
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::F16,
        ] {
            let ws: Vec<Packed> = [(16, 1), (40, 2), (8, 3)]
                .iter()
                .map(|&(n, seed)| Packed::new(&weight(dtype, n, k, seed)).unwrap().unwrap())
                .collect();
            let refs: Vec<&Packed> = ws.iter().collect();
            for m in [1, 6] {
                let x = data(m * k, 9);
                let many = gemm_many(&refs, &x, m);
                for (w, y) in ws.iter().zip(&many) {
                    assert!(*y == w.gemm(&x, m), "{dtype:?} m={m}");
                }
            }
            // Different K: refused.
            let other = Packed::new(&weight(dtype, 8, 64, 4)).unwrap().unwrap();
            assert!(gemm_many(&[&ws[0], &other], &data(k, 1), 1).is_empty());
        }
    }

    /// F16: against the f32 product of the same values; rows alone = in a batch = portable.
    #[test]
    fn f16_gemm_matches_dense_and_is_batch_invariant() {
        let (n, k) = (24, 77);
        let q = weight(GgmlDType::F16, n, k, 11);
        let p = Packed::new(&q).unwrap().unwrap();
        assert_eq!(p.format(), Format::F16);
        let deq = q.dequantize(&Device::Cpu).unwrap();
        let m = 9;
        let x = data(m * k, 12);
        let got = p.gemm(&x, m);
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        let dense = xt.matmul(&deq.t().unwrap()).unwrap();
        let dense = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..m * n {
            assert!(
                (got[i] - dense[i]).abs() < 1e-4,
                "{i}: {} vs {}",
                got[i],
                dense[i]
            );
        }
        for j in 0..m {
            let one = p.gemm(&x[j * k..(j + 1) * k], 1);
            assert!(one == got[j * n..(j + 1) * n], "row {j}");
        }
        let xs: [&[f32]; 4] = std::array::from_fn(|i| &x[i * k..][..k]);
        let (mut simd, mut scalar) = ([[0f32; 8]; 4], [[0f32; 8]; 4]);
        let isa = Isa::detected();
        kernel_f16(&p.data[..k * x8::F16_GROUP], xs, &mut simd, isa);
        kernel_f16(&p.data[..k * x8::F16_GROUP], xs, &mut scalar, Isa::Portable);
        assert_eq!(simd, scalar);
    }

    /// A row's result is bit-identical alone, in a batch, and on the portable path.
    #[test]
    fn rows_do_not_depend_on_the_batch_or_the_path() {
        let (n, k, m) = (16, 256, 9);
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let p = Packed::new(&weight(dtype, n, k, 5)).unwrap().unwrap();
            let x = data(m * k, 6);
            let all = p.gemm(&x, m);
            for j in 0..m {
                let one = p.gemm(&x[j * k..(j + 1) * k], 1);
                assert!(one == all[j * n..(j + 1) * n], "{dtype:?} row {j}");
            }
            let kb = k / 32;
            let xq: Vec<BlockQ8> = x
                .chunks_exact(k)
                .flat_map(|r| blocks(&p).quantize(r))
                .collect();
            let xs: [&[BlockQ8]; 4] = std::array::from_fn(|i| &xq[i * kb..][..kb]);
            let w = &p.data[..kb * p.kind.group_bytes()];
            let f = p.format();
            crate::quant::format::every_path_agrees(f, |isa, out| kernel(f, w, xs, out, isa));
            // 8 rows per call (AVX-512 machines' prompts).
            let xs: [&[BlockQ8]; 8] = std::array::from_fn(|i| &xq[i * kb..][..kb]);
            crate::quant::format::every_path_agrees(f, |isa, out| kernel(f, w, xs, out, isa));
        }
    }

    /// Q4_0 and Q5_0 at the ends of their range: quants 0 and 15 (31) against activations of
    /// +-127 (even rows are the int16 sums' near-worst case, 31 quants of 15 (31) per block
    /// against x = +127; the offset of 8 (16) comes off exactly), odd M, K = 96 and 608.
    #[test]
    fn q4_0_and_q5_0_extremes_match_dense() {
        for (dtype, k) in [
            (GgmlDType::Q4_0, 96),
            (GgmlDType::Q4_0, 608),
            (GgmlDType::Q5_0, 96),
            (GgmlDType::Q5_0, 608),
        ] {
            let n = 16;
            // d = -1/8 (-1/16) per block: 1 -> 0, 0 -> 8 (16), -1 -> 15 (31).
            let w: Vec<f32> = (0..n * k)
                .map(|i| match ((i / k) % 2, i % k) {
                    (0, j) if j % 32 == 0 => 1.0,
                    (0, _) => -1.0,
                    (_, j) => [1.0, -1.0, 0.0, 1.0, 1.0][(j / 3 + i / k) % 5],
                })
                .collect();
            let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let p = Packed::new(&q).unwrap().unwrap();
            let deq = q.dequantize(&Device::Cpu).unwrap();
            for (m, sign) in [(1, 1.0f32), (5, -1.0)] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| sign * (1.0 - (m > 1 && i % 7 == 0) as u8 as f32 * 2.0))
                    .collect();
                let got = p.gemm(&x, m);
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let dense = xt.matmul(&deq.t().unwrap()).unwrap();
                let dense = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                // x = +-1 becomes q = +-127 with d = f16(1/127): the integer sums are exact, so
                // the product is the dense one times 127 d, up to f32 rounding.
                let scale = 127.0 * half::f16::from_f32(1.0 / 127.0).to_f32();
                for i in 0..m * n {
                    let want = dense[i] * scale;
                    assert!(
                        (got[i] - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{dtype:?} k={k} m={m} {i}: {} vs {}",
                        got[i],
                        dense[i]
                    );
                }
            }
        }
    }
}
