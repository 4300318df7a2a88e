//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, single-tensor path): decoupled weight
//! decay `p *= 1 - lr * wd` before the Adam update, bias correction per parameter step, `eps`
//! added after dividing `sqrt(v)` by `sqrt(1 - beta2^t)`. Loshchilov & Hutter, "Decoupled
//! Weight Decay Regularization" (2019). State is f32 whatever the parameter dtype.

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::grads::Grads;
use crate::{Error, Result};

/// The scalars of one parameter's update at its step `t`.
struct Coefs {
    /// 1 - lr * weight_decay
    decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// sqrt(1 - beta2^t)
    bc2_sqrt: f64,
    /// lr / (1 - beta1^t)
    step_size: f64,
}

impl Coefs {
    fn new(c: &AdamWConfig, lr: f64, t: u64) -> Self {
        Self {
            decay: 1.0 - lr * c.weight_decay,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            bc2_sqrt: (1.0 - c.beta2.powi(t as i32)).sqrt(),
            step_size: lr / (1.0 - c.beta1.powi(t as i32)),
        }
    }
}

/// The update with candle ops (any device and dtype).
fn update_tensors(p: &Var, g: &Tensor, s: &mut State, k: &Coefs) -> Result<()> {
    let g = g.to_dtype(DType::F32)?;
    let dtype = p.dtype();
    let theta = p.as_tensor().detach().to_dtype(DType::F32)?;
    // param.mul_(1 - lr * weight_decay)
    let theta = (theta * k.decay)?;
    // exp_avg.lerp_(grad, 1 - beta1)
    s.m = ((&g - &s.m)? * (1.0 - k.beta1) + &s.m)?;
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    s.v = ((&s.v * k.beta2)? + (g.sqr()? * (1.0 - k.beta2))?)?;
    // denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    let denom = ((s.v.sqrt()? / k.bc2_sqrt)? + k.eps)?;
    // param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    let theta = (theta - (s.m.div(&denom)? * k.step_size)?)?;
    p.set(&theta.to_dtype(dtype)?)?;
    Ok(())
}

/// The same update as one parallel pass over f32 CPU tensors (a dozen candle ops, each a
/// new buffer, become one loop). False when it does not apply.
fn update_cpu(p: &Var, g: &Tensor, s: &mut State, k: &Coefs) -> Result<bool> {
    use candle_core::{CpuStorage, Storage};
    use rayon::prelude::*;
    let all = [p.as_tensor(), g, &s.m, &s.v];
    let applies = all.iter().all(|t| {
        t.dtype() == DType::F32 && t.device().is_cpu() && t.is_contiguous() && t.dims() == p.dims()
    });
    if !applies {
        return Ok(false);
    }
    let n = p.elem_count();
    let mut theta = vec![0f32; n];
    let mut m = vec![0f32; n];
    let mut v = vec![0f32; n];
    {
        let guards: Vec<_> = all.iter().map(|t| t.storage_and_layout()).collect();
        let mut slices = Vec::with_capacity(4);
        for (st, l) in &guards {
            let Storage::Cpu(CpuStorage::F32(d)) = &**st else {
                return Ok(false);
            };
            slices.push(&d[l.start_offset()..][..n]);
        }
        let (p0, g, m0, v0) = (slices[0], slices[1], slices[2], slices[3]);
        let f = |x: f64| x as f32;
        let (decay, b1, b2, eps) = (f(k.decay), f(1.0 - k.beta1), f(k.beta2), f(k.eps));
        let (nb2, bc2, step) = (f(1.0 - k.beta2), f(k.bc2_sqrt), f(k.step_size));
        const CHUNK: usize = 1 << 14;
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, ((th, mm), vv))| {
                let o = c * CHUNK;
                for i in 0..th.len() {
                    let (gi, mi, vi) = (g[o + i], m0[o + i], v0[o + i]);
                    let mi = (gi - mi) * b1 + mi;
                    let vi = vi * b2 + gi * gi * nb2;
                    let denom = vi.sqrt() / bc2 + eps;
                    th[i] = p0[o + i] * decay - mi / denom * step;
                    mm[i] = mi;
                    vv[i] = vi;
                }
            });
    }
    let dev = p.device();
    s.m = Tensor::from_vec(m, p.shape(), dev)?;
    s.v = Tensor::from_vec(v, p.shape(), dev)?;
    p.set(&Tensor::from_vec(theta, p.shape(), dev)?)?;
    Ok(true)
}

/// The same update as one kernel on a GPU (`llama3::cuda::adamw`). False when it does not
/// apply (or without the `cuda` feature).
fn update_cuda(p: &Var, g: &Tensor, s: &mut State, k: &Coefs) -> Result<bool> {
    #[cfg(feature = "cuda")]
    if llama3::cuda::adamw::applies(p.as_tensor(), g, &s.m, &s.v) {
        let f = |x: f64| x as f32;
        let c = [
            f(k.decay),
            f(1.0 - k.beta1),
            f(k.beta2),
            f(1.0 - k.beta2),
            f(k.eps),
            f(k.bc2_sqrt),
            f(k.step_size),
        ];
        (s.m, s.v) = llama3::cuda::adamw::step(p.as_tensor(), g, &s.m, &s.v, c)?;
        return Ok(true);
    }
    let _ = (p, g, s, k);
    Ok(false)
}

/// Hyper-parameters; defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    /// Peak learning rate (the schedule gives the lr of each step).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to every parameter (norms included, as PyTorch does
    /// when given `model.parameters()`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// Moments of one parameter; `step` counts the updates it received (PyTorch keeps it per
