//! Our CUDA kernels (`kernels/*.cu`, compiled to PTX by build.rs) as candle ops, for the
//! steps where candle's per-op cost (a launch and an allocation each, ~10 µs) bounds a small
//! model on a GPU: decode attention (`attention.rs`), the residual add with RMSNorm and SwiGLU
//! (`rows.rs`) for inference, the causal softmax with its backward (`softmax.rs`) for prompts
//! and training, and the AdamW step (`adamw.rs`). The CPU keeps its own paths. The kernels'
//! logic is tested on the CPU by an emulator (`tests/cuda_attention.rs`, `tests/cuda_ops.rs`);
//! the GPU suite checks the launches against candle's ops.

pub mod adamw;
pub mod attention;
pub mod rows;
pub mod softmax;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use candle_core::cuda::cudarc::driver::{CudaStream, DevicePtr, LaunchConfig, SyncOnDrop};
use candle_core::cuda::CudaStorageSlice;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Storage, Tensor};

/// Threads per block of every kernel (their NWARPS * 32).
const THREADS: u32 = 256;

/// A launch of `grid` blocks of [`THREADS`] threads, static shared memory only.
fn grid(x: usize, y: usize, z: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, z as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// What our ops answer when asked to run on the CPU (which has its own paths).
fn cpu_refused<T>(name: &str) -> candle_core::Result<T> {
    bail!("{name}: a CUDA kernel, run on a GPU only (the CPU has its own path)")
}

/// The `cpu_fwd` of a GPU-only CustomOp of 1, 2 or 3 inputs: refused.
macro_rules! gpu_only {
    ($($n:ident)+) => {
        fn cpu_fwd(
            &self,
            $($n: &candle_core::CpuStorage, _: &candle_core::Layout,)+
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            let _ = ($($n,)+);
            super::cpu_refused(self.name())
        }
    };
}
use gpu_only;

static ENABLED: OnceLock<AtomicBool> = OnceLock::new();

fn switch() -> &'static AtomicBool {
    // LLAMA3_CUDA_KERNELS=0 keeps candle's ops (to compare, or to work around a driver issue).
    ENABLED.get_or_init(|| {
        AtomicBool::new(std::env::var("LLAMA3_CUDA_KERNELS").map_or(true, |v| v != "0"))
    })
}

/// Whether our kernels are on (default; `LLAMA3_CUDA_KERNELS=0` turns them off).
pub fn enabled() -> bool {
    switch().load(Ordering::Relaxed)
}

/// Turns our kernels on or off for the whole process (the GPU suite compares both).
pub fn set_enabled(on: bool) {
    switch().store(on, Ordering::Relaxed);
}

/// Whether a tensor can go through our kernels: on a GPU, f32/bf16/f16, no gradients.
pub fn takes(x: &Tensor) -> bool {
    x.device().is_cuda()
        && !x.track_op()
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && enabled()
}

/// A device pointer `offset` elements into a float slice, its kind as the kernel numbers
/// them (0 f32, 1 bf16, 2 f16) and the guard that records the use on the stream.
pub(super) fn ptr<'a>(
    s: &'a CudaStorageSlice,
    offset: usize,
    stream: &'a CudaStream,
) -> candle_core::Result<(u64, i32, SyncOnDrop<'a>)> {
    Ok(match s {
        CudaStorageSlice::F32(x) => {
            let (p, g) = x.device_ptr(stream);
            (p + 4 * offset as u64, 0, g)
        }
        CudaStorageSlice::BF16(x) => {
            let (p, g) = x.device_ptr(stream);
            (p + 2 * offset as u64, 1, g)
        }
        CudaStorageSlice::F16(x) => {
            let (p, g) = x.device_ptr(stream);
            (p + 2 * offset as u64, 2, g)
        }
        _ => bail!("our CUDA kernels: f32, bf16 or f16 expected"),
    })
}

pub(super) fn alloc(
    dev: &CudaDevice,
    dtype: DType,
    n: usize,
) -> candle_core::Result<CudaStorageSlice> {
    // SAFETY: the kernel writes every element before anything reads them.
    Ok(unsafe {
        match dtype {
            DType::F32 => CudaStorageSlice::F32(dev.alloc::<f32>(n)?),
            DType::BF16 => CudaStorageSlice::BF16(dev.alloc::<half::bf16>(n)?),
            DType::F16 => CudaStorageSlice::F16(dev.alloc::<half::f16>(n)?),
            d => bail!("our CUDA kernels: {d:?} activations"),
        }
    })
}

/// (B, N) rows of `n` elements, unit stride within a row: B and the row stride.
pub(super) fn rows(l: &Layout, n: usize, what: &str) -> candle_core::Result<(usize, usize)> {
    let (b, m) = l.shape().dims2()?;
    if m != n || l.stride()[1] != 1 {
        bail!(
            "CUDA kernel: {what} rows of {n} elements expected, got {:?} (strides {:?})",
            l.dims(),
            l.stride()
        );
    }
    Ok((b, l.stride()[0]))
}

/// A contiguous GPU tensor's storage and start offset.
pub(super) fn on_gpu<'a>(
    t: &'a Tensor,
    what: &str,
) -> candle_core::Result<(candle_core::StorageRef<'a>, usize)> {
    let (s, l) = t.storage_and_layout();
    if !l.is_contiguous() || !matches!(&*s, Storage::Cuda(_)) {
        bail!("CUDA kernel: {what} must be contiguous on the GPU");
    }
    let o = l.start_offset();
    Ok((s, o))
}

pub(super) fn cuda(s: &Storage) -> candle_core::Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("CUDA kernel: a tensor is not on the GPU"),
    }
}
