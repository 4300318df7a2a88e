//! Gradients of the trainable parameters: accumulated over micro-batches, clipped by global
//! norm (PyTorch `clip_grad_norm_`), checked for parameters the backward pass never reached.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::dist::Collective;
use crate::{Error, Result};

/// Floats per all-reduce bucket: PyTorch DDP's 25 MB (`bucket_cap_mb`).
const BUCKET: usize = 25 * 1024 * 1024 / 4;

/// One optional gradient per parameter, in the order of the parameter list.
#[derive(Clone, Debug, Default)]
pub struct Grads {
    grads: Vec<Option<Tensor>>,
}

impl Grads {
    pub fn new(n_params: usize) -> Self {
        Self {
            grads: vec![None; n_params],
        }
    }

    /// Adds this backward pass's gradients (one micro-batch) to the running sums.
    pub fn accumulate(&mut self, params: &[(String, Var)], store: &GradStore) -> Result<()> {
        if params.len() != self.grads.len() {
            return Err(Error::Input(format!(
                "{} parameters for {} gradient slots",
                params.len(),
                self.grads.len()
            )));
        }
        for ((_, var), slot) in params.iter().zip(self.grads.iter_mut()) {
            let Some(g) = store.get(var.as_tensor()) else {
                continue;
            };
            // Sums are new tensors: the store's may be shared with the graph.
            *slot = Some(match slot.take() {
                None => g.detach().copy()?,
                Some(acc) => (acc + g.detach())?,
            });
        }
        Ok(())
    }

    /// Adds `g` to parameter `i`'s running sum (gradients computed piecewise, as with
    /// recomputation).
    pub fn add(&mut self, i: usize, g: &Tensor) -> Result<()> {
        let slot = self
            .grads
            .get_mut(i)
            .ok_or_else(|| Error::Input(format!("no gradient slot {i}")))?;
        *slot = Some(match slot.take() {
            None => g.detach().copy()?,
            Some(acc) => (acc + g.detach())?,
        });
        Ok(())
    }

    /// The gradient of parameter `i`, None when no backward pass reached it.
    pub fn get(&self, i: usize) -> Option<&Tensor> {
        self.grads.get(i).and_then(|g| g.as_ref())
    }

