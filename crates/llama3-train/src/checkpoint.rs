//! Checkpoints: `<run>/checkpoints/step-NNNNNNNN/` holds the weights with HF names
//! (`model.safetensors` + `config.json`, so a checkpoint loads like any HF model), the AdamW
//! state (`optimizer.safetensors`) and `state.json` (step, data position, config).
//!
//! Crash safety: the directory is written under a temporary name, its files fsynced, then
//! renamed into place; only then does `checkpoints/latest` (itself replaced atomically) point
//! at it, and older checkpoints are removed. A kill at any moment leaves `latest` naming a
//! complete checkpoint.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use llama3::{Llama, LlamaConfig};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::optim::AdamW;
use crate::{Error, Result};
use llama3::weights::{atomic, hf_dir, safetensors};

/// Everything beyond weights and optimizer moments that a resume needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Micro-batches consumed: the data position (the order is a function of seed and epoch).
    pub micro_batches: usize,
    pub tokens_seen: u64,
    pub config: TrainConfig,
    pub model_config: LlamaConfig,
    /// Random state: training draws no random numbers (no dropout); the data order is
    /// re-derived from `config.seed`, so there is nothing else to save.
    pub rng: String,
}

const WEIGHTS: &str = "model.safetensors";
const ADAPTER_WEIGHTS: &str = llama3::peft::WEIGHTS_FILE;

pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Writes a checkpoint of `state.step` and points `latest` at it.
pub fn save(run: &Path, state: &TrainState, model: &Llama, opt: &AdamW) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    atomic::create_dir_all(&root)?;
    let name = format!("step-{:08}", state.step);
    let dir = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    atomic::create_dir_all(&tmp)?;
    if !state.config.method.is_adapter() {
        hf_dir::save_weights(model, &tmp.join(WEIGHTS))?;
        atomic::write_json(
            &tmp.join("config.json"),
            &hf_dir::config_json(&model.config),
        )?;
    } else {
        // LoRA / QLoRA: the adapters (the only parameters), as a PEFT adapter directory.
        let tensors: Vec<(String, Tensor)> = opt
            .params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        safetensors::save(&tensors, &tmp.join(ADAPTER_WEIGHTS))?;
        let cfg = state.config.adapter_config(model);
        atomic::write_json(&tmp.join(llama3::peft::CONFIG_FILE), &cfg)?;
    }
    safetensors::save(&opt.state_tensors()?, &tmp.join("optimizer.safetensors"))?;
    atomic::write_json(&tmp.join("state.json"), state)?;
    atomic::sync_dir(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    atomic::sync_dir(&root)?;
    atomic::write_bytes(&root.join("latest"), name.as_bytes())?;
    remove_others(&root, &name)?;
    Ok(dir)
}

/// Removes every checkpoint directory except `keep` (and unfinished temporaries).
fn remove_others(root: &Path, keep: &str) -> Result<()> {
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let path = entry.map_err(|e| Error::io(root, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours = name.starts_with("step-") || name.starts_with(".step-");
        if ours && name != keep && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// The checkpoint `latest` points at, None when the run has none.
pub fn latest(run: &Path) -> Result<Option<PathBuf>> {
    let root = checkpoints_dir(run);
    let pointer = root.join("latest");
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
    let dir = root.join(name.trim());
    if !dir.join("state.json").exists() {
        return Err(Error::format(
            &pointer,
            format!(
                "points at {}, which is not a complete checkpoint",
                dir.display()
            ),
        ));
    }
    Ok(Some(dir))
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))
}

/// Loads the checkpoint's weights into `params` and its moments into `opt`.
pub fn restore(dir: &Path, params: &[(String, Var)], opt: &mut AdamW) -> Result<TrainState> {
    let state = read_state(dir)?;
    let device = params
        .first()
        .map_or(Device::Cpu, |(_, v)| v.device().clone());
    let file = match state.config.method.is_adapter() {
        false => dir.join(WEIGHTS),
        true => dir.join(ADAPTER_WEIGHTS),
    };
    let weights = load_tensors(&file, &device)?;
    for (name, var) in params {
        let t = weights
            .get(name)
            .ok_or_else(|| Error::format(&file, format!("missing {name}")))?;
        if t.dims() != var.dims() {
            return Err(Error::format(
                &file,
                format!(
                    "{name} has shape {:?}, the model {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    let moments = load_tensors(&dir.join("optimizer.safetensors"), &device)?;
    opt.load_state(|k| moments.get(k).cloned())?;
    Ok(state)
}

fn load_tensors(path: &Path, device: &Device) -> Result<std::collections::HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .map_err(|e| Error::format(path, llama3::error::candle_message(&e)))
}
