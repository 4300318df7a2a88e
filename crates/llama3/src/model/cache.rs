//! Preallocated KV cache: per layer one K and one V buffer of `capacity` positions, written in
//! place. Zero-filled buffers are lazily committed by the OS, so a large capacity costs memory
//! only as positions are used.

use candle_core::{DType, Device, Tensor};

use crate::config::LlamaConfig;
use crate::{Error, Result};

pub struct KvCache {
    /// Per layer (K, V), each (B, Hkv, capacity, Dh).
    layers: Vec<(Tensor, Tensor)>,
    /// Activation dtype: what `append` returns.
    dtype: DType,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// `dtype`: activations; `store`: what K/V are kept as (f16 halves the memory and rounds
    /// like llama.cpp's default f16 cache).
    pub fn new(
        cfg: &LlamaConfig,
        batch: usize,
        capacity: usize,
        dtype: DType,
        store: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim);
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, store, device)?,
                    Tensor::zeros(shape, store, device)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            dtype,
            len: 0,
            capacity,
        })
    }

    /// True when K/V are stored in a narrower type than the activations, whose rounding the
    /// attention then applies to queries and probabilities too (as llama.cpp does with f16).
    pub fn rounds_to_f16(&self) -> bool {
        self.layers
            .first()
            .is_some_and(|(k, _)| k.dtype() == DType::F16)
            && self.dtype != DType::F16
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget everything after the first `len` positions (chat rewind, `/reset`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Checks that `t` more positions fit.
    pub fn reserve(&self, t: usize) -> Result<()> {
        if self.len + t > self.capacity {
            return Err(Error::Input(format!(
                "context full: {} cached + {t} new positions exceed the context of {} tokens",
                self.len, self.capacity
            )));
        }
        Ok(())
    }

    /// Writes k, v (B, Hkv, T, Dh) at the current position of `layer` and returns the cached
    /// keys and values so far, (B, Hkv, S, Dh) with S = len + T.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        self.reserve(t)?;
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(&k.to_dtype(kc.dtype())?.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.to_dtype(vc.dtype())?.contiguous()?, 2, self.len)?;
        let s = self.len + t;
        Ok((
            kc.narrow(2, 0, s)?.to_dtype(self.dtype)?,
            vc.narrow(2, 0, s)?.to_dtype(self.dtype)?,
        ))
    }

    /// Called once per forward, after every layer appended its `t` positions.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
