//! `Linear`: the only weight matmul of the model. The weight is dense or GGUF blocks; an
//! optional LoRA adapter adds `scale * B(A x)` on top (PEFT's `lora.Linear.forward`).

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor, TensorId};

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
            LinearWeight::Dense(w) => self.dense(w, x)?,
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

    /// Several layers applied to the same input (q/k/v, gate/up): dense weights stacked in
    /// `stack` as one matmul; packed weights of one format with the input quantized once and
    /// the products as one parallel pass (`quant::matmul_many`); otherwise each layer's own
    /// forward.
    pub fn forward_many<const N: usize>(
        ls: [&Linear; N],
        x: &Tensor,
        stack: Option<&Stack>,
    ) -> Result<[Tensor; N]> {
        if let Some(ys) = stack.map(|s| s.forward(ls, x)).transpose()?.flatten() {
            return Ok(ys);
        }
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

    /// (.., in) x (out, in) dense weight -> (.., out): the input cast to the compute dtype,
    /// the product cast back (cuBLAS accumulates in f32).
    fn dense(&self, w: &Tensor, x: &Tensor) -> Result<Tensor> {
        let mut out_dims = x.dims().to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = w.dim(0)?;
        let dt = self.compute_dtype.unwrap_or(w.dtype());
        let x2 = x.reshape(((), self.in_features))?.to_dtype(dt)?;
        let w = w.to_dtype(dt)?;
        // (N, in) x (in, out) -> (N, out); training on the CPU: `fused::linear`.
        let y = match crate::fused::trains_on_cpu(&[&x2, &w]) {
            true => crate::fused::linear::linear(&x2, &w)?,
            false => x2.matmul(&w.t()?)?,
        };
        Ok(y.to_dtype(x.dtype())?.reshape(out_dims)?)
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

/// Layers that read the same input (q/k/v, gate/up) with their dense weights stacked by rows
/// in one tensor, each layer's weight a view of it: one matmul gives all their outputs (one
/// launch on a GPU instead of two or three). Built at load; used only while every layer still
/// holds its view (a weight replaced by training or a merge falls back to the layers' own
/// forwards) and when nothing would differ from those: no adapters, no gradients.
#[derive(Clone, Debug)]
pub struct Stack {
    /// (Σ out_i, in)
    w: Tensor,
    /// Each layer's weight (the view's id) and rows, in order.
    parts: Vec<(TensorId, usize)>,
}

impl Stack {
    /// Stacks the layers' weights when all are dense, of one dtype, shape (.., in) and device,
    /// without adapters; the layers then hold views of the stack. None otherwise (quantized
    /// weights have their own fused pass, `Linear::forward_many`).
    pub fn new(ls: &mut [&mut Linear]) -> Result<Option<Self>> {
        let mut ws = Vec::with_capacity(ls.len());
        for l in ls.iter() {
            match &l.weight {
                LinearWeight::Dense(w) if l.lora.is_empty() && !w.track_op() => ws.push(w),
                _ => return Ok(None),
            }
        }
        let Some(first) = ws.first() else {
            return Ok(None);
        };
        let same = |w: &&Tensor| {
            w.dtype() == first.dtype()
                && w.device().same_device(first.device())
                && w.dims().len() == 2
                && w.dims()[1] == first.dims()[1]
        };
        if !ws.iter().all(same) {
            return Ok(None);
        }
        let w = Tensor::cat(&ws, 0)?;
        let mut parts = Vec::with_capacity(ls.len());
        let mut r0 = 0;
        for l in ls.iter_mut() {
            let rows = l.out_features;
            let view = w.narrow(0, r0, rows)?;
            parts.push((view.id(), rows));
            l.weight = LinearWeight::Dense(view);
            r0 += rows;
        }
        Ok(Some(Self { w, parts }))
    }

    /// The layers' outputs from one matmul (views of its result, split along the last dim),
    /// or None where the stack does not apply (see [`Stack`]).
    pub fn forward<const N: usize>(
        &self,
        ls: [&Linear; N],
        x: &Tensor,
    ) -> Result<Option<[Tensor; N]>> {
        let holds = |l: &Linear, id: TensorId| match &l.weight {
            LinearWeight::Dense(w) => w.id() == id && l.lora.is_empty() && !w.track_op(),
            _ => false,
        };
        let ok = N == self.parts.len()
            && !x.track_op()
            && ls.iter().zip(&self.parts).all(|(l, (id, _))| holds(l, *id))
            && ls.iter().all(|l| l.compute_dtype == ls[0].compute_dtype);
        if !ok {
            return Ok(None);
        }
        let y = ls[0].dense(&self.w, x)?; // (.., Σ out_i)
        let last = y.rank() - 1;
        let mut r0 = 0;
        let mut out = Vec::with_capacity(N);
        for (_, rows) in &self.parts {
            out.push(y.narrow(last, r0, *rows)?);
            r0 += rows;
        }
        Ok(out.try_into().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::testing::max_diff as diff;
    use candle_core::{Device, Var};

    /// A stack gives each layer's own output, and steps aside once a layer's weight is
    /// replaced, gets an adapter, or gradients are tracked.
    #[test]
    fn stack_matches_the_layers_and_steps_aside() {
        let dev = Device::Cpu;
        let lin = |o: usize, seed: f32| {
            Linear::new(Weight::Dense(
                Tensor::randn(seed, 1.0, (o, 16), &dev).unwrap(),
            ))
        };
        let (mut q, mut k, mut v) = (lin(12, 0.0), lin(4, 0.5), lin(4, -0.5));
        // Each layer's output before stacking, then from the stack and from the layers' views.
        let x = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let want: Vec<Tensor> = [&q, &k, &v]
            .iter()
            .map(|l| l.forward(&x).unwrap())
            .collect();
        let stack = Stack::new(&mut [&mut q, &mut k, &mut v]).unwrap().unwrap();
        let mine: Vec<Tensor> = [&q, &k, &v]
            .iter()
            .map(|l| l.forward(&x).unwrap())
            .collect();
        let got = stack
            .forward([&q, &k, &v], &x)
            .unwrap()
            .expect("stack applies");
        for ((g, m), w) in got.iter().zip(&mine).zip(&want) {
            assert_eq!(g.dims(), w.dims());
            assert!(diff(g, w) < 1e-5 && diff(m, w) < 1e-5);
        }
        // Through forward_many too.
        let many = Linear::forward_many([&q, &k, &v], &x, Some(&stack)).unwrap();
        assert!(diff(&many[2], &mine[2]) < 1e-5);

        let tracked = Var::from_tensor(&x).unwrap();
        assert!(stack
            .forward([&q, &k, &v], tracked.as_tensor())
            .unwrap()
            .is_none());
        let mut adapted = k.clone();
        adapted.lora.push(Lora {
            a: Tensor::zeros((2, 16), DType::F32, &dev).unwrap(),
            b: Tensor::zeros((4, 2), DType::F32, &dev).unwrap(),
            scale: 1.0,
            dropout: 0.0,
            dropout_seed: None,
            id: 0,
        });
        assert!(stack.forward([&q, &adapted, &v], &x).unwrap().is_none());
        let replaced = lin(4, 2.0);
        assert!(stack.forward([&q, &k, &replaced], &x).unwrap().is_none());
        // forward_many then takes each layer's own forward: the new weight counts.
        let many = Linear::forward_many([&q, &k, &replaced], &x, Some(&stack)).unwrap();
        assert!(diff(&many[2], &replaced.forward(&x).unwrap()) < 1e-6);

        // Mixed kinds are not stacked.
        let mut half = lin(4, 1.0);
        half.weight = LinearWeight::Dense(
            half.weight
                .dequantize()
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap(),
        );
        assert!(Stack::new(&mut [&mut q.clone(), &mut half])
            .unwrap()
            .is_none());
    }
}
