//! `Llama`: embed -> blocks (RMSNorm, GQA attention, RMSNorm, SwiGLU) -> norm -> head.
//! One definition for every weight kind; see `linear.rs`.

pub mod attention;
mod layer;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod params;
pub mod rope;
mod virtual_tokens;

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

pub use crate::kv::{KvCache, SeqRows};
pub use attention::Attention;
pub use layer::DecoderLayer;
pub use linear::{Dora, Linear, LinearWeight, Lora, Stack};
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use rope::Rope;
pub use virtual_tokens::Virtual;

use crate::config::LlamaConfig;
use crate::quant::Packed;
use crate::weights::{Weight, WeightSource};
use crate::{Error, Result};

/// Token embedding table (V, D), dense or GGUF blocks (rows dequantized on lookup).
#[derive(Clone, Debug)]
pub enum Embedding {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
    /// Q4_0/1, Q5_0/1 or Q8_0 on the CPU, packed as the head's weight (a tied head shares it).
    Packed(Arc<Packed>),
}

impl Embedding {
    /// (B, T) u32 -> (B, T, D)
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embedding::Dense(w) => {
                let (b, t) = ids.dims2()?;
                w.index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, t, ()))?
            }
            Embedding::Quantized(q) => q.embedding(ids)?,
            Embedding::Packed(p) => {
                let (b, t) = ids.dims2()?;
                let rows = p.rows(&ids.flatten_all()?.to_vec1::<u32>()?)?;
                rows.reshape((b, t, ()))?.to_device(ids.device())?
            }
        })
    }

    /// A head over the same storage (tied embeddings).
    fn tied_head(&self) -> Linear {
        match self {
            Embedding::Dense(t) => Linear::new(Weight::Dense(t.clone())),
            Embedding::Quantized(q) => Linear::new(Weight::Quantized(q.clone())),
            Embedding::Packed(p) => Linear::packed(p.clone()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// (V, D); shares the embedding's storage when the head is tied.
    pub lm_head: Linear,
    pub rope: Rope,
    /// PEFT prompt or prefix tuning: virtual tokens before every sequence.
    pub virtual_tokens: Option<Virtual>,
    device: Device,
    /// Activation dtype: the dense weights' dtype, f32 with quantized weights.
    dtype: DType,
    kv_dtype: DType,
}

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    Last,
}

impl Llama {
    /// Builds the model from any weight source (HF names). `rope_freqs`: GGUF
    /// `rope_freqs.weight` when the file has it.
    pub fn load(
        src: &dyn WeightSource,
        config: &LlamaConfig,
        rope_freqs: Option<&[f32]>,
        device: &Device,
    ) -> Result<Self> {
        let c = config;
        let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (h, hkv, dh) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let linear = |name: &str, shape: &[usize]| -> Result<Linear> {
            Ok(Linear::new(src.get(name, shape)?))
        };
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm::new(
                src.get(name, &[d])?.to_dense()?,
                c.rms_norm_eps,
            ))
        };
        let embed_tokens = match src.get("model.embed_tokens.weight", &[v, d])? {
            Weight::Dense(t) => Embedding::Dense(t),
            Weight::Quantized(q) => match Packed::new(&q)? {
                Some(p) => Embedding::Packed(Arc::new(p)),
                None => Embedding::Quantized(q),
            },
            Weight::Packed(p) => Embedding::Packed(p),
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(DecoderLayer {
                input_layernorm: norm(&format!("{p}.input_layernorm.weight"))?,
                self_attn: Attention {
                    q_proj: linear(&format!("{p}.self_attn.q_proj.weight"), &[h * dh, d])?,
                    k_proj: linear(&format!("{p}.self_attn.k_proj.weight"), &[hkv * dh, d])?,
                    v_proj: linear(&format!("{p}.self_attn.v_proj.weight"), &[hkv * dh, d])?,
                    o_proj: linear(&format!("{p}.self_attn.o_proj.weight"), &[d, h * dh])?,
                    qkv: None,
                    n_head: h,
                    n_head_kv: hkv,
                    head_dim: dh,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate_proj: linear(&format!("{p}.mlp.gate_proj.weight"), &[f, d])?,
                    up_proj: linear(&format!("{p}.mlp.up_proj.weight"), &[f, d])?,
                    down_proj: linear(&format!("{p}.mlp.down_proj.weight"), &[d, f])?,
                    gate_up: None,
                },
            });
        }
        // HF ties when config says so; a checkpoint without lm_head.weight is tied too (GGUF
        // writes no `output.weight` for tied models).
        let tied = c.tie_word_embeddings || !src.contains("lm_head.weight");
        let lm_head = if tied {
            embed_tokens.tied_head()
        } else {
            linear("lm_head.weight", &[v, d])?
        };
        let (dtype, kv_dtype) = match &embed_tokens {
            Embedding::Dense(t) => (t.dtype(), t.dtype()),
            Embedding::Quantized(_) | Embedding::Packed(_) => (DType::F32, DType::F16),
        };
        let mut config = c.clone();
        config.tie_word_embeddings = tied;
        let mut model = Self {
            embed_tokens,
            layers,
            norm: norm("model.norm.weight")?,
            lm_head,
            rope: Rope::new(&config, rope_freqs, device),
            virtual_tokens: None,
            config,
            device: device.clone(),
            dtype,
            kv_dtype,
        };
        model.stack_projections()?;
        Ok(model)
    }

    /// Where the device takes them (`ops::linear::stacks_on`: a GPU), stacks each layer's
    /// dense q/k/v and gate/up weights ([`Stack`]): three launches fewer per layer and token.
    pub fn stack_projections(&mut self) -> Result<()> {
        if !crate::ops::linear::stacks_on(&self.device) {
            return Ok(());
        }
        for layer in self.layers.iter_mut() {
            layer.stack_projections()?;
        }
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// (B, T) u32 ids -> (B, T, D) hidden states after the final norm. Positions start at the
    /// cache length (0 without a cache).
    pub fn forward_hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        in_pool(|| {
            self.check_ids(&ids.flatten_all()?.to_vec1::<u32>()?)?;
            self.forward_hidden_here(ids, cache)
        })
    }

    /// An error naming the first id outside the vocabulary, checked on the host before ids
    /// reach the device (an embedding lookup past the table is undefined on a GPU).
    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            Some(bad) => Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.config.vocab_size
            ))),
            None => Ok(()),
        }
    }

    /// Ids already checked by [`Self::check_ids`].
    fn forward_hidden_here(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = self.embed_tokens.forward(ids)?; // (B, T, D)
        match (&cache, &self.virtual_tokens) {
            // Prompt tuning without a cache: its N embeddings first, their rows dropped after.
            (None, Some(Virtual::Prompt(p))) => {
                let (n, d) = p.dims2()?;
                let p = p
                    .to_dtype(x.dtype())?
                    .unsqueeze(0)?
                    .broadcast_as((b, n, d))?;
                let x = Tensor::cat(&[&p.contiguous()?, &x], 1)?; // (B, N+T, D)
                Ok(self.forward_embeds(x, None)?.narrow(1, n, t)?)
            }
            _ => self.forward_embeds(x, cache),
        }
    }

    /// (B, T, D) input embeddings -> (B, T, D) hidden states after the final norm, from
    /// the cache's position on (after a prefix-tuning prefix without a cache).
    fn forward_embeds(&self, x: Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let t = x.dim(1)?;
        let pos = match (&cache, &self.virtual_tokens) {
            (Some(c), _) => c.pos(),
            (None, Some(Virtual::Prefix(p))) => p.dim(0)?,
            (None, _) => 0,
        };
        if let Some(c) = cache.as_ref() {
            c.reserve(t)?;
        }
        let (cos, sin, mask) = self.positions(pos, t)?;
        let mut x = x;
        let mut pending = None; // the last MLP output, added with the next norm
        for (i, layer) in self.layers.iter().enumerate() {
            // With a cache the prefix is its first rows; without one, each layer's own.
            let prefix = match cache.is_some() {
                true => None,
                false => self.prefix_of(i)?,
            };
            let prefix = prefix.as_ref().map(|(k, v)| (k, v));
            let c = cache.as_deref_mut().map(|c| (c, i));
            let (nx, m) =
                layer.forward_carry(&x, pending.as_ref(), &cos, &sin, mask.as_ref(), c, prefix)?;
            (x, pending) = (nx, Some(m));
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        match pending {
            Some(p) => Ok(self.norm.forward_add(&x, &p)?.1),
            None => self.norm.forward(&x),
        }
    }

    /// RoPE tables (T, Dh/2) in the activation dtype and the causal mask (None for one token)
    /// of `t` positions after `pos` cached ones: what every layer's forward takes.
    pub fn positions(&self, pos: usize, t: usize) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (cos, sin) = self.rope.tables(pos, t)?;
        let (cos, sin) = (cos.to_dtype(self.dtype)?, sin.to_dtype(self.dtype)?);
        let mask = match t {
            1 => None,
            _ => Some(attention::causal_mask(t, pos, &self.device)?),
        };
        Ok((cos, sin, mask))
    }

    /// (B, T) u32 ids -> (B, T, V) logits, or (B, 1, V) with `Logits::Last`.
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        which: Logits,
    ) -> Result<Tensor> {
        in_pool(|| {
            self.check_ids(&ids.flatten_all()?.to_vec1::<u32>()?)?;
            self.logits_of(self.forward_hidden_here(ids, cache)?, which)
        })
    }

    /// One sequence's ids from the host (checked there, then uploaded), appended to `cache`:
    /// (T) -> (1, T, V) logits, or (1, 1, V) with `Logits::Last`. What generation calls.
    pub fn forward_tokens(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        which: Logits,
    ) -> Result<Tensor> {
        self.check_ids(ids)?;
        in_pool(|| {
            let ids = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // (1, T)
            self.logits_of(self.forward_hidden_here(&ids, Some(cache))?, which)
        })
    }

    /// (B, T, D) final hidden states -> the logits `which` asks for.
    fn logits_of(&self, x: Tensor, which: Logits) -> Result<Tensor> {
        {
            let x = match which {
                Logits::All => x,
                Logits::Last => {
                    let t = x.dim(1)?;
                    x.narrow(1, t - 1, 1)?
                }
            };
            self.lm_head.forward(&x)
        }
    }

    /// One decode step for N independent sequences (continuous batching): `tokens[i]` is
    /// appended to `caches[i]` and the next-token logits (N, V) come back. [`Self::forward_batch`]
    /// with one token per sequence.
    pub fn forward_step(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let parts: Vec<&[u32]> = tokens.chunks(1).collect();
        self.forward_batch(&parts, caches)
    }

    /// One forward over N independent sequences (continuous batching): `parts[i]` (one token
    /// for a decode step, or a chunk of a prompt being prefilled) is appended to `caches[i]`,
    /// each a batch-1 cache at its own position, and the logits after each part's last token
    /// (N, V) come back. Weight matmuls run once for all rows; the quantized kernels compute
    /// every row exactly as they would alone and attention runs per sequence, so a sequence's
    /// logits do not depend on what else is in the batch, nor on whether its prompt was
    /// prefilled alone.
    pub fn forward_batch(&self, parts: &[&[u32]], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let rows = vec![1; parts.len()];
        in_pool(|| self.forward_batch_here(parts, caches, &rows))
    }

    /// [`Self::forward_batch`] with the logits of the last `rows[i]` positions of each part,
    /// in order: (sum of rows, V). A sequence verifying draft tokens wants a row per position.
    pub fn forward_batch_rows(
        &self,
        parts: &[&[u32]],
        caches: &mut [&mut KvCache],
        rows: &[usize],
    ) -> Result<Tensor> {
        in_pool(|| self.forward_batch_here(parts, caches, rows))
    }

    fn forward_batch_here(
        &self,
        parts: &[&[u32]],
        caches: &mut [&mut KvCache],
        rows: &[usize],
    ) -> Result<Tensor> {
        let n = parts.len();
        if n == 0 || n != caches.len() || parts.iter().any(|p| p.is_empty()) {
            return Err(Error::Input(format!(
                "forward_batch: {n} parts (each needs a token) for {} caches",
                caches.len()
            )));
        }
        if rows.len() != n || rows.iter().zip(parts).any(|(&r, p)| r == 0 || r > p.len()) {
            return Err(Error::Input(format!(
                "forward_batch: rows {rows:?} for parts of {:?} tokens",
                parts.iter().map(|p| p.len()).collect::<Vec<_>>()
            )));
        }
        for p in parts {
            self.check_ids(p)?;
        }
        let mut seqs = Vec::with_capacity(n);
        for (c, p) in caches.iter().zip(parts) {
            c.reserve(p.len())?;
            let (mut cos, mut sin) = (Vec::new(), Vec::new());
            for pos in c.pos()..c.pos() + p.len() {
                let (c, s) = self.rope.row(pos);
                cos.extend(c);
                sin.extend(s);
            }
            seqs.push(SeqRows::new(p.len(), cos, sin));
        }
        let ids: Vec<u32> = parts.concat();
        let m = ids.len();
        let ids = Tensor::new(ids, &self.device)?.unsqueeze(1)?; // (M, 1)
        let mut x = self.embed_tokens.forward(&ids)?; // (M, 1, D)
        let mut pending = None; // the last MLP output, added with the next norm
        for (i, layer) in self.layers.iter().enumerate() {
            let (nx, m) = layer.forward_batch_carry(&x, pending.as_ref(), &seqs, caches, i)?;
            (x, pending) = (nx, Some(m));
        }
        if let Some(p) = pending {
            x = (x + p)?;
        }
        for (c, p) in caches.iter_mut().zip(parts) {
            c.advance(p.len());
        }
        // Each sequence's last rows: (R, 1, D).
        let r: usize = rows.iter().sum();
        if m > r {
            let mut keep = Vec::with_capacity(r);
            let mut end = 0u32;
            for (p, &k) in parts.iter().zip(rows) {
                end += p.len() as u32;
                keep.extend(end - k as u32..end);
            }
            x = x.index_select(&Tensor::new(keep, &self.device)?, 0)?;
        }
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.squeeze(1)?) // (R, V)
    }

    /// A KV cache for `batch` sequences of up to `capacity` positions.
    /// With virtual tokens (prompt or prefix tuning) they fill its first rows.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let n = self.virtual_len();
        let capacity = (capacity + n).min(self.config.max_position_embeddings.max(1));
        let mut cache = KvCache::new(
            &self.config,
            batch,
            capacity,
            self.dtype,
            self.kv_dtype,
            &self.device,
        )?;
        self.fill_virtual(&mut cache)?;
        Ok(cache)
    }

    /// How the KV cache stores keys and values: f16 by default for quantized checkpoints (as
    /// llama.cpp), the activation dtype otherwise.
    pub fn set_kv_dtype(&mut self, dtype: DType) {
        self.kv_dtype = dtype;
    }

    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    /// Mixed precision: every dense matmul (projections and head) in `dtype`, or in its
    /// weight's dtype with `None`.
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        for (_, lin) in self.linears_mut() {
            lin.compute_dtype = dtype;
        }
    }

    /// How many weight matmuls take each kernel (`ops::linear::kernel`), most first: what
    /// `llama3 info` and `bench` report, so a type without our kernels is visible.
    pub fn matmul_kernels(&self) -> Vec<(String, usize)> {
        let mut count = std::collections::BTreeMap::<String, usize>::new();
        let layers = self.layers.iter().flat_map(|l| {
            let (a, m) = (&l.self_attn, &l.mlp);
            [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ]
        });
        for lin in layers.chain([&self.lm_head]) {
            *count
                .entry(crate::ops::linear::kernel(&lin.weight))
                .or_default() += 1;
        }
        let mut out: Vec<(String, usize)> = count.into_iter().collect();
        out.sort_by_key(|k| std::cmp::Reverse(k.1));
        out
    }

    /// Every `Linear` with its HF module name (`model.layers.0.self_attn.q_proj`, ...,
    /// `lm_head`), in checkpoint order. A tied head is listed as `lm_head` too (it holds its
    /// own `Linear` over the embedding's storage).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            let p = format!("model.layers.{i}");
            for (n, lin) in [
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ] {
                out.push((format!("{p}.{n}"), lin));
            }
        }
        out.push(("lm_head".to_string(), &mut self.lm_head));
        out
    }
}

/// Runs `f` on a worker of rayon's pool (at once when already on one). A forward is hundreds
/// of parallel matmuls and attention loops; started from a thread outside the pool, each one
/// would be injected into the pool and end by waking the caller (a futex round trip, ~10 µs,
/// 240 times per decoded token); from inside, they are plain joins.
fn in_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::scope(|_| f())
}
