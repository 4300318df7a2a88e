//! Random initial weights as a `WeightSource`, so a from-scratch model is built by the same
//! `Llama::load` as a checkpoint. HF `LlamaPreTrainedModel._init_weights`: every matrix
//! N(0, 0.02), RMSNorm weights 1.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use llama3::weights::{Weight, WeightSource};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::Result;

/// HF `initializer_range` default.
pub const INIT_STD: f64 = llama3::weights::hf_dir::INITIALIZER_RANGE;

pub struct RandomInit {
    seed: u64,
    dtype: DType,
    device: Device,
    path: PathBuf,
    /// Draw on the device with candle's generator (fast for billion-parameter benchmarks;
    /// values depend on the device, so not for training runs that must reproduce).
    device_rng: bool,
}

impl RandomInit {
    pub fn new(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            seed,
            dtype,
            device: device.clone(),
            path: PathBuf::from("<random init>"),
            device_rng: false,
        }
    }

    /// Same distribution, drawn by the device's own generator seeded with `seed`.
    pub fn on_device(seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        // candle's CPU generator cannot be seeded; CPU draws then differ run to run.
        if !device.is_cpu() {
            device.set_seed(seed)?;
        }
        Ok(Self {
            device_rng: true,
            ..Self::new(seed, dtype, device)
        })
    }
}

impl WeightSource for RandomInit {
    fn get(&self, name: &str, shape: &[usize]) -> llama3::Result<Weight> {
        let n: usize = shape.iter().product();
        if self.device_rng {
            let t = match name.ends_with("norm.weight") {
                true => Tensor::ones(shape, DType::F32, &self.device)?,
                false => Tensor::randn(0f32, INIT_STD as f32, shape, &self.device)?,
            };
            return Ok(Weight::Dense(t.to_dtype(self.dtype)?));
        }
        let values = if name.ends_with("norm.weight") {
            vec![1f32; n]
        } else {
            // One stream per tensor name, so the weights do not depend on the load order.
            let mut rng = StdRng::seed_from_u64(self.seed ^ fnv1a(name.as_bytes()));
            llama3::rng::normal(&mut rng, n, INIT_STD)
        };
        let t = Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?;
        Ok(Weight::Dense(t))
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_scaled() {
        let src = RandomInit::new(7, DType::F32, &Device::Cpu);
        let a = src
            .get("model.layers.0.mlp.up_proj.weight", &[64, 64])
            .unwrap();
        let b = src
            .get("model.layers.0.mlp.up_proj.weight", &[64, 64])
            .unwrap();
        let (Weight::Dense(a), Weight::Dense(b)) = (a, b) else {
            panic!("dense expected")
        };
        let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
        assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        let var = a
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((var.sqrt() - 0.02).abs() < 0.002, "std {}", var.sqrt());
        let Weight::Dense(n) = src.get("model.norm.weight", &[8]).unwrap() else {
            panic!("dense expected")
        };
        assert_eq!(n.to_vec1::<f32>().unwrap(), vec![1.0; 8]);
    }
}
