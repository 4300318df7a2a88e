//! `Linear`: the only weight matmul of the model. The weight is dense or GGUF blocks; an
//! optional LoRA adapter adds `scale * B(A x)` on top (PEFT's `lora.Linear.forward`).

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor};

use crate::weights::Weight;
use crate::Result;

#[derive(Clone, Debug)]
pub enum LinearWeight {
    /// (out, in), any float dtype; the input is cast to it and the output back.
    Dense(Tensor),
    /// (out, in) GGUF blocks; the input is f32 (candle quantizes it to Q8 blocks per row, as
    /// llama.cpp does).
    Quantized(QMatMul),
}

/// A low-rank adapter: `A` (r, in), `B` (out, r), `scale` = alpha / r (or alpha / sqrt(r)
/// with rsLoRA) times the user's weight for the adapter. See `crate::peft`.
#[derive(Clone, Debug)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: LinearWeight,
    /// Adapters added to the output, in order (several `--lora` stack).
    pub lora: Vec<Lora>,
    /// Mixed precision: dense matmuls run in this dtype (weight and input cast to it, the
    /// product cast back; cuBLAS accumulates in f32). Casts are differentiable, so f32 master
    /// weights get f32 gradients.
    pub compute_dtype: Option<DType>,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    pub fn new(weight: Weight) -> Self {
        let dims = weight.dims().to_vec();
        let (out_features, in_features) = (dims[0], dims.get(1).copied().unwrap_or(1));
        let weight = match weight {
            Weight::Dense(t) => LinearWeight::Dense(t),
            Weight::Quantized(q) => LinearWeight::Quantized(QMatMul::QTensor(q)),
        };
        Self {
            weight,
            lora: Vec::new(),
            compute_dtype: None,
            out_features,
            in_features,
        }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// (.., in) -> (.., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => {
                let dims = x.dims();
                let mut out_dims = dims.to_vec();
                let last = out_dims.len() - 1;
                out_dims[last] = self.out_features;
                let dt = self.compute_dtype.unwrap_or(w.dtype());
                let x2 = x.reshape(((), self.in_features))?.to_dtype(dt)?;
                // (N, in) x (in, out) -> (N, out)
                x2.matmul(&w.to_dtype(dt)?.t()?)?
                    .to_dtype(x.dtype())?
                    .reshape(out_dims)?
            }
            // QLoRA: an input that carries gradients (LoRA upstream) needs the backward to x.
            LinearWeight::Quantized(QMatMul::QTensor(w)) if x.track_op() => {
                crate::quant::grad::matmul(x, w)?
            }
            LinearWeight::Quantized(q) => {
                let own = match q {
                    QMatMul::QTensor(w) => crate::quant::matmul(x, w)?,
                    _ => None,
                };
                match own {
                    Some(y) => y,
                    None => q.forward(&x.contiguous()?)?,
                }
            }
        };
        let mut y = y;
        for l in &self.lora {
            // PEFT: lora_B(lora_A(dropout(x))) * scaling, in the adapter's dtype.
            let x2 = x.to_dtype(l.a.dtype())?;
            let h = x2.broadcast_matmul(&l.a.t()?)?; // (.., r)
            let d = h.broadcast_matmul(&l.b.t()?)?; // (.., out)
            let d = (d * l.scale)?.to_dtype(y.dtype())?;
            y = (y + d)?;
        }
        Ok(y)
    }
}
