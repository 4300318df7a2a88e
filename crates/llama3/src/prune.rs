//! Pruning: a smaller or sparser model from calibration statistics.
//!
//! - Depth (ShortGPT, Men et al. 2024): each layer's block influence, the mean over calibration
//!   tokens of `1 - cos(x_in, x_out)` of its residual stream; the layers that change it least
//!   are removed. The result is an ordinary Llama with fewer layers.
//! - MLP width (Minitron, Muralidharan et al. 2024, activation-based): each MLP channel's
//!   importance is the mean |silu(gate) * up| over the calibration tokens; every layer keeps
//!   the same number of its most important channels (rows of gate/up, columns of down), so the
//!   result is again an ordinary Llama, with a smaller `intermediate_size`.
//! - Attention width (Minitron's head importance, LLM-Pruner's grouped structures): each KV
//!   group (a KV head and the G query heads that read it) scores the calibration energy of its
//!   heads' outputs (the o_proj input); every layer keeps the same number of its strongest
//!   groups (rows of q/k/v, columns of o_proj), so the result is an ordinary Llama with fewer
//!   heads (`head_dim` unchanged, stated in the config).
//! - Unstructured, Wanda (Sun et al. 2024): weight `W[i, j]` scores `|W[i, j]| * ||X_j||`, the
//!   norm of input channel j over the calibration tokens; within each output row the lowest
//!   scores are zeroed (`sparsity` of the row), or 2 of every 4 consecutive inputs (2:4). The
//!   shapes stay; the zeros are stored densely (our kernels gain no speed from them).
//!
//! Statistics come from one pass over the calibration blocks, layer by layer, on the dense
//! (dequantized) model, as the papers do. Dim legend: `T` tokens of a block, `D` model dim,
//! `F` MLP dim, `H` heads x head dim.

use candle_core::{DType, Tensor, D};

use crate::model::{Linear, Llama};
use crate::weights::Weight;
use crate::{Error, Result};

/// What a pass over the calibration text measured, per layer.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Tokens seen.
    pub tokens: usize,
    /// Sum over tokens of `1 - cos(in, out)` of each layer.
    pub influence: Vec<f64>,
    /// Sum over tokens of |silu(gate) * up| per MLP channel, per layer (F each).
    pub channels: Vec<Vec<f64>>,
    /// Sums of squares per input channel of each layer's linears: the attention input (q/k/v,
    /// D), the o_proj input (H), the MLP input (gate/up, D), the down_proj input (F).
    pub inputs: Vec<[Vec<f64>; 4]>,
}

impl Stats {
    /// Mean block influence of each layer.
    pub fn block_influence(&self) -> Vec<f64> {
        let n = self.tokens.max(1) as f64;
        self.influence.iter().map(|s| s / n).collect()
    }
}

/// Adds `sum over rows of v²` per column of `x (rows, C)` into `acc`.
fn add_sq(acc: &mut Vec<f64>, x: &Tensor) -> Result<()> {
    let s = x.to_dtype(DType::F32)?.sqr()?.sum(0)?.to_vec1::<f32>()?;
    add(acc, &s);
    Ok(())
}

fn add(acc: &mut Vec<f64>, v: &[f32]) {
    if acc.is_empty() {
        acc.resize(v.len(), 0.0);
    }
    for (a, b) in acc.iter_mut().zip(v) {
        *a += *b as f64;
    }
}

