//! Choosing where the model runs: `cpu`, `cuda`, `cuda:N`, or `auto` (the first GPU when this
//! build has CUDA and one is present, else the CPU).

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Parses a `--device` value.
pub fn parse(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(auto()),
        "cuda" | "gpu" => cuda(0),
        s => match s.strip_prefix("cuda:") {
            Some(n) => match n.parse::<usize>() {
                Ok(n) => cuda(n),
                Err(_) => Err(Error::Input(format!(
                    "--device {spec}: the GPU index must be a number, as in cuda:0"
                ))),
            },
            None => Err(Error::Input(format!(
                "--device {spec}: expected cpu, cuda, cuda:N or auto"
            ))),
        },
    }
}

/// The first CUDA GPU when there is one (and this build supports it), else the CPU.
pub fn auto() -> Device {
    if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !cfg!(feature = "cuda") {
        return Err(Error::Unsupported(
            "this build has no CUDA support: build with `--features cuda` \
             (scripts/build-cuda.sh does the whole build)"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        Error::Input(format!(
            "cannot open GPU cuda:{ordinal} ({}); {} GPU(s) found",
            crate::error::candle_message(&e),
            gpu_count()
        ))
    })
}

/// How many CUDA GPUs this process can use (0 without CUDA support).
pub fn gpu_count() -> usize {
    if !cfg!(feature = "cuda") {
        return 0;
    }
    (0..64).take_while(|&i| Device::new_cuda(i).is_ok()).count()
}

/// Short name for logs: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".into(),
        },
        Device::Metal(_) => "metal".into(),
    }
}

/// The dtype for dense weights and activations when the user did not choose: f32 on the CPU
/// (exact, and candle's CPU bf16 matmul is slow), bf16 on a GPU (tensor cores; candle's
/// cuBLAS matmuls accumulate in f32).
pub fn default_dtype(device: &Device) -> DType {
    match device {
        Device::Cpu => DType::F32,
        _ => DType::BF16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert!(matches!(parse("cpu").unwrap(), Device::Cpu));
        assert!(matches!(parse(" CPU ").unwrap(), Device::Cpu));
        let bad = parse("tpu").unwrap_err().to_string();
        assert!(bad.contains("expected cpu, cuda"), "{bad}");
        let bad = parse("cuda:x").unwrap_err().to_string();
        assert!(bad.contains("must be a number"), "{bad}");
        if !cfg!(feature = "cuda") {
            let e = parse("cuda").unwrap_err().to_string();
            assert!(e.contains("no CUDA support"), "{e}");
            assert!(matches!(parse("auto").unwrap(), Device::Cpu));
            assert_eq!(gpu_count(), 0);
        }
        assert_eq!(name(&Device::Cpu), "cpu");
    }
}