/// parameter, so a parameter without a gradient is not decayed and its count stays).
#[derive(Clone, Debug)]
struct State {
    m: Tensor, // like the parameter, f32
    v: Tensor, // like the parameter, f32
    step: u64,
}

pub struct AdamW {
    params: Vec<(String, Var)>,
    state: Vec<State>,
    pub config: AdamWConfig,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let state = params
            .iter()
            .map(|(_, p)| {
                let z = p.as_tensor().zeros_like()?.to_dtype(DType::F32)?;
                Ok(State {
                    m: z.clone(),
                    v: z,
                    step: 0,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            state,
            config,
        })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        let c = self.config;
        for (i, ((_, p), s)) in self.params.iter().zip(self.state.iter_mut()).enumerate() {
            let Some(g) = grads.get(i) else { continue };
            s.step += 1;
            let k = Coefs::new(&c, lr, s.step);
            if !update_cpu(p, g, s, &k)? && !update_cuda(p, g, s, &k)? {
                update_tensors(p, g, s, &k)?;
            }
        }
        Ok(())
    }

    /// The optimizer state as named tensors for a checkpoint: `<name>.exp_avg`,
    /// `<name>.exp_avg_sq` (PyTorch's state keys) and `<name>.step` (a 1-element f64, exact
    /// below 2^53 steps).
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(3 * self.params.len());
        for ((name, _), s) in self.params.iter().zip(&self.state) {
            out.push((format!("{name}.exp_avg"), s.m.clone()));
            out.push((format!("{name}.exp_avg_sq"), s.v.clone()));
            let step = Tensor::new(&[s.step as f64], s.m.device())?;
            out.push((format!("{name}.step"), step));
        }
        Ok(out)
    }

    /// Restores state written by `state_tensors`; `get` looks a tensor up by name.
    pub fn load_state(&mut self, get: impl Fn(&str) -> Option<Tensor>) -> Result<()> {
        for ((name, p), s) in self.params.iter().zip(self.state.iter_mut()) {
            let need = |key: String| -> Result<Tensor> {
                get(&key).ok_or_else(|| Error::Input(format!("optimizer state lacks {key}")))
            };
            let m = need(format!("{name}.exp_avg"))?;
            let v = need(format!("{name}.exp_avg_sq"))?;
            let step = need(format!("{name}.step"))?;
            if m.dims() != p.dims() || v.dims() != p.dims() {
                return Err(Error::Input(format!(
                    "optimizer state of {name} has shape {:?}, the parameter {:?}",
                    m.dims(),
                    p.dims()
                )));
            }
            let step = step.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            s.step = step.first().copied().unwrap_or(0.0) as u64;
            s.m = m.to_dtype(DType::F32)?.to_device(p.device())?;
            s.v = v.to_dtype(DType::F32)?.to_device(p.device())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The one-pass CPU update and the candle-ops update agree.
    #[test]
    fn fused_pass_equals_tensor_ops() {
        let dev = Device::Cpu;
        let shape = (37, 1000);
        let p0 = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let c = AdamWConfig::default();
        let gs: Vec<Tensor> = (1..=3)
            .map(|t| (Tensor::randn(0f32, 1.0, shape, &dev).unwrap() * t as f64).unwrap())
            .collect();
        let mut states = Vec::new();
        for fused in [true, false] {
            let p = Var::from_tensor(&p0).unwrap();
            let z = p0.zeros_like().unwrap();
            let mut s = State {
                m: z.clone(),
                v: z,
                step: 0,
            };
            for (t, g) in (1..=3u64).zip(&gs) {
                let k = Coefs::new(&c, 1e-2, t);
                match fused {
                    true => assert!(update_cpu(&p, g, &mut s, &k).unwrap()),
                    false => update_tensors(&p, g, &mut s, &k).unwrap(),
                }
            }
            states.push((p.as_tensor().clone(), s.m, s.v));
        }
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let ((p1, m1, v1), (p2, m2, v2)) = (&states[0], &states[1]);
        assert!(diff(p1, p2) < 1e-6 && diff(m1, m2) < 1e-6 && diff(v1, v2) < 1e-5);
    }

    /// Two steps of torch.optim.AdamW(lr=0.1, betas=(0.9, 0.99), eps=1e-8,
    /// weight_decay=0.5) on p = [1, -2] with grads [0.5, -1] then [0.25, 2] (values computed
    /// by hand from the formulas in PyTorch's docs).
    #[test]
    fn two_steps_by_hand() {
        let dev = Device::Cpu;
        let p = Var::new(&[1f32, -2.0], &dev).unwrap();
        let cfg = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg).unwrap();
        let mut want = [1f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for (t, g) in [[0.5f64, -1.0], [0.25, 2.0]].iter().enumerate() {
            let mut grads = Grads::new(1);
            let gt = Tensor::new(&[g[0] as f32, g[1] as f32], &dev).unwrap();
            let loss = (p.as_tensor() * gt).unwrap().sum_all().unwrap();
            grads
                .accumulate(opt.params(), &loss.backward().unwrap())
                .unwrap();
            opt.step(&grads, 0.1).unwrap();
            let step = (t + 1) as i32;
            for j in 0..2 {
                want[j] *= 1.0 - 0.1 * 0.5;
                m[j] = 0.9 * m[j] + 0.1 * g[j];
                v[j] = 0.99 * v[j] + 0.01 * g[j] * g[j];
                let mh = m[j] / (1.0 - 0.9f64.powi(step));
                let vh = v[j] / (1.0 - 0.99f64.powi(step));
                want[j] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        for j in 0..2 {
            assert!(
                (got[j] as f64 - want[j]).abs() < 1e-6,
                "{got:?} vs {want:?}"
            );
        }
    }
}