/// One forward over each calibration block (a row of token ids), gathering [`Stats`];
/// `progress(blocks done, blocks)`.
pub fn calibrate(
    model: &Llama,
    blocks: &[Vec<u32>],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Stats> {
    let n_layers = model.layers.len();
    let mut st = Stats {
        influence: vec![0.0; n_layers],
        channels: vec![Vec::new(); n_layers],
        inputs: (0..n_layers).map(|_| Default::default()).collect(),
        tokens: 0,
    };
    for (b, block) in blocks.iter().enumerate() {
        let t = block.len();
        let ids = Tensor::from_slice(block, (1, t), model.device())?;
        let (cos, sin, mask) = model.positions(0, t)?;
        let mut x = model.embed_tokens.forward(&ids)?; // (1, T, D)
        for (l, layer) in model.layers.iter().enumerate() {
            let h1 = layer.input_layernorm.forward(&x)?;
            let y = layer.self_attn.attend(&h1, &cos, &sin, mask.as_ref())?; // (1, T, H)
            let a = layer.self_attn.o_proj.forward(&y)?;
            let (x1, h2) = layer.post_attention_layernorm.forward_add(&x, &a)?;
            let g = layer.mlp.gate_proj.forward(&h2)?;
            let u = layer.mlp.up_proj.forward(&h2)?;
            let inter = (g.silu()? * u)?; // (1, T, F)
            let out = (&x1 + layer.mlp.down_proj.forward(&inter)?)?;
            // Block influence: 1 - cos(in, out) per token.
            let (xi, xo) = (
                x.squeeze(0)?.to_dtype(DType::F32)?,
                out.squeeze(0)?.to_dtype(DType::F32)?,
            );
            let dot = (&xi * &xo)?.sum(D::Minus1)?;
            let norms = (xi.sqr()?.sum(D::Minus1)?.sqrt()? * xo.sqr()?.sum(D::Minus1)?.sqrt()?)?;
            let cosine = (dot / (norms + 1e-12)?)?.to_vec1::<f32>()?;
            st.influence[l] += cosine.iter().map(|c| 1.0 - *c as f64).sum::<f64>();
            let inter2 = inter.squeeze(0)?;
            add(
                &mut st.channels[l],
                &inter2
                    .to_dtype(DType::F32)?
                    .abs()?
                    .sum(0)?
                    .to_vec1::<f32>()?,
            );
            let ins = &mut st.inputs[l];
            add_sq(&mut ins[0], &h1.squeeze(0)?)?;
            add_sq(&mut ins[1], &y.squeeze(0)?)?;
            add_sq(&mut ins[2], &h2.squeeze(0)?)?;
            add_sq(&mut ins[3], &inter2)?;
            x = out;
        }
        st.tokens += t;
        progress(b + 1, blocks.len());
    }
    Ok(st)
}

/// Removes the `n` layers of lowest block influence; returns their indices, ascending.
pub fn drop_layers(model: &mut Llama, stats: &Stats, n: usize) -> Result<Vec<usize>> {
    let layers = model.layers.len();
    if n >= layers {
        return Err(Error::Input(format!(
            "--drop-layers {n}: the model has {layers} layers; at least one must stay"
        )));
    }
    let bi = stats.block_influence();
    let mut order: Vec<usize> = (0..layers).collect();
    order.sort_by(|&a, &b| bi[a].total_cmp(&bi[b]));
    let mut dropped: Vec<usize> = order[..n].to_vec();
    dropped.sort_unstable();
    let kept: Vec<_> = std::mem::take(&mut model.layers)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains(i))
        .map(|(_, l)| l)
        .collect();
    model.layers = kept;
    model.config.num_hidden_layers = model.layers.len();
    Ok(dropped)
}

