//! Speed of the packed CPU kernels (`llama3::quant::Packed`). Measurements, not checks (their
//! correctness is `src/quant/packed_tests.rs`):
//!
//!     cargo bench -p llama3 --bench quant              # packed GEMM against the row-dot kernels
//!     cargo bench -p llama3 --bench quant -- types     # every packed type at one Llama shape
//!     cargo bench -p llama3 --bench quant -- bandwidth # GEMV over ~100 MB against plain reading
//!     cargo bench -p llama3 --bench quant -- prompt q5k # one type at m = 512 for ~3 s (to profile)
//!
//! `cargo test --benches` only builds and starts it; it measures when cargo passes `--bench`.

use std::hint::black_box;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use llama3::quant::{Format, Kind, Packed};
use rayon::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("quant: a benchmark; run it with `cargo bench -p llama3 --bench quant`");
        return;
    }
    if args.iter().any(|a| a == "bandwidth") {
        gemv_bandwidth();
    } else if let Some(i) = args.iter().position(|a| a == "prompt") {
        prompt(args.get(i + 1).map(String::as_str).unwrap_or("q4k"));
    } else if args.iter().any(|a| a == "types") {
        types();
    } else {
        speed();
    }
}

/// Normal random values (the timing does not depend on them).
fn data(len: usize) -> Vec<f32> {
    Tensor::randn(0f32, 1.0, len, &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn weight(dtype: GgmlDType, n: usize, k: usize) -> QTensor {
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    QTensor::quantize(&w, dtype).unwrap()
}

/// Packed GEMM against the row-dot kernels, at decode (m = 1), batch (16) and prompt (512) rows.
fn speed() {
    let (n, k) = (1536, 576);
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let q = weight(dtype, n, k);
        let p = Packed::new(&q).unwrap().unwrap();
        let kind: Kind = match p.format() {
            Format::Blocks(kind) => kind,
            Format::F16 | Format::Super(_) | Format::Iq(_) => {
                unreachable!("{dtype:?} packs as blocks of 32")
            }
        };
        let raw = q.data().unwrap().to_vec();
        for m in [1, 16, 512] {
            let x = data(m * k);
            let reps = 4096 / m;
            let t = Instant::now();
            for _ in 0..reps {
                black_box(p.gemm(&x, m));
            }
            let packed = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..reps {
                black_box(llama3::quant::gemm(kind, &x, &raw, m, k, n));
            }
            let rows = t.elapsed().as_secs_f64();
            let gops = (reps * m * n * k) as f64 * 2e-9;
            println!(
                "{dtype:?} m={m}: packed {:.1} GOP/s, rows {:.1} GOP/s, x{:.2}",
                gops / packed,
                gops / rows,
                rows / packed
            );
        }
    }
}

/// Every packed type on an FFN-sized weight (2816 x 1024, multiples of 256 so K-quants apply)
/// at decode (m = 1) and prompt (512) rows: GOP/s and bytes of weight per element.
fn types() {
    let (n, k) = (2816, 1024);
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::F16,
    ] {
        let q = weight(dtype, n, k);
        let p = Packed::new(&q).unwrap().unwrap();
        let bytes = q.data().unwrap().len() as f64 / (n * k) as f64;
        let mut line = format!("{dtype:?} ({bytes:.3} B/elem):");
        for m in [1, 512] {
            let x = data(m * k);
            let reps = (2048 / m).max(4);
            black_box(p.gemm(&x, m));
            let t = Instant::now();
            for _ in 0..reps {
                black_box(p.gemm(&x, m));
            }
            let gops = (reps * m * n * k) as f64 * 2e-9 / t.elapsed().as_secs_f64();
            line += &format!(" m={m} {gops:.1} GOP/s");
        }
        println!("{line}");
    }
}

/// One type's prompt-sized product (2816 x 1024 weight, m = 512) for ~3 s: GOP/s per second.
fn prompt(name: &str) {
    let dtype = match name.to_ascii_lowercase().as_str() {
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q8_0" => GgmlDType::Q8_0,
        "q5k" => GgmlDType::Q5K,
        "q6k" => GgmlDType::Q6K,
        "f16" => GgmlDType::F16,
        _ => GgmlDType::Q4K,
    };
    let (n, k, m) = (2816, 1024, 512);
    let p = Packed::new(&weight(dtype, n, k)).unwrap().unwrap();
    let x = data(m * k);
    for _ in 0..3 {
        let t = Instant::now();
        let mut reps = 0;
        while t.elapsed().as_secs_f64() < 1.0 {
            black_box(p.gemm(&x, m));
            reps += 1;
        }
        let gops = (reps * m * n * k) as f64 * 2e-9 / t.elapsed().as_secs_f64();
        println!("{dtype:?} m={m}: {gops:.1} GOP/s");
    }
}

/// GEMV over ~100 MB of Q4_1 weights against reading as many bytes.
fn gemv_bandwidth() {
    let (n, k) = (8192, 2048); // 9.4 MB Q4_1 each
    let ws: Vec<Packed> = (0..10)
        .map(|_| {
            Packed::new(&weight(GgmlDType::Q4_1, n, k))
                .unwrap()
                .unwrap()
        })
        .collect();
    // The same bytes in GGUF block order, to read.
    let raws: Vec<Vec<u8>> = ws
        .iter()
        .map(|w| w.to_qtensor().unwrap().data().unwrap().to_vec())
        .collect();
    let bytes: usize = raws.iter().map(Vec::len).sum();
    let x = vec![0.5f32; k];
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..5 {
            for w in &ws {
                black_box(w.gemm(&x, 1));
            }
        }
        let s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut total = 0u64;
        for _ in 0..5 {
            for raw in &raws {
                total ^= raw
                    .par_chunks(1 << 16)
                    .map(|c| {
                        c.chunks_exact(8)
                            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                            .fold(0u64, |a, b| a ^ b)
                    })
                    .reduce(|| 0, |a, b| a ^ b);
            }
        }
        black_box(total);
        let r = t.elapsed().as_secs_f64();
        let gb = 5.0 * bytes as f64 * 1e-9;
        println!("gemv {:.1} GB/s, read {:.1} GB/s", gb / s, gb / r);
    }
}
