//! `Linear`: the only weight matmul of the model. The weight is dense or GGUF blocks; an
//! optional LoRA adapter adds `scale * B(A x)` on top (PEFT's `lora.Linear.forward`).

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor};

use crate::quant::Packed;
use crate::weights::Weight;
use crate::Result;

#[derive(Clone, Debug)]
pub enum LinearWeight {
    /// (out, in), any float dtype; the input is cast to it and the output back.
    Dense(Tensor),
    /// (out, in) GGUF blocks; the input is f32 (candle quantizes it to Q8 blocks per row, as
    /// llama.cpp does).
    Quantized(QMatMul),
    /// (out, in) Q4_1 or Q8_0 blocks on the CPU, repacked 8 rows at a time for our kernels
    /// (`quant::Packed`); the usual form of a GGUF model's weights on the CPU.
    Packed(Arc<Packed>),
}

impl LinearWeight {
    /// GGUF blocks, in either form.
    pub fn is_quantized(&self) -> bool {
        !matches!(self, LinearWeight::Dense(_))
    }

    /// A quantized weight in its packed form where our kernels take it.
    pub fn from_qtensor(q: Arc<candle_core::quantized::QTensor>) -> Self {
        match Packed::new(&q) {
            Ok(Some(p)) => LinearWeight::Packed(Arc::new(p)),
            _ => LinearWeight::Quantized(QMatMul::QTensor(q)),
        }
    }

    /// The weight as a tensor: dense as is, quantized dequantized to f32.
    pub fn dequantize(&self) -> Result<Tensor> {
        Ok(match self {
            LinearWeight::Dense(t) => t.clone(),
            LinearWeight::Quantized(QMatMul::QTensor(q)) => q.dequantize(&q.device())?,
            LinearWeight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.to_dtype(DType::F32)?
            }
            LinearWeight::Packed(p) => p.dequantize()?,
        })
    }
}

/// A low-rank adapter: `A` (r, in), `B` (out, r), `scale` = alpha / r (or alpha / sqrt(r)
/// with rsLoRA) times the user's weight for the adapter. See `crate::peft`.
#[derive(Clone, Debug)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// PEFT's `lora_dropout` on the adapter's input, applied only while a training loop has
    /// set `dropout_seed` ([`crate::peft::set_dropout_seed`]); masks keyed by the seed and
    /// `id` (the module).
    pub dropout: f64,
    pub dropout_seed: Option<u64>,
    pub id: u64,
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
    /// A linear layer over an already packed weight (a tied head sharing the embedding's).
    pub fn packed(p: Arc<Packed>) -> Self {
        let (out_features, in_features) = p.dims();
        Self {
            weight: LinearWeight::Packed(p),
            lora: Vec::new(),
            compute_dtype: None,
            out_features,
            in_features,
        }
    }

    pub fn new(weight: Weight) -> Self {
        let dims = weight.dims().to_vec();
        let (out_features, in_features) = (dims[0], dims.get(1).copied().unwrap_or(1));
        let weight = match weight {
            Weight::Dense(t) => LinearWeight::Dense(t),
            Weight::Quantized(q) => LinearWeight::from_qtensor(q),
            Weight::Packed(p) => LinearWeight::Packed(p),
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
                let w = w.to_dtype(dt)?;
                // (N, in) x (in, out) -> (N, out); training on the CPU: `fused::linear`.
                match crate::fused::trains_on_cpu(&[&x2, &w]) {
                    true => crate::fused::linear::linear(&x2, &w)?,
                    false => x2.matmul(&w.t()?)?,
                }
                .to_dtype(x.dtype())?
                .reshape(out_dims)?
            }
            // QLoRA: an input that carries gradients (LoRA upstream) needs the backward to x.
            LinearWeight::Quantized(QMatMul::QTensor(w)) if x.track_op() => {
                crate::quant::grad::matmul(x, crate::quant::grad::QWeight::Blocks(w.clone()))?
            }
            LinearWeight::Packed(p) if x.track_op() => {
                crate::quant::grad::matmul(x, crate::quant::grad::QWeight::Packed(p.clone()))?
            }
            LinearWeight::Packed(p) => p.matmul(x)?,
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
        self.add_lora(x, y)
    }

    /// Several layers applied to the same input (q/k/v, gate/up): with packed weights of one
    /// format the input is quantized once and the products run as one parallel pass
    /// (`quant::matmul_many`); otherwise each layer's own forward.
    pub fn forward_many<const N: usize>(ls: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let packed: Vec<&Packed> = ls
            .iter()
            .filter_map(|l| match (&l.weight, l.compute_dtype) {
                (LinearWeight::Packed(p), None) => Some(&**p),
                _ => None,
            })
            .collect();
        let fused = match packed.len() == N && !x.track_op() && x.device().is_cpu() {
            true => crate::quant::matmul_many(&packed, x)?,
            false => None,
        };
        let out: Vec<Tensor> = match fused {
            Some(ys) => ls
                .iter()
                .zip(ys)
                .map(|(l, y)| l.add_lora(x, y))
                .collect::<Result<_>>()?,
            None => ls.iter().map(|l| l.forward(x)).collect::<Result<_>>()?,
        };
        out.try_into()
            .map_err(|_| crate::Error::Input("forward_many: wrong number of outputs".into()))
    }

    /// `y` plus the adapters' `scale * B(A x)`.
    fn add_lora(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let mut y = y;
        for l in &self.lora {
            // PEFT: lora_B(lora_A(dropout(x))) * scaling, in the adapter's dtype.
            let mut x2 = x.to_dtype(l.a.dtype())?;
            if let Some(seed) = l.dropout_seed.filter(|_| l.dropout > 0.0) {
                x2 = crate::peft::dropout(&x2, l.dropout, seed, l.id)?;
            }
            let h = x2.broadcast_matmul(&l.a.t()?)?; // (.., r)
            let d = h.broadcast_matmul(&l.b.t()?)?; // (.., out)
            let d = (d * l.scale)?.to_dtype(y.dtype())?;
            y = (y + d)?;
        }
        Ok(y)
    }
}