/// Keeps `keep` of the MLP channels of every layer, the most important by [`Stats::channels`]
/// (rounded to a multiple of 32 so that block-quantized exports stay possible); returns the
/// new `intermediate_size`.
pub fn prune_mlp(model: &mut Llama, stats: &Stats, keep: f64) -> Result<usize> {
    if !(keep > 0.0 && keep <= 1.0) {
        return Err(Error::Input(format!("--ffn-keep {keep} must be in (0, 1]")));
    }
    let f = model.config.intermediate_size;
    let kept = (((f as f64 * keep) / 32.0).round() as usize * 32).clamp(32.min(f), f);
    let device = model.device().clone();
    for (l, layer) in model.layers.iter_mut().enumerate() {
        let imp = &stats.channels[l];
        if imp.len() != f {
            return Err(Error::Input(format!("layer {l}: no channel statistics")));
        }
        let mut order: Vec<usize> = (0..f).collect();
        order.sort_by(|&a, &b| imp[b].total_cmp(&imp[a]));
        let mut idx: Vec<u32> = order[..kept].iter().map(|&i| i as u32).collect();
        idx.sort_unstable();
        let idx = Tensor::from_vec(idx, kept, &device)?;
        let rows = |lin: &Linear| -> Result<Linear> {
            let w = lin.weight.dequantize()?.index_select(&idx, 0)?;
            Ok(Linear::new(Weight::Dense(w)))
        };
        layer.mlp.gate_proj = rows(&layer.mlp.gate_proj)?;
        layer.mlp.up_proj = rows(&layer.mlp.up_proj)?;
        let down = layer
            .mlp
            .down_proj
            .weight
            .dequantize()?
            .index_select(&idx, 1)?;
        layer.mlp.down_proj = Linear::new(Weight::Dense(down.contiguous()?));
        layer.mlp.gate_up = None;
    }
    model.config.intermediate_size = kept;
    Ok(kept)
}

/// Keeps `keep` of the KV groups of every layer (at least one), the strongest by their heads'
/// output energy ([`Stats::inputs`], the o_proj input); returns (KV heads, query heads) kept.
pub fn prune_heads(model: &mut Llama, stats: &Stats, keep: f64) -> Result<(usize, usize)> {
    if !(keep > 0.0 && keep <= 1.0) {
        return Err(Error::Input(format!(
            "--heads-keep {keep} must be in (0, 1]"
        )));
    }
    let c = &model.config;
    let (h, hkv, dh) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let g = h / hkv;
    let kept = ((hkv as f64 * keep).round() as usize).clamp(1, hkv);
    let device = model.device().clone();
    for (l, layer) in model.layers.iter_mut().enumerate() {
        let energy = &stats.inputs[l][1]; // (H*Dh,) sums of squares of the heads' outputs
        if energy.len() != h * dh {
            return Err(Error::Input(format!("layer {l}: no attention statistics")));
        }
        // Group j: query heads j*G..(j+1)*G, their outputs' channels j*G*Dh..(j+1)*G*Dh.
        let score = |j: usize| -> f64 { energy[j * g * dh..(j + 1) * g * dh].iter().sum() };
        let mut order: Vec<usize> = (0..hkv).collect();
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        let mut groups = order[..kept].to_vec();
        groups.sort_unstable();
        let span = |width: usize| -> Result<Tensor> {
            let idx: Vec<u32> = groups
                .iter()
                .flat_map(|&j| (j * width..(j + 1) * width).map(|i| i as u32))
                .collect();
            Ok(Tensor::from_vec(idx.clone(), idx.len(), &device)?)
        };
        let (q_rows, kv_rows) = (span(g * dh)?, span(dh)?);
        let a = &mut layer.self_attn;
        let pick = |lin: &Linear, idx: &Tensor, dim: usize| -> Result<Linear> {
            let w = lin
                .weight
                .dequantize()?
                .index_select(idx, dim)?
                .contiguous()?;
            Ok(Linear::new(Weight::Dense(w)))
        };
        a.q_proj = pick(&a.q_proj, &q_rows, 0)?;
        a.k_proj = pick(&a.k_proj, &kv_rows, 0)?;
        a.v_proj = pick(&a.v_proj, &kv_rows, 0)?;
        a.o_proj = pick(&a.o_proj, &q_rows, 1)?;
        a.qkv = None;
        a.n_head = kept * g;
        a.n_head_kv = kept;
    }
    model.config.num_attention_heads = kept * g;
    model.config.num_key_value_heads = kept;
    Ok((kept, kept * g))
}

/// How Wanda zeroes weights within a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sparsity {
    /// This fraction of each output row's weights, the lowest scores.
    Unstructured(f64),
    /// N of every M consecutive inputs of each row (2:4), the lowest scores.
    NofM(usize, usize),
}

