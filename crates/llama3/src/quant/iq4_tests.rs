//! Tests of the IQ4 kernels (`iq4.rs`) through `Packed`: packing, the dequantization against
//! gguf-py's (the golden of `scripts/make_iq4_golden.py`), the products against the f32
//! product of the dequantized weight.

use candle_core::{Device, Tensor};

use super::format::{every_path_agrees, kernel, kernel_k, Format};
use super::iq4::Iq4;
use super::packed::{gemm_many, Packed};
use super::q8::{quantize_row_q8_0, quantize_row_q8_k, BlockQ8, BlockQ8K};
use super::test_data as data;

/// GGUF bytes of `n` rows of `k` elements: random indices and scales, d ~ 1/64.
pub(super) fn blocks(iq: Iq4, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let count = n * k / iq.block_elems() * iq.block_bytes();
    let mut s = seed;
    let mut bytes: Vec<u8> = (0..count)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect();
    for (i, b) in bytes.chunks_exact_mut(iq.block_bytes()).enumerate() {
        let d = half::f16::from_f32((1.0 + (i % 7) as f32) / 256.0);
        b[..2].copy_from_slice(&d.to_le_bytes());
    }
    bytes
}

fn dequantized(iq: Iq4, raw: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    iq.dequantize(raw, &mut out);
    out
}

fn dense(x: &[f32], m: usize, w: &[f32], n: usize) -> Vec<f32> {
    let k = w.len() / n;
    let xt = Tensor::from_vec(x.to_vec(), (m, k), &Device::Cpu).unwrap();
    let wt = Tensor::from_vec(w.to_vec(), (n, k), &Device::Cpu).unwrap();
    let y = xt.matmul(&wt.t().unwrap()).unwrap();
    y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn packing_is_lossless_and_rows_dequantize() {
    for iq in [Iq4::Nl, Iq4::Xs] {
        let (n, k) = (16, 512);
        let raw = blocks(iq, n, k, 1);
        let p = Packed::from_iq4(iq, &[n, k], &raw).unwrap();
        assert_eq!(p.format(), Format::Iq(iq));
        assert_eq!(p.type_name(), iq.name());
        let all = p.dequantize().unwrap().flatten_all().unwrap();
        let all = all.to_vec1::<f32>().unwrap();
        assert_eq!(all, dequantized(iq, &raw), "{iq:?}");
        let rows = p.rows(&[3, 15]).unwrap().flatten_all().unwrap();
        let rows = rows.to_vec1::<f32>().unwrap();
        assert_eq!(rows[..k], all[3 * k..4 * k]);
        assert_eq!(rows[k..], all[15 * k..16 * k]);
        assert!(p.rows(&[16]).is_err());
        // No candle type: a clear error, not a panic.
        assert!(p.to_qtensor().is_err());
        // Shapes our kernels do not take are refused with the type's name.
        let e = Packed::from_iq4(iq, &[12, k], &blocks(iq, 12, k, 2)).unwrap_err();
        assert!(e.to_string().contains(iq.name()), "{e}");
        assert!(Packed::from_iq4(iq, &[n, k], &raw[1..]).is_err());
    }
}

/// ggml's dequantization, as gguf-py computes it, for fixed blocks (the golden).
#[test]
fn dequantization_matches_gguf_py() {
    let golden: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/data/iq4_golden.json")).unwrap();
    for (iq, key) in [(Iq4::Nl, "IQ4_NL"), (Iq4::Xs, "IQ4_XS")] {
        let case = &golden[key];
        let hex = case["bytes"].as_str().unwrap();
        let raw: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = dequantized(iq, &raw);
        assert_eq!(got.len(), want.len(), "{key}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs(), "{key} {i}: {g} vs {w}");
        }
    }
}

#[test]
fn gemm_matches_the_dense_product() {
    for iq in [Iq4::Nl, Iq4::Xs] {
        let (n, k) = (24, 768);
        let raw = blocks(iq, n, k, 3);
        let p = Packed::from_iq4(iq, &[n, k], &raw).unwrap();
        let w = dequantized(iq, &raw);
        for m in [1, 3, 4, 70] {
            let x = data(m * k, 4 + m as u64);
            let xq: Vec<f32> = match iq {
                Iq4::Nl => quantize_row_q8_0(&x)
                    .iter()
                    .flat_map(|b| b.qs.map(|q| b.d * q as f32))
                    .collect(),
                Iq4::Xs => super::kquant_tests::requantized(&x),
            };
            let got = p.gemm(&x, m);
            let exact = dense(&xq, m, &w, n);
            for i in 0..m * n {
                let tol = 1e-5 * k as f32 * exact[i].abs().max(1.0);
                assert!((got[i] - exact[i]).abs() <= tol, "{iq:?} m={m} {i}");
            }
            for j in [0, m - 1] {
                assert!(p.gemm(&x[j * k..(j + 1) * k], 1) == got[j * n..(j + 1) * n]);
            }
        }
        // SIMD = portable, bit for bit; one pass over several weights = each alone.
        let x = data(4 * k, 8);
        let g = p.group_data(0);
        let f = Format::Iq(iq);
        match iq {
            Iq4::Nl => {
                let xq: Vec<BlockQ8> = x.chunks_exact(k).flat_map(quantize_row_q8_0).collect();
                let xs: [&[BlockQ8]; 4] = std::array::from_fn(|i| &xq[i * k / 32..][..k / 32]);
                every_path_agrees(f, |isa, out| kernel(f, g, xs, out, isa));
            }
            Iq4::Xs => {
                let xq: Vec<BlockQ8K> = x.chunks_exact(k).flat_map(quantize_row_q8_k).collect();
                let xs: [&[BlockQ8K]; 4] = std::array::from_fn(|i| &xq[i * k / 256..][..k / 256]);
                every_path_agrees(f, |isa, out| kernel_k(f, g, xs, out, isa));
            }
        }
        let other = Packed::from_iq4(iq, &[8, k], &blocks(iq, 8, k, 5)).unwrap();
        let many = gemm_many(&[&p, &other], &x, 4);
        assert!(many[0] == p.gemm(&x, 4) && many[1] == other.gemm(&x, 4));
    }
}
