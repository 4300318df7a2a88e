//! One decoder block: RMSNorm, GQA attention, residual, RMSNorm, SwiGLU MLP, residual.

use candle_core::Tensor;

use super::{Attention, KvCache, Mlp, RmsNorm, SeqRows, Stack};
use crate::Result;

#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// (B, T, D) -> (B, T, D)
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (x, m) = self.forward_carry(x, None, cos, sin, mask, cache, None)?;
        Ok((x + m)?)
    }

    /// [`Self::forward`] with the residual stream carried as `x + pending` (the previous
    /// layer's MLP output, not yet added): the add joins this layer's input norm, one launch on
    /// a GPU. Returns this layer's (x, MLP output), unsummed. `prefix`: prefix tuning's keys
    /// and values of this layer without a cache (see [`Attention::forward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_carry(
        &self,
        x: &Tensor,
        pending: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
        prefix: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let (x, h) = self.input_norm(x, pending)?;
        let a = self.self_attn.forward(&h, cos, sin, mask, cache, prefix)?;
        let (x, h) = self.post_attention_layernorm.forward_add(&x, &a)?; // x + a, its norm
        Ok((x, self.mlp.forward(&h)?))
    }

    /// [`Self::forward_carry`] for the new rows of N sequences with their own caches (see
    /// [`Attention::forward_batch`]): (M, 1, D) each.
    pub fn forward_batch_carry(
        &self,
        x: &Tensor,
        pending: Option<&Tensor>,
        seqs: &[SeqRows],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (x, h) = self.input_norm(x, pending)?;
        let a = self.self_attn.forward_batch(&h, seqs, caches, layer)?;
        let (x, h) = self.post_attention_layernorm.forward_add(&x, &a)?;
        Ok((x, self.mlp.forward(&h)?))
    }

    /// (x + pending, its input norm).
    fn input_norm(&self, x: &Tensor, pending: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        match pending {
            Some(p) => self.input_layernorm.forward_add(x, p),
            None => Ok((x.clone(), self.input_layernorm.forward(x)?)),
        }
    }

    /// Stacks the dense q/k/v and gate/up weights ([`Stack`]): two matmuls fewer per layer
    /// at inference. Quantized weights are left as they are.
    pub fn stack_projections(&mut self) -> Result<()> {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        a.qkv = Stack::new(&mut [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj])?;
        m.gate_up = Stack::new(&mut [&mut m.gate_proj, &mut m.up_proj])?;
        Ok(())
    }

    /// Drops the stacks (their memory) once the layers' weights are replaced.
    pub fn unstack_projections(&mut self) {
        self.self_attn.qkv = None;
        self.mlp.gate_up = None;
    }

    /// The new rows of N sequences with their own caches (see [`Attention::forward_batch`]):
    /// (M, 1, D) -> (M, 1, D).
    pub fn forward_batch(
        &self,
        x: &Tensor,
        seqs: &[SeqRows],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        let a = self.self_attn.forward_batch(&h, seqs, caches, layer)?;
        let (x, h) = self.post_attention_layernorm.forward_add(x, &a)?; // x + a, its norm
        Ok((&x + self.mlp.forward(&h)?)?)
    }
}
