//! What attention works over, shared by the model, the ops layer and the kernels: the
//! preallocated KV cache (per layer one K and one V buffer of `capacity` positions, written in
//! place; zero-filled buffers are lazily committed by the OS, so a large capacity costs memory
//! only as positions are used), the head shapes, and one sequence's new rows in a batch.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

use crate::config::LlamaConfig;
use crate::{Error, Result};

/// Shapes of one layer's attention: `h` query heads, `hkv` key/value heads, `dh` head dim.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub h: usize,
    pub hkv: usize,
    pub dh: usize,
}

/// One sequence's part of a batch: `t` new positions and their RoPE tables, (T, Dh/2)
/// row-major each, for the positions after what its cache holds.
#[derive(Clone, Debug)]
pub struct SeqRows {
    pub t: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// The tables as tensors, made by the first layer that asks ([`SeqRows::tables`]).
    tensors: OnceLock<(Tensor, Tensor)>,
}

impl SeqRows {
    pub fn new(t: usize, cos: Vec<f32>, sin: Vec<f32>) -> Self {
        Self {
            t,
            cos,
            sin,
            tensors: OnceLock::new(),
        }
    }

    /// cos and sin (T, Dh/2) on `device` in `dtype`: uploaded once per forward, not once per
    /// layer (every layer of a forward asks for the same).
    pub fn tables(&self, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        if let Some((c, s)) = self.tensors.get() {
            if c.device().same_device(device) && c.dtype() == dtype {
                return Ok((c.clone(), s.clone()));
            }
        }
        let half = self.cos.len() / self.t.max(1);
        let table = |v: &[f32]| Tensor::from_slice(v, (self.t, half), device)?.to_dtype(dtype);
        let (c, s) = (table(&self.cos)?, table(&self.sin)?);
        let _ = self.tensors.set((c.clone(), s.clone()));
        Ok((c, s))
    }
}

pub struct KvCache {
    /// Per layer (K, V), each (B, Hkv, R, Dh) with R = `rows_for(capacity)` >= capacity.
    layers: Vec<(Tensor, Tensor)>,
    /// Keys and values are stored as f16 though activations are wider (llama.cpp's default
    /// f16 cache): half the memory and half the bytes the attention loop reads per token.
    round_f16: bool,
    /// Activation dtype: what `append` returns.
    dtype: DType,
    /// Rows before the first token: a virtual prefix (prefix or prompt tuning, PEFT) written
    /// once by [`Self::set_prefix`]; every sequence attends to it, none of the token
    /// bookkeeping (`len`, spans, `truncate`) counts it.
    base: usize,
    /// Tokens cached, after the `base` rows.
    len: usize,
    /// Tokens the cache can hold (rows for `base + capacity` are allocated).
    capacity: usize,
}

