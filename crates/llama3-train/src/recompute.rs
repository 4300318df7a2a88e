//! Gradient checkpointing: the loss and its gradients with one layer's graph alive at a time.
//! A forward without graph keeps only each layer's input (B, T, D); the head's loss is taken
//! in chunks of rows; then, from the last layer down, each layer is run again with its graph
//! and `backward` of `sum(output * upstream_grad)` gives that layer's parameter gradients and
//! the gradient of its input (a vector-Jacobian product, exact). Memory: the layer inputs plus
//! one layer's activations, instead of every layer's; compute: one extra forward.

use candle_core::{DType, Tensor, Var};
use llama3::Llama;

use crate::loss::{head_chunks, shifted_targets};
use crate::{Error, Grads, Result};

/// Adds the gradients `store` holds for `params` (by tensor identity) into `grads`.
fn collect(
    store: &candle_core::backprop::GradStore,
    params: &[(String, Var)],
    grads: &mut Grads,
) -> Result<()> {
    for (i, (_, v)) in params.iter().enumerate() {
        if let Some(g) = store.get(v.as_tensor()) {
            grads.add(i, g)?;
        }
    }
    Ok(())
}

/// `sum` of the causal-LM loss on `ids`/`labels` divided by `divisor` (the step's counted
/// tokens), with its gradients for `params` added into `grads`; returns the loss value.
/// Same result as `causal_lm_loss_sum(..) / divisor` then `backward`, within float rounding.
pub fn loss_and_grads(
    model: &Llama,
    ids: &Tensor,
    labels: &Tensor,
    divisor: usize,
    params: &[(String, Var)],
    grads: &mut Grads,
) -> Result<f64> {
    let (b, t) = ids.dims2()?;
    let labels = labels
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let (rows, targets) = shifted_targets(&labels, b, t)?;
    let div = divisor.max(1) as f64;
    let (cos, sin, mask) = model.positions(0, t)?;

    // 1. Forward without graph, keeping each layer's input.
    let plain = model.detached();
    let mut inputs = Vec::with_capacity(model.layers.len());
    let mut x = plain.embed_tokens.forward(ids)?; // (B, T, D)
    for layer in &plain.layers {
        inputs.push(x.clone());
        x = layer.forward(&x, &cos, &sin, mask.as_ref(), None)?;
    }

    // 2. Final norm, head and loss, HEAD_ROWS counted rows at a time, each backwarded alone.
    let h = Var::from_tensor(&x)?;
    let normed = model.norm.forward(&h.as_tensor().reshape((b * t, ()))?)?; // (B*T, D)
    let mut upstream = h.as_tensor().zeros_like()?;
    let mut loss = 0f64;
    for part in head_chunks(model, &normed, &rows, &targets) {
        let part = (part? / div)?;
        loss += part.to_scalar::<f32>()? as f64;
        let store = part.backward()?;
        collect(&store, params, grads)?;
        if let Some(g) = store.get(h.as_tensor()) {
            upstream = (upstream + g)?;
        }
    }

    // 3. Layers from the last down: recompute with graph, backward the surrogate.
    for (layer, input) in model.layers.iter().zip(inputs).rev() {
        let xv = Var::from_tensor(&input)?;
        let y = layer.forward(xv.as_tensor(), &cos, &sin, mask.as_ref(), None)?;
        let store = (y * &upstream)?.sum_all()?.backward()?;
        collect(&store, params, grads)?;
        upstream = match store.get(xv.as_tensor()) {
            Some(g) => g.detach(),
            None => return Err(Error::Input("no gradient reached a layer input".into())),
        };
    }

    // 4. The embedding, when it is trained (full fine-tuning; a tied head's share was
    //    collected with the head).
    if params.iter().any(|(n, _)| n == "model.embed_tokens.weight") {
        let e = model.embed_tokens.forward(ids)?;
        let store = (e * &upstream)?.sum_all()?.backward()?;
        collect(&store, params, grads)?;
    }
    Ok(loss)
}