    /// Names of the parameters without a gradient: a non-empty list means the graph is cut
    /// somewhere (a fused op without backward, a detach) or a weight is unused.
    pub fn missing<'a>(&self, params: &'a [(String, Var)]) -> Vec<&'a str> {
        params
            .iter()
            .zip(&self.grads)
            .filter(|(_, g)| g.is_none())
            .map(|((n, _), _)| n.as_str())
            .collect()
    }

    /// The global L2 norm over all gradients (f32 per tensor, summed in f64). The per-tensor
    /// sums stay on the device until one read-back (one GPU sync, not one per tensor).
    pub fn global_norm(&self) -> Result<f64> {
        let sums = self
            .grads
            .iter()
            .flatten()
            .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        if sums.is_empty() {
            return Ok(0.0);
        }
        let sq: f64 = Tensor::stack(&sums, 0)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .sum();
        Ok(sq.sqrt())
    }

    /// PyTorch `clip_grad_norm_(max_norm)`: scales every gradient by
    /// `min(1, max_norm / (norm + 1e-6))`. Returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            for g in self.grads.iter_mut().flatten() {
                *g = (&*g * coef)?;
            }
        }
        Ok(norm)
    }

    /// Sums every gradient over the ranks of `comm` (data parallelism: each rank accumulated
    /// its own micro-batches, whose losses were divided by the step's counted tokens over all
    /// ranks), in buckets of consecutive parameters of at most 25 MB, so every rank then
    /// holds the gradient one process accumulating all the micro-batches would. A
    /// parameter without a gradient on a rank that got no data this step counts as zeros
    /// there; one without a gradient on every rank stays without.
    pub fn all_reduce(&mut self, params: &[(String, Var)], comm: &dyn Collective) -> Result<()> {
        if comm.size() == 1 {
            return Ok(());
        }
        if params.len() != self.grads.len() {
            return Err(Error::Input(format!(
                "{} parameters for {} gradient slots",
                params.len(),
                self.grads.len()
            )));
        }
        let mut present: Vec<f64> = self
            .grads
            .iter()
            .map(|g| g.is_some() as u8 as f64)
            .collect();
        comm.all_reduce_f64(&mut present)?;
        for ((slot, (_, var)), &p) in self.grads.iter_mut().zip(params).zip(&present) {
            if slot.is_none() && p > 0.0 {
                *slot = Some(var.as_tensor().zeros_like()?);
            }
        }
        let idx: Vec<usize> = (0..self.grads.len())
            .filter(|&i| present[i] > 0.0)
            .collect();
        let sizes: Vec<usize> = self
            .grads
            .iter()
            .map(|g| g.as_ref().map_or(0, |g| g.elem_count()))
            .collect();
        let numel = |i: usize| sizes[i];
        let mut start = 0;
        while start < idx.len() {
            let (mut end, mut len) = (start, 0);
            while end < idx.len() && (end == start || len + numel(idx[end]) <= BUCKET) {
                len += numel(idx[end]);
                end += 1;
            }
            let bucket = &idx[start..end];
            match self.grads[bucket[0]]
                .as_ref()
                .is_some_and(|g| g.device().is_cuda())
            {
                // On the GPU: one device tensor, summed where it is (NCCL).
                true => self.all_reduce_tensors(bucket, comm)?,
                // On the CPU: one host buffer (padded to a multiple of the rank count), two
                // copies in all.
                false => self.all_reduce_host(bucket, len, comm)?,
            }
            start = end;
        }
        Ok(())
    }

    /// The gradients `bucket` summed over ranks as one device tensor.
    fn all_reduce_tensors(&mut self, bucket: &[usize], comm: &dyn Collective) -> Result<()> {
        let parts = bucket
            .iter()
            .filter_map(|&i| self.grads[i].as_ref())
            .map(|g| g.to_dtype(DType::F32)?.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let summed = comm.all_reduce_tensor(&Tensor::cat(&parts, 0)?)?;
        let mut off = 0;
        for &i in bucket {
            if let Some(g) = self.grads[i].as_mut() {
                let n = g.elem_count();
                let s = summed.narrow(0, off, n)?.reshape(g.shape())?;
                *g = s.to_dtype(g.dtype())?;
                off += n;
            }
        }
        Ok(())
    }

    /// The gradients `bucket` (`len` floats) summed over ranks through one host buffer.
    fn all_reduce_host(
        &mut self,
        bucket: &[usize],
        len: usize,
        comm: &dyn Collective,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(len.div_ceil(comm.size()) * comm.size());
        for &i in bucket {
            if let Some(g) = &self.grads[i] {
                buf.extend_from_slice(&g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        buf.resize(buf.capacity(), 0.0);
        comm.all_reduce_f32(&mut buf)?;
        let mut off = 0;
        for &i in bucket {
            if let Some(g) = self.grads[i].as_mut() {
                let n = g.elem_count();
                let s = Tensor::from_slice(&buf[off..off + n], g.shape(), g.device())?;
                *g = s.to_dtype(g.dtype())?;
                off += n;
            }
        }
        Ok(())
    }

    /// Forgets all gradients (after the optimizer step).
    pub fn clear(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn accumulates_and_clips() {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.0], &dev).unwrap();
        let b = Var::new(&[3f32], &dev).unwrap();
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b)];
        let mut grads = Grads::new(2);
        for _ in 0..2 {
            // d/da sum(3a) = 3 per element
            let loss = (a.as_tensor() * 3.0).unwrap().sum_all().unwrap();
            grads
                .accumulate(&params, &loss.backward().unwrap())
                .unwrap();
        }
        assert_eq!(grads.get(0).unwrap().to_vec1::<f32>().unwrap(), [6.0, 6.0]);
        assert_eq!(grads.missing(&params), ["b"]);
        let norm = grads.clip_global_norm(1.0).unwrap();
        assert!((norm - 72f64.sqrt()).abs() < 1e-5);
        assert!((grads.global_norm().unwrap() - 1.0).abs() < 1e-5);
    }
}
