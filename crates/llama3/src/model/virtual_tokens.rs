//! PEFT's prompt learning: N virtual tokens before every sequence. Prompt tuning trains their
//! input embeddings; prefix tuning trains their keys and values in every layer directly.
//!
//! Without a cache (training, evaluation) the forward takes them in place: prompt tuning puts
//! the N embeddings before the tokens' (positions 0..N, the tokens from N on, their rows
//! dropped at the end), prefix tuning hands each layer's attention its N keys and values
//! (queries at positions N..). With a cache ([`Llama::new_cache`]) they are the cache's first
//! rows, written once: prefix tuning's as stored, prompt tuning's from a forward of its
//! embeddings. Either way a sequence sees what PEFT's `PeftModelForCausalLM` gives it.
//!
//! Dims: N virtual tokens, D hidden, L layers, Hkv KV heads, Dh head dim.

use candle_core::Tensor;

use super::{KvCache, Llama};
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub enum Virtual {
    /// Prompt tuning: (N, D) input embeddings at positions 0..N.
    Prompt(Tensor),
    /// Prefix tuning: PEFT's `prompt_embeddings` (N, L*2*Hkv*Dh); each position's
    /// (L*2, Hkv, Dh) view holds layer l's key at 2l and value at 2l+1, keys as a cache holds
    /// them (RoPE already applied).
    Prefix(Tensor),
}

impl Virtual {
    /// N.
    pub fn len(&self) -> usize {
        self.tensor().dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The trained tensor, (N, D) or (N, L*2*Hkv*Dh).
    pub fn tensor(&self) -> &Tensor {
        match self {
            Virtual::Prompt(t) | Virtual::Prefix(t) => t,
        }
    }

    pub fn tensor_mut(&mut self) -> &mut Tensor {
        match self {
            Virtual::Prompt(t) | Virtual::Prefix(t) => t,
        }
    }

    /// Checks the tensor's shape against `model`'s.
    pub fn check(&self, model: &Llama) -> Result<()> {
        let c = &model.config;
        let (n, width) = self.tensor().dims2()?;
        let (want, what) = match self {
            Virtual::Prompt(_) => (c.hidden_size, "hidden size"),
            Virtual::Prefix(_) => (
                c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim,
                "layers x 2 x KV heads x head dim",
            ),
        };
        if n == 0 || width != want {
            return Err(Error::Input(format!(
                "{n} virtual tokens of width {width}: the model needs at least one, of width \
                 {want} ({what})"
            )));
        }
        Ok(())
    }
}

impl Llama {
    /// Virtual tokens before every sequence: N.
    pub fn virtual_len(&self) -> usize {
        self.virtual_tokens.as_ref().map_or(0, Virtual::len)
    }

    /// Layer `layer`'s prefix keys and values, each (1, Hkv, N, Dh) in the activation dtype
    /// (views of the trained tensor: gradients reach it), when the model has prefix tuning.
    pub fn prefix_of(&self, layer: usize) -> Result<Option<(Tensor, Tensor)>> {
        let Some(Virtual::Prefix(p)) = &self.virtual_tokens else {
            return Ok(None);
        };
        let c = &self.config;
        let n = p.dim(0)?;
        let all = p.reshape((
            n,
            c.num_hidden_layers * 2,
            c.num_key_value_heads,
            c.head_dim,
        ))?;
        let part = |i: usize| -> Result<Tensor> {
            // (N, 1, Hkv, Dh) -> (1, Hkv, N, Dh)
            let x = all
                .narrow(1, i, 1)?
                .squeeze(1)?
                .transpose(0, 1)?
                .unsqueeze(0)?;
            Ok(x.to_dtype(self.dtype())?)
        };
        Ok(Some((part(2 * layer)?, part(2 * layer + 1)?)))
    }

    /// Writes the virtual tokens into the first rows of `cache` (new and empty).
    pub(super) fn fill_virtual(&self, cache: &mut KvCache) -> Result<()> {
        match &self.virtual_tokens {
            None => Ok(()),
            Some(Virtual::Prefix(_)) => {
                let layers = (0..self.layers.len())
                    .map(|l| {
                        self.prefix_of(l)?
                            .ok_or_else(|| Error::Input("prefix tuning without a prefix".into()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                cache.set_prefix(&layers)
            }
            Some(Virtual::Prompt(p)) => {
                // The prompt's keys and values: its embeddings through the layers.
                let b = cache.batch()?;
                let (n, d) = p.dims2()?;
                let x = p
                    .detach()
                    .to_dtype(self.dtype())?
                    .unsqueeze(0)?
                    .broadcast_as((b, n, d))?
                    .contiguous()?;
                self.forward_embeds(x, Some(cache))?;
                cache.keep_as_prefix();
                Ok(())
            }
        }
    }
}
