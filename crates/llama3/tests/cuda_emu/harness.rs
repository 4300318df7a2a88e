//! What the emulated-kernel tests share (`cuda_attention.rs`, `cuda_ops.rs`): building the
//! emulator (`main.c`, plain and under ThreadSanitizer), running a kernel on a file of inputs,
//! and element kinds (comparisons: `llama3_testutil`). Each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use half::{bf16, f16};
use rand::{Rng, SeedableRng};

/// The emulated kernels (`tests/cuda_emu/main.c`), built once per test binary.
pub fn emulator() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu");
        let out =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda_emu_{}", std::process::id()));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(&cc)
            .args(["-O2", "-std=c11", "-pthread", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(dir.join("main.c"))
            .arg("-lm")
            .status()
            .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
        assert!(status.success(), "the emulated kernel did not compile");
        out
    })
}

/// Runs `kernel` on `input` with the scalar arguments `args`; the output file's bytes.
pub fn run(kernel: &str, args: &[String], input: &[u8]) -> Vec<u8> {
    run_with(emulator(), kernel, args, input)
}

pub fn run_with(bin: &Path, kernel: &str, args: &[String], input: &[u8]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let (i, o) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::write(&i, input).unwrap();
    let out = Command::new(bin)
        .arg(kernel)
        .arg(&i)
        .arg(&o)
        .args(args)
        // Under ThreadSanitizer: a race ends the run with an error.
        .env("TSAN_OPTIONS", "halt_on_error=1 exitcode=66")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("ThreadSanitizer"),
        "emulated {kernel} failed {args:?}: {err}"
    );
    std::fs::read(&o).unwrap()
}

/// The emulator built with ThreadSanitizer (races between a block's threads: a missing
/// __syncthreads, a shuffle outside its warp), or why the C compiler or the machine cannot run
/// it (the caller reports its test as skipped).
pub fn tsan_emulator() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cuda_emu_tsan_{}", std::process::id()));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let built = Command::new(&cc)
            .args([
                "-O1",
                "-g",
                "-std=c11",
                "-pthread",
                "-fsanitize=thread",
                "-o",
            ])
            .arg(&out)
            .arg(dir.join("main.c"))
            .arg("-lm")
            .output();
        match built {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let e = String::from_utf8_lossy(&o.stderr);
                return Err(format!("`{cc} -fsanitize=thread` failed: {e}"));
            }
            Err(e) => return Err(format!("cannot run `{cc}`: {e}")),
        }
        // Some kernels' address layouts stop the sanitizer's runtime at start: a run that does
        // not start is no verdict on our kernels.
        let tmp = tempfile::tempdir().unwrap();
        let (i, o) = (tmp.path().join("in"), tmp.path().join("out"));
        std::fs::write(&i, 1f32.to_le_bytes()).unwrap();
        let probe = Command::new(&out)
            .arg("f16")
            .arg(&i)
            .arg(&o)
            .output()
            .map_err(|e| format!("cannot run the ThreadSanitizer build: {e}"))?;
        if !probe.status.success() {
            let e = String::from_utf8_lossy(&probe.stderr);
            return Err(format!("ThreadSanitizer does not run here: {e}"));
        }
        Ok(out)
    });
    bin.as_deref().map_err(Clone::clone)
}

/// Element kinds as the kernel numbers them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    F32 = 0,
    Bf16 = 1,
    F16 = 2,
}

impl Kind {
    pub fn bytes(self, xs: &[f32]) -> Vec<u8> {
        match self {
            Kind::F32 => xs.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Kind::Bf16 => xs
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
            Kind::F16 => xs
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }

    pub fn floats(self, b: &[u8]) -> Vec<f32> {
        match self {
            Kind::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Kind::Bf16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Kind::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }

    pub fn round(self, xs: &[f32]) -> Vec<f32> {
        self.floats(&self.bytes(xs))
    }

    pub fn size(self) -> usize {
        match self {
            Kind::F32 => 4,
            _ => 2,
        }
    }
}

/// Rows of `n` values `rs` apart (the rest NaN: the kernels must not read it).
pub fn strided(rows: usize, n: usize, rs: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dense: Vec<f32> = (0..rows * n).map(|_| rng.random_range(-3.0..3.0)).collect();
    let mut out = vec![f32::NAN; rows * rs];
    for r in 0..rows {
        out[r * rs..][..n].copy_from_slice(&dense[r * n..][..n]);
    }
    (dense, out)
}
