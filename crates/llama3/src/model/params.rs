//! The model's weights as trainable candle `Var`s, and back as named tensors for saving.
//! Training uses the one model definition: the weights are swapped for variables in place, so
//! `forward` records the graph that `backward` walks. Names are HF checkpoint names.

use candle_core::{DType, Tensor, Var};

use super::{Embedding, Linear, LinearWeight, Llama};
use crate::{Error, Result};

/// HF name of the head; absent from tied checkpoints (HF `save_pretrained` drops tied copies).
const LM_HEAD: &str = "lm_head.weight";
const EMBED: &str = "model.embed_tokens.weight";

impl Llama {
    /// Turns every weight into a `Var` in place and returns them with their HF names, in the
    /// order of `named_tensors`. A tied head shares the embedding's `Var` (listed once, as
    /// `model.embed_tokens.weight`), so its gradient holds both uses, as in PyTorch.
    ///
    /// Quantized weights are refused: call [`Llama::dequantize`] first (QLoRA is separate).
    /// LoRA adapters stay as they are and are not listed.
    pub fn trainable_params(&mut self) -> Result<Vec<(String, Var)>> {
        let mut params = Vec::new();
        let embed = match &self.embed_tokens {
            Embedding::Dense(t) => Var::from_tensor(t)?,
            Embedding::Quantized(_) | Embedding::Packed(_) => return Err(quantized(EMBED)),
        };
        self.embed_tokens = Embedding::Dense(embed.as_tensor().clone());
        params.push((EMBED.to_string(), embed.clone()));
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.unstack_projections(); // the weights become separate variables
            let p = format!("model.layers.{i}");
            let norm_var = |w: &mut Tensor, name: String| -> Result<(String, Var)> {
                let v = Var::from_tensor(w)?;
                *w = v.as_tensor().clone();
                Ok((name, v))
            };
            params.push(norm_var(
                &mut layer.input_layernorm.weight,
                format!("{p}.input_layernorm.weight"),
            )?);
            let a = &mut layer.self_attn;
            for (lin, n) in [
                (&mut a.q_proj, "q_proj"),
                (&mut a.k_proj, "k_proj"),
                (&mut a.v_proj, "v_proj"),
                (&mut a.o_proj, "o_proj"),
            ] {
                params.push(linear_var(lin, format!("{p}.self_attn.{n}.weight"))?);
            }
            params.push(norm_var(
                &mut layer.post_attention_layernorm.weight,
                format!("{p}.post_attention_layernorm.weight"),
            )?);
            let m = &mut layer.mlp;
            for (lin, n) in [
                (&mut m.gate_proj, "gate_proj"),
                (&mut m.up_proj, "up_proj"),
                (&mut m.down_proj, "down_proj"),
            ] {
                params.push(linear_var(lin, format!("{p}.mlp.{n}.weight"))?);
            }
        }
        let norm = Var::from_tensor(&self.norm.weight)?;
        self.norm.weight = norm.as_tensor().clone();
        params.push(("model.norm.weight".to_string(), norm));
        if self.config.tie_word_embeddings {
            self.lm_head.weight = LinearWeight::Dense(embed.as_tensor().clone());
        } else {
            params.push(linear_var(&mut self.lm_head, LM_HEAD.to_string())?);
        }
        Ok(params)
    }

    /// Every weight under its HF name, as a checkpoint holds them (no `lm_head.weight` when
    /// tied). The tensors share storage with the model: write them out before the next update.
    /// Quantized weights are refused; call [`Llama::dequantize`] first.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let embed = match &self.embed_tokens {
            Embedding::Dense(t) => t.detach(),
            Embedding::Quantized(_) | Embedding::Packed(_) => return Err(quantized(EMBED)),
        };
        out.push((EMBED.to_string(), embed));
        let dense = |lin: &Linear, name: String| -> Result<(String, Tensor)> {
            match &lin.weight {
                LinearWeight::Dense(t) => Ok((name, t.detach())),
                LinearWeight::Quantized(_) | LinearWeight::Packed(_) => Err(quantized(&name)),
            }
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            let m = &layer.mlp;
            out.push((
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.detach(),
            ));
            out.push(dense(&a.q_proj, format!("{p}.self_attn.q_proj.weight"))?);
            out.push(dense(&a.k_proj, format!("{p}.self_attn.k_proj.weight"))?);
            out.push(dense(&a.v_proj, format!("{p}.self_attn.v_proj.weight"))?);
            out.push(dense(&a.o_proj, format!("{p}.self_attn.o_proj.weight"))?);
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.detach(),
            ));
            out.push(dense(&m.gate_proj, format!("{p}.mlp.gate_proj.weight"))?);
            out.push(dense(&m.up_proj, format!("{p}.mlp.up_proj.weight"))?);
            out.push(dense(&m.down_proj, format!("{p}.mlp.down_proj.weight"))?);
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.detach()));
        if !self.config.tie_word_embeddings {
            out.push(dense(&self.lm_head, LM_HEAD.to_string())?);
        }
        Ok(out)
    }

    /// A copy sharing every weight's storage but tracking no gradients: inference on a model
    /// being trained (evaluation, saving checks) takes the fused kernels and builds no graph,
    /// exactly as the same weights loaded from disk would.
    pub fn detached(&self) -> Llama {
        let mut m = self.clone();
        if let Embedding::Dense(t) = &m.embed_tokens {
            m.embed_tokens = Embedding::Dense(t.detach());
        }
        for layer in m.layers.iter_mut() {
            layer.input_layernorm.weight = layer.input_layernorm.weight.detach();
            layer.post_attention_layernorm.weight = layer.post_attention_layernorm.weight.detach();
        }
        for (_, lin) in m.linears_mut() {
            if let LinearWeight::Dense(t) = &lin.weight {
                lin.weight = LinearWeight::Dense(t.detach());
            }
            for l in lin.lora.iter_mut() {
                l.a = l.a.detach();
                l.b = l.b.detach();
                if let Some(d) = l.dora.as_mut() {
                    d.magnitude = d.magnitude.detach();
                }
            }
        }
        m.norm.weight = m.norm.weight.detach();
        if let Some(v) = m.virtual_tokens.as_mut() {
            *v.tensor_mut() = v.tensor().detach();
        }
        m
    }

    /// Replaces every quantized weight by its dense f32 dequantization (fine-tuning a GGUF
    /// model in f32). The activation dtype becomes f32; a tied head follows the embedding.
    pub fn dequantize(&mut self) -> Result<()> {
        match &self.embed_tokens {
            Embedding::Quantized(q) => {
                self.embed_tokens = Embedding::Dense(q.dequantize(&self.device)?)
            }
            Embedding::Packed(p) => self.embed_tokens = Embedding::Dense(p.dequantize()?),
            Embedding::Dense(_) => {}
        }
        let device = self.device.clone();
        for (_, lin) in self.linears_mut() {
            if !lin.weight.is_quantized() {
                continue;
            }
            let w = lin.weight.dequantize()?.to_device(&device)?;
            lin.weight = LinearWeight::Dense(w);
        }
        if self.config.tie_word_embeddings {
            if let Embedding::Dense(t) = &self.embed_tokens {
                self.lm_head.weight = LinearWeight::Dense(t.clone());
            }
        }
        self.dtype = DType::F32;
        self.kv_dtype = DType::F32;
        Ok(())
    }
}

fn linear_var(lin: &mut Linear, name: String) -> Result<(String, Var)> {
    let v = match &lin.weight {
        LinearWeight::Dense(t) => Var::from_tensor(t)?,
        LinearWeight::Quantized(_) | LinearWeight::Packed(_) => return Err(quantized(&name)),
    };
    lin.weight = LinearWeight::Dense(v.as_tensor().clone());
    Ok((name, v))
}

fn quantized(name: &str) -> Error {
    Error::Unsupported(format!(
        "{name} is quantized; training needs dense weights (dequantize the model first)"
    ))
}
