//! Rotary position embedding tables, HF's half-rotation form (`rotate_half`: pairs `i`,
//! `i + Dh/2`), with `linear` and `llama3` frequency scaling or GGUF `rope_freqs.weight`
//! divisors. The rotation itself is `ops::rope`.

use candle_core::{Device, Tensor};

use crate::config::{LlamaConfig, RopeScaling};
use crate::Result;

#[derive(Clone, Debug)]
pub struct Rope {
    /// Dh/2 inverse frequencies, scaling applied.
    inv_freq: Vec<f32>,
    /// Positions are divided by this (HF `linear` scaling).
    pos_scale: f32,
    device: Device,
}

impl Rope {
    /// `freq_factors`: GGUF `rope_freqs.weight` (each frequency divided by its factor).
    pub fn new(cfg: &LlamaConfig, freq_factors: Option<&[f32]>, device: &Device) -> Self {
        let dh = cfg.head_dim;
        // HF `_compute_default_rope_parameters`: 1 / base^(2i/Dh), computed in f32.
        let mut inv_freq: Vec<f32> = (0..dh / 2)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / dh as f32))
            .collect();
        let mut pos_scale = 1.0;
        match (&cfg.rope_scaling, freq_factors) {
            (_, Some(f)) => {
                for (v, f) in inv_freq.iter_mut().zip(f) {
                    *v /= f;
                }
            }
            (Some(RopeScaling::Linear { factor }), None) => pos_scale = *factor as f32,
            (Some(RopeScaling::Llama3 { .. }), None) => {
                llama3_scale(&mut inv_freq, cfg.rope_scaling.as_ref())
            }
            (None, None) => {}
        }
        Self {
            inv_freq,
            pos_scale,
            device: device.clone(),
        }
    }

    /// cos and sin tables for positions `start..start+len`, each (T, Dh/2) f32.
    pub fn tables(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            let (c, s) = self.row(p);
            cos.extend(c);
            sin.extend(s);
        }
        Ok((
            Tensor::from_vec(cos, (len, half), &self.device)?,
            Tensor::from_vec(sin, (len, half), &self.device)?,
        ))
    }
}

impl Rope {
    /// cos and sin at one position, Dh/2 each.
    pub fn row(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        let p = pos as f32 / self.pos_scale;
        self.inv_freq
            .iter()
            .map(|f| {
                let a = p * f;
                (a.cos(), a.sin())
            })
            .unzip()
    }
}

/// HF `_compute_llama3_parameters` (Llama 3.1): low frequencies divided by `factor`, high ones
/// kept, the band between interpolated smoothly.
fn llama3_scale(inv_freq: &mut [f32], s: Option<&RopeScaling>) {
    let Some(RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    }) = s
    else {
        return;
    };
    let old = *original_max_position_embeddings as f32;
    let (factor, low, high) = (
        *factor as f32,
        *low_freq_factor as f32,
        *high_freq_factor as f32,
    );
    let low_freq_wavelen = old / low;
    let high_freq_wavelen = old / high;
    for f in inv_freq.iter_mut() {
        let wavelen = 2.0 * std::f32::consts::PI / *f;
        if wavelen > low_freq_wavelen {
            *f /= factor;
        } else if wavelen >= high_freq_wavelen {
            let smooth = (old / wavelen - low) / (high - low);
            *f = (1.0 - smooth) * *f / factor + smooth * *f;
        }
    }
}

/// Applies RoPE to (B, H, T, Dh) with cos/sin (T, Dh/2) (`ops::rope`).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    crate::ops::rope::rope(x, cos, sin)
}