/// Wanda on every linear of every layer; returns the fraction of those weights now zero.
pub fn wanda(model: &mut Llama, stats: &Stats, how: Sparsity) -> Result<f64> {
    if let Sparsity::Unstructured(s) = how {
        if !(0.0..1.0).contains(&s) {
            return Err(Error::Input(format!("--sparsity {s} must be in [0, 1)")));
        }
    }
    let (mut zeros, mut total) = (0usize, 0usize);
    for (l, layer) in model.layers.iter_mut().enumerate() {
        let ins = &stats.inputs[l];
        let attn = &mut layer.self_attn;
        let mlp = &mut layer.mlp;
        for (lin, norms) in [
            (&mut attn.q_proj, &ins[0]),
            (&mut attn.k_proj, &ins[0]),
            (&mut attn.v_proj, &ins[0]),
            (&mut attn.o_proj, &ins[1]),
            (&mut mlp.gate_proj, &ins[2]),
            (&mut mlp.up_proj, &ins[2]),
            (&mut mlp.down_proj, &ins[3]),
        ] {
            let w = lin.weight.dequantize()?.to_dtype(DType::F32)?;
            let (rows, cols) = w.dims2()?;
            if norms.len() != cols {
                return Err(Error::Input(format!("layer {l}: no input statistics")));
            }
            let norm: Vec<f32> = norms.iter().map(|s| s.sqrt() as f32).collect();
            let mut v = w.flatten_all()?.to_vec1::<f32>()?;
            for row in v.chunks_exact_mut(cols) {
                zeros += prune_row(row, &norm, how);
            }
            total += rows * cols;
            let t = Tensor::from_vec(v, (rows, cols), w.device())?;
            *lin = Linear::new(Weight::Dense(t));
        }
        attn.qkv = None;
        mlp.gate_up = None;
    }
    Ok(zeros as f64 / total.max(1) as f64)
}

/// Zeroes the lowest-scoring weights of one row (score `|w| * norm`); returns how many.
pub fn prune_row(row: &mut [f32], norm: &[f32], how: Sparsity) -> usize {
    let score = |j: usize| row[j].abs() * norm[j];
    let mut cut = Vec::new();
    match how {
        Sparsity::Unstructured(s) => {
            let k = (row.len() as f64 * s) as usize;
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| score(a).total_cmp(&score(b)).then(a.cmp(&b)));
            cut.extend_from_slice(&order[..k]);
        }
        Sparsity::NofM(n, m) => {
            for g in (0..row.len()).step_by(m) {
                let mut order: Vec<usize> = (g..(g + m).min(row.len())).collect();
                order.sort_by(|&a, &b| score(a).total_cmp(&score(b)).then(a.cmp(&b)));
                cut.extend(order.into_iter().take(n));
            }
        }
    }
    for &j in &cut {
        row[j] = 0.0;
    }
    cut.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wanda keeps, per row, the weights of largest |w| x ||x||, not of largest |w|.
    #[test]
    fn wanda_cuts_by_weight_times_input_norm() {
        let mut row = vec![1.0f32, -4.0, 2.0, 0.5];
        let norm = vec![10.0f32, 0.1, 1.0, 100.0];
        // scores: 10, 0.4, 2, 50 -> half cut: indices 1 and 2.
        assert_eq!(prune_row(&mut row, &norm, Sparsity::Unstructured(0.5)), 2);
        assert_eq!(row, [1.0, 0.0, 0.0, 0.5]);
        let mut row = vec![1.0f32, -4.0, 2.0, 0.5, 3.0, 3.0, 1.0, 1.0];
        let norm = vec![1.0f32; 8];
        assert_eq!(prune_row(&mut row, &norm, Sparsity::NofM(2, 4)), 4);
        assert_eq!(row, [0.0, -4.0, 2.0, 0.0, 3.0, 3.0, 0.0, 0.0]);
    }
}
