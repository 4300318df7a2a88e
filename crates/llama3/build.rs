//! With the `cuda` feature, compiles our kernels (`kernels/*.cu`) to PTX with nvcc for
//! `CUDA_COMPUTE_CAP` (default 90: H100/H200); the PTX is embedded in the library and loaded
//! by the driver at run time. `scripts/build-cuda.sh` provides nvcc. Without the feature:
//! nothing (the CPU build needs no CUDA toolkit).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 4] = ["decode_attention", "rows", "adamw", "softmax"];

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = env::var("NVCC")
        .ok()
        .or_else(|| env::var("CUDA_HOME").ok().map(|h| format!("{h}/bin/nvcc")))
        .unwrap_or_else(|| "nvcc".into());
    for name in KERNELS {
        let src = format!("kernels/{name}.cu");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
            .arg(out.join(format!("{name}.ptx")))
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("running {nvcc} (set NVCC or CUDA_HOME): {e}"));
        assert!(status.success(), "{nvcc} failed on {src}");
    }
}
