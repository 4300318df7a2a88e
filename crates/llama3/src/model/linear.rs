//! `Linear`: the only weight matmul of the model. The weight is dense or GGUF blocks; an
//! optional LoRA adapter adds `scale * B(A x)` on top (PEFT's `lora.Linear.forward`).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use crate::ops::linear::LinearWeight;
use crate::ops::linear::{self as op, Part};
use crate::quant::Packed;
use crate::rng::splitmix;
use crate::weights::Weight;
use crate::Result;

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
    /// DoRA (PEFT's `use_dora`), when the adapter has a magnitude vector.
    pub dora: Option<Dora>,
}

/// DoRA's weight decomposition (PEFT's `DoraLinearLayer`): the adapted weight `W + scale B A`
/// with each output row rescaled to a learned norm, `m / ||W + scale B A||`, the norm
/// detached from the graph (DoRA section 4.3, as PEFT does).
#[derive(Clone, Debug)]
pub struct Dora {
    /// `lora_magnitude_vector` (out,): each output row's norm after adaptation.
    pub magnitude: Tensor,
    /// `magnitude / ||W + scale B A||` (out,), kept where A, B and m are fixed (inference);
    /// None while training (computed in every forward).
    pub row_scale: Option<Tensor>,
}

/// Inverted dropout of `x` with drop probability `p` (`torch.nn.Dropout` in training: kept
/// elements scaled by `1 / (1 - p)`), the mask drawn from `seed` and the module `id`;
/// differentiable in `x`.
pub fn dropout(x: &Tensor, p: f64, seed: u64, id: u64) -> Result<Tensor> {
    let key = splitmix(seed ^ id);
    let keep = 1.0 / (1.0 - p) as f32;
    // Drop when the top 24 bits, as a fraction of 2^24, fall below p.
    let cut = (p * (1u64 << 24) as f64) as u64;
    let mask: Vec<f32> = (0..x.elem_count() as u64)
        .map(|i| match splitmix(key.wrapping_add(i)) >> 40 < cut {
            true => 0.0,
            false => keep,
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
    Ok((x * mask)?)
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
        let y = op::matmul(&self.weight, x, self.compute_dtype)?;
        self.add_lora(x, y)
    }

    /// Several layers applied to the same input (q/k/v, gate/up): dense weights stacked in
    /// `stack` as one matmul; packed weights of one format with the input quantized once
    /// ([`op::matmul_many`]); otherwise each layer's own forward.
    pub fn forward_many<const N: usize>(
        ls: [&Linear; N],
        x: &Tensor,
        stack: Option<&Stack>,
    ) -> Result<[Tensor; N]> {
        if let Some(ys) = stack.map(|s| s.forward(ls, x)).transpose()?.flatten() {
            return Ok(ys);
        }
        let out: Vec<Tensor> = match op::matmul_many(ls.map(|l| (&l.weight, l.compute_dtype)), x)? {
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

    /// Summed cross-entropy of `h` (N, D) through this layer (the LM head) against `targets`,
    /// fused with the matmul where [`crate::ops::loss::linear_cross_entropy_sum`] can; None
    /// elsewhere (run [`Self::forward`] and `ops::loss::cross_entropy_sum`).
    pub fn cross_entropy_sum(&self, h: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
        let plain = self.lora.is_empty() && self.compute_dtype.is_none();
        crate::ops::loss::linear_cross_entropy_sum(&self.weight, plain, h, targets)
    }

    /// What a [`Stack`] checks of this layer.
    fn part(&self) -> Part<'_> {
        Part {
            weight: &self.weight,
            adapters: !self.lora.is_empty(),
            compute_dtype: self.compute_dtype,
        }
    }

    /// `y` plus the adapters' `scale * B(A x)`; a DoRA adapter rescales the rows as PEFT's
    /// `lora.Linear.forward` does: `y + (s - 1) base + s scale B(A x)` with `s` its
    /// [`Self::dora_row_scale`] and `base` the output so far (so `s (y + scale B(A x))`), or
    /// `W dropout(x)` while dropout is on.
    fn add_lora(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let mut y = y;
        for l in &self.lora {
            // PEFT: lora_B(lora_A(dropout(x))) * scaling, in the adapter's dtype.
            let mut x2 = x.to_dtype(l.a.dtype())?;
            let dropped = l.dropout_seed.filter(|_| l.dropout > 0.0);
            if let Some(seed) = dropped {
                x2 = dropout(&x2, l.dropout, seed, l.id)?;
            }
            let h = x2.broadcast_matmul(&l.a.t()?)?; // (.., r)
            let d = h.broadcast_matmul(&l.b.t()?)?; // (.., out)
            let d = (d * l.scale)?.to_dtype(y.dtype())?;
            let Some(dora) = &l.dora else {
                y = (y + d)?;
                continue;
            };
            let s = self.dora_row_scale(l, dora)?.to_dtype(y.dtype())?; // (out,)
            y = match dropped {
                // base = y: y + (s - 1) y + s d = s (y + d).
                None => (y + d)?.broadcast_mul(&s)?,
                Some(_) => {
                    let x2 = x2.to_dtype(x.dtype())?;
                    let base = op::matmul(&self.weight, &x2, self.compute_dtype)?;
                    (y + (base.broadcast_mul(&(&s - 1.0)?)? + d.broadcast_mul(&s)?)?)?
                }
            };
        }
        Ok(y)
    }

    /// DoRA's `m / ||W + scale B A||` per output row (out,), f32: kept when fixed, else
    /// computed from the dequantized weight with the norm detached (gradients reach `m`).
    pub fn dora_row_scale(&self, l: &Lora, dora: &Dora) -> Result<Tensor> {
        if let Some(s) = &dora.row_scale {
            return Ok(s.clone());
        }
        let norm = self.adapted_row_norms(l)?;
        Ok(dora.magnitude.to_dtype(DType::F32)?.div(&norm)?)
    }

    /// `||W + scale B A||` of each output row (out,), f32, detached: DoRA's weight norm (its
    /// magnitude's initial value when B is zero).
    pub fn adapted_row_norms(&self, l: &Lora) -> Result<Tensor> {
        let w = self.weight.dequantize()?.detach().to_dtype(DType::F32)?;
        let ba = l.b.detach().to_dtype(DType::F32)?;
        let ba = ba.matmul(&l.a.detach().to_dtype(DType::F32)?.to_device(ba.device())?)?; // (out, in)
        let full = (w.to_device(ba.device())? + (ba * l.scale)?)?;
        Ok(full.sqr()?.sum(1)?.sqrt()?)
    }
}

/// Dense q/k/v or gate/up weights stacked for one matmul ([`op::Stack`]), over the layers
/// that hold views of it.
#[derive(Clone, Debug)]
pub struct Stack(op::Stack);

impl Stack {
    /// Stacks the layers' weights where [`op::Stack::new`] can; the layers then hold views.
    pub fn new(ls: &mut [&mut Linear]) -> Result<Option<Self>> {
        let mut ws: Vec<(&mut LinearWeight, bool)> = ls
            .iter_mut()
            .map(|l| {
                let adapters = !l.lora.is_empty();
                (&mut l.weight, adapters)
            })
            .collect();
        Ok(op::Stack::new(&mut ws)?.map(Stack))
    }

    /// The layers' outputs from one matmul, or None where the stack does not apply.
    pub fn forward<const N: usize>(
        &self,
        ls: [&Linear; N],
        x: &Tensor,
    ) -> Result<Option<[Tensor; N]>> {
        self.0.forward(ls.map(Linear::part), x)
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
            dora: None,
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
