//! Tests of the AMX kernels (`amx_k.rs`, `amx_xs.rs`, `amx_blk.rs`): a prompt-sized product
//! (tiles of 16 rows, the rows past the last tile and a last group of 8 weight rows on the VNNI
//! kernels) equals every row decoded alone by the VNNI kernel, bit for bit, for every format
//! with AMX kernels. The VNNI kernels themselves are checked against the dense product in
//! `kquant_tests.rs`, `packed_tests.rs` and `iq4_tests.rs`.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::iq4::Iq4;
use super::iq4_tests::blocks;
use super::packed::Packed;
use super::{amx, test_data as data};

fn quantized(dtype: GgmlDType, w: Vec<f32>, n: usize, k: usize) -> Packed {
    let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    Packed::new(&q).unwrap().unwrap()
}

/// Weights of every AMX format, n = 40 (two tasks of 16 rows and a last group of 8), K = 768
/// (3 super-blocks, 24 blocks): random, and of ±1 (quants at the ends of their ranges).
fn weights(n: usize, k: usize) -> Vec<(String, Packed)> {
    let mut out = Vec::new();
    for dtype in [
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::Q4_0,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
    ] {
        let random = data(n * k, 11);
        let signs: Vec<f32> = random.iter().map(|v| v.signum()).collect();
        out.push((format!("{dtype:?} random"), quantized(dtype, random, n, k)));
        out.push((format!("{dtype:?} signs"), quantized(dtype, signs, n, k)));
    }
    for iq in [Iq4::Nl, Iq4::Xs] {
        let raw = blocks(iq, n, k, 13);
        out.push((
            format!("{iq:?}"),
            Packed::from_iq4(iq, &[n, k], &raw).unwrap(),
        ));
    }
    out
}

#[test]
fn amx_tiles_equal_rows_alone() {
    if !amx::available() {
        llama3_testutil::skip(
            "amx_tiles_equal_rows_alone",
            "no AMX-INT8 here (or LLAMA3_ISA picks another path)",
        );
        return;
    }
    let (n, k) = (40, 768);
    for (name, p) in weights(n, k) {
        assert!(amx::takes(p.format()), "{name}");
        // One tile (an odd end), two tiles and 13 rows, five tiles.
        for m in [16, 45, 80] {
            let x = data(m * k, 20 + m as u64);
            let got = p.gemm(&x, m);
            for j in 0..m {
                let one = p.gemm(&x[j * k..(j + 1) * k], 1);
                assert!(one == got[j * n..(j + 1) * n], "{name} m={m} row {j}");
            }
        }
    }
}