impl KvCache {
    /// `dtype`: activations; `precision`: the precision K/V keep (f16 rounds like llama.cpp's
    /// default f16 cache).
    pub fn new(
        cfg: &LlamaConfig,
        batch: usize,
        capacity: usize,
        dtype: DType,
        precision: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (
            batch,
            cfg.num_key_value_heads,
            rows_for(capacity),
            cfg.head_dim,
        );
        let round_f16 = precision == DType::F16 && dtype != DType::F16;
        let stored = if round_f16 { DType::F16 } else { dtype };
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, stored, device)?,
                    Tensor::zeros(shape, stored, device)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            round_f16,
            dtype,
            base: 0,
            len: 0,
            capacity,
        })
    }

    /// Writes a virtual prefix of N positions, per layer (K, V) each (1, Hkv, N, Dh), K with
    /// RoPE at positions 0..N, into the first rows of an empty cache for every sequence of the
    /// batch: tokens then start at position N and attend to it. The token capacity shrinks by N.
    pub fn set_prefix(&mut self, prefix: &[(Tensor, Tensor)]) -> Result<()> {
        let n = prefix.first().map_or(Ok(0), |(k, _)| k.dim(2))?;
        if self.pos() != 0 || prefix.len() != self.layers.len() || n > self.capacity {
            return Err(Error::Input(format!(
                "a virtual prefix of {n} positions for {} layers does not fit an empty cache of \
                 {} layers and {} positions",
                prefix.len(),
                self.layers.len(),
                self.capacity
            )));
        }
        for ((kc, vc), (k, v)) in self.layers.iter().zip(prefix) {
            let b = kc.dim(0)?;
            let fit = |x: &Tensor| -> Result<Tensor> {
                Ok(x.to_dtype(kc.dtype())?
                    .broadcast_as((b, x.dim(1)?, n, x.dim(3)?))?
                    .contiguous()?)
            };
            kc.slice_set(&fit(k)?, 2, 0)?;
            vc.slice_set(&fit(v)?, 2, 0)?;
        }
        self.base = n;
        self.capacity -= n;
        Ok(())
    }

    /// Turns the tokens cached so far into the virtual prefix (prompt tuning's, computed by a
    /// forward of its embeddings into the empty cache).
    pub fn keep_as_prefix(&mut self) {
        self.base += self.len;
        self.capacity -= self.len;
        self.len = 0;
    }

    /// Sequences the cache holds (B).
    pub fn batch(&self) -> Result<usize> {
        Ok(self.layers.first().map_or(Ok(1), |(k, _)| k.dim(0))?)
    }

    /// The position of the next token: the virtual prefix's rows plus [`Self::len`] (where
    /// RoPE and the causal mask start, and the rows attention reads before the new ones).
    pub fn pos(&self) -> usize {
        self.base + self.len
    }

    /// Rows each head's buffer holds (at least [`Self::capacity`], see [`rows_for`]): the
    /// stride between heads, in positions.
    pub fn rows(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// True when K/V are stored as f16 under wider activations; the attention then rounds
    /// queries and probabilities to f16 too (as llama.cpp does with an f16 cache).
    pub fn rounds_to_f16(&self) -> bool {
        self.round_f16
    }

    /// The K and V buffers of `layer`, each (B, Hkv, R, Dh) (R: [`Self::rows`]), f16 when
    /// [`KvCache::rounds_to_f16`].
    pub fn layer(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        self.layers
            .get(layer)
            .map(|(k, v)| (k, v))
            .ok_or_else(|| Error::Input(format!("KV cache has no layer {layer}")))
    }

    /// Tokens already cached (a virtual prefix not counted; see [`Self::pos`]).
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
    /// keys and values so far, (B, Hkv, S, Dh) with S = pos + T, in the activation dtype.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        self.reserve(t)?;
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(&k.to_dtype(kc.dtype())?.contiguous()?, 2, self.pos())?;
        vc.slice_set(&v.to_dtype(vc.dtype())?.contiguous()?, 2, self.pos())?;
        let s = self.pos() + t;
        let read = |c: &Tensor| -> Result<Tensor> { Ok(c.narrow(2, 0, s)?.to_dtype(self.dtype)?) };
        Ok((read(kc)?, read(vc)?))
    }

    /// Called once per forward, after every layer appended its `t` positions.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// A copy of positions `start..start + len` of every layer: per layer (K, V), each
    /// (B, Hkv, len, Dh) in the stored dtype (what a prefix cache keeps).
    pub fn read_span(&self, start: usize, len: usize) -> Result<Vec<(Tensor, Tensor)>> {
        if start + len > self.len {
            return Err(Error::Input(format!(
                "KV span {start}..{} is beyond the {} cached positions",
                start + len,
                self.len
            )));
        }
        self.layers
            .iter()
            // A compact copy (`contiguous` could return a view of the cache).
            .map(|(k, v)| {
                Ok((
                    k.narrow(2, self.base + start, len)?.force_contiguous()?,
                    v.narrow(2, self.base + start, len)?.force_contiguous()?,
                ))
            })
            .collect()
    }

    /// Writes spans read by [`Self::read_span`] at position `start` (at most the current
    /// length: spans are written in order) and makes the cache end after them.
    pub fn write_span(&mut self, start: usize, span: &[(Tensor, Tensor)]) -> Result<()> {
        let len = span.first().map_or(Ok(0), |(k, _)| k.dim(2))?;
        if span.len() != self.layers.len() || start > self.len || start + len > self.capacity {
            return Err(Error::Input(format!(
                "KV span of {len} positions for {} layers at {start} does not fit a cache of {} \
                 layers holding {} of {} positions",
                span.len(),
                self.layers.len(),
                self.len,
                self.capacity
            )));
        }
        for ((kc, vc), (k, v)) in self.layers.iter().zip(span) {
            kc.slice_set(k, 2, self.base + start)?;
            vc.slice_set(v, 2, self.base + start)?;
        }
        self.len = start + len;
        Ok(())
    }
}

/// Rows allocated for `capacity` positions per head: an odd multiple of 8. Heads' buffers a
/// power of two apart (a 4096-position cache: 512 KiB) map the attention's streams onto the
/// same cache sets; measured with the default model, decoding at capacity 4096 ran at 127 tok/s
/// against 152 at 4104 and 158 at 160. An odd multiple of 8 rows is never such a stride.
pub fn rows_for(capacity: usize) -> usize {
    (capacity.div_ceil(8) | 1) * 8
}
