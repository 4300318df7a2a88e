//! LoRA adapters in Hugging Face PEFT's layout: a directory with `adapter_config.json` and
//! `adapter_model.safetensors`, tensors named `base_model.model.<module>.lora_A.weight` (r, in)
//! and `...lora_B.weight` (out, r). Applied inside the model's `Linear`s (PEFT's
//! `lora.Linear.forward`: `y = W x + scaling * B (A x)`), merged into the weights
//! (`W += scaling * B A`), or saved back in the same layout. Sequence-classification adapters
//! (`task_type` `SEQ_CLS`) also carry the head PEFT trained whole (`modules_to_save`:
//! `base_model.model.score.weight`); they load onto a classifier (`classify.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use crate::model::linear::dropout;
use crate::model::{Dora, Linear, LinearWeight, Llama, Lora};
use crate::rng::splitmix;
use crate::{Error, Result};

mod config;
mod prompt;
pub use config::LoraConfig;
pub use prompt::{
    add_virtual, save_virtual, trainable_virtual, PromptAdapter, PromptConfig, PromptKind,
};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The modules LoRA can target here: every projection and the head.
pub const TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
];
const PREFIX: &str = "base_model.model.";
/// PEFT's key suffix of a DoRA magnitude vector (after the module name).
const MAGNITUDE: &str = ".lora_magnitude_vector";

/// An adapter read from disk: its config and its A/B matrices by module name.
pub struct Adapter {
    pub config: LoraConfig,
    /// module (`model.layers.0.self_attn.q_proj`) -> (A (r, in), B (out, r)).
    pub weights: BTreeMap<String, (Tensor, Tensor)>,
    /// DoRA's `lora_magnitude_vector` (out,) by module, when `use_dora`.
    pub magnitudes: BTreeMap<String, Tensor>,
    /// Modules PEFT saved whole (`modules_to_save`), by tensor name: a sequence-classification
    /// adapter's head, `score.weight` (L, D).
    pub saved: BTreeMap<String, Tensor>,
    pub path: PathBuf,
}

impl Adapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        if let Some(t) = serde_json::from_str::<PromptConfig>(&text)
            .ok()
            .filter(|c| c.kind().is_some())
        {
            return Err(Error::Unsupported(format!(
                "{}: peft_type {}: virtual tokens, not weights: apply the adapter with --lora \
                 (it cannot be merged into the weights, nor put on a classifier)",
                cfg_path.display(),
                t.peft_type
            )));
        }
        let config: LoraConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(&cfg_path, format!("not a PEFT LoRA config: {e}")))?;
        config.check(&cfg_path)?;
        let file = dir.join(WEIGHTS_FILE);
        if !file.exists() {
            return Err(Error::io(&file, std::io::ErrorKind::NotFound.into()));
        }
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| Error::format(&file, crate::error::candle_message(&e)))?;
        let mut parts: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
        let mut saved = BTreeMap::new();
        let mut magnitudes = BTreeMap::new();
        let to_save = config.saved_modules();
        for (key, t) in tensors {
            let name = key.strip_prefix(PREFIX).unwrap_or(&key);
            let (module, which) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else if let Some(m) = name.strip_suffix(MAGNITUDE).filter(|_| config.use_dora) {
                magnitudes.insert(m.to_string(), t.to_dtype(DType::F32)?);
                continue;
            } else if name
                .strip_suffix(".weight")
                .is_some_and(|m| to_save.iter().any(|s| s == m))
            {
                // A module PEFT saved whole (`modules_to_save`, keys without the wrapper's
                // `modules_to_save.<adapter>` part), e.g. a classifier's `score`.
                saved.insert(name.to_string(), t.to_dtype(DType::F32)?);
                continue;
            } else {
                return Err(Error::Unsupported(format!(
                    "{}: tensor {key} is not a LoRA A/B matrix nor a weight of \
                     modules_to_save {to_save:?} (embedding adapters are not supported)",
                    file.display()
                )));
            };
            let leaf = module.rsplit('.').next().unwrap_or(module);
            if !TARGETS.contains(&leaf) {
                return Err(Error::Unsupported(format!(
                    "{}: LoRA on {module}: only {} can be adapted",
                    file.display(),
                    TARGETS.join(", ")
                )));
            }
            let slot = parts.entry(module.to_string()).or_default();
            let t = t.to_dtype(DType::F32)?;
            if which == 0 {
                slot.0 = Some(t);
            } else {
                slot.1 = Some(t);
            }
        }
        let mut weights = BTreeMap::new();
        for (module, (a, b)) in parts {
            match (a, b) {
                (Some(a), Some(b)) => {
                    weights.insert(module, (a, b));
                }
                _ => {
                    return Err(Error::format(
                        &file,
                        format!("{module} has only one of lora_A / lora_B"),
                    ))
                }
            }
        }
        if weights.is_empty() {
            return Err(Error::format(&file, "no LoRA tensors"));
        }
        if config.use_dora {
            if let Some(m) = weights.keys().find(|m| !magnitudes.contains_key(*m)) {
                return Err(Error::format(
                    &file,
                    format!("use_dora is set but {m} has no lora_magnitude_vector"),
                ));
            }
        }
        Ok(Self {
            config,
            weights,
            magnitudes,
            saved,
            path: dir.to_path_buf(),
        })
    }

    /// Adds this adapter to `model`'s `Linear`s with `weight` times its scaling (1.0 as
    /// trained). Shapes are checked against each module; returns how many were adapted. An
    /// adapter that also carries whole modules (a `SEQ_CLS` adapter's head) is refused here:
    /// it belongs to a classifier ([`crate::classify::Classifier::with_adapter`]).
    pub fn apply(&self, model: &mut Llama, weight: f64) -> Result<usize> {
        if !self.saved.is_empty() {
            return Err(Error::Unsupported(format!(
                "{}: the adapter also carries fully trained modules ({}; task_type {}): use it \
                 with a classifier (`llama3 classify ... --adapter`), not a language model",
                self.path.display(),
                self.saved.keys().cloned().collect::<Vec<_>>().join(", "),
                self.config.task_type().unwrap_or("unknown")
            )));
        }
        self.apply_lora(model, weight)
    }

    /// The LoRA part of [`Self::apply`], whatever else the adapter carries.
    pub(crate) fn apply_lora(&self, model: &mut Llama, weight: f64) -> Result<usize> {
        let device = model.device().clone();
        let mut linears: HashMap<String, &mut Linear> = model.linears_mut().into_iter().collect();
        // Check every module first, so a mismatch leaves the model untouched.
        for (module, (a, b)) in &self.weights {
            let lin = linears.get(module).ok_or_else(|| {
                Error::Input(format!(
                    "{}: adapter module {module} does not exist in this model",
                    self.path.display()
                ))
            })?;
            let (r, inp) = a.dims2()?;
            let (out, rb) = b.dims2()?;
            let m_ok = self
                .magnitudes
                .get(module)
                .is_none_or(|m| m.dims() == [out]);
            if inp != lin.in_features() || out != lin.out_features() || rb != r || !m_ok {
                return Err(Error::Shape {
                    name: format!("{module} lora_A {:?} / lora_B {:?}", a.dims(), b.dims()),
                    file: self.path.join(WEIGHTS_FILE),
                    got: vec![out, rb, r, inp],
                    expected: vec![lin.out_features(), r, r, lin.in_features()],
                });
            }
        }
        for (module, (a, b)) in &self.weights {
            if let Some(lin) = linears.get_mut(module) {
                let mut l = Lora {
                    a: a.to_device(&device)?,
                    b: b.to_device(&device)?,
                    scale: self.config.scaling(module) * weight,
                    dropout: self.config.lora_dropout,
                    dropout_seed: None,
                    id: module_id(module),
                    dora: None,
                };
                if let Some(m) = self.magnitudes.get(module) {
                    // Fixed from here on: the row scale is computed once.
                    let mut dora = Dora {
                        magnitude: m.to_device(&device)?,
                        row_scale: None,
                    };
                    dora.row_scale = Some(lin.dora_row_scale(&l, &dora)?);
                    l.dora = Some(dora);
                }
                lin.lora.push(l);
            }
        }
        Ok(self.weights.len())
    }
}

/// Turns LoRA dropout on for every adapter of `model` with the masks of micro-batch `index`
/// of a run seeded `seed`, or off (`None`: evaluation, inference; the default). A training
/// loop sets it before each micro-batch, so the masks are a function of where the run is (a
/// resumed run draws the same ones; under gradient checkpointing the detached forward and
/// its recompute see the same), and turns it off before evaluating.
pub fn set_dropout_seed(model: &mut Llama, seed_and_index: Option<(u64, u64)>) {
    let key = seed_and_index.map(|(seed, index)| splitmix(seed ^ splitmix(index)));
    for (_, lin) in model.linears_mut() {
        for l in lin.lora.iter_mut() {
            l.dropout_seed = key;
        }
    }
}

/// A module's key in the dropout streams: FNV-1a of its name.
fn module_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Adds a fresh adapter to every `targets` module (leaf names such as `q_proj`), initialized
/// as PEFT does: `A ~ U(-1/sqrt(in), 1/sqrt(in))` (kaiming_uniform with a = sqrt(5)), `B = 0`,
/// so training starts from the base model. Returns how many modules got one.
pub fn add_adapters(
    model: &mut Llama,
    config: &LoraConfig,
    targets: &[&str],
    seed: u64,
) -> Result<usize> {
    use rand::{Rng, SeedableRng};
    if let Some(bad) = targets.iter().find(|t| !TARGETS.contains(t)) {
        return Err(Error::Input(format!(
            "LoRA target {bad:?}: expected some of {}",
            TARGETS.join(", ")
        )));
    }
    if config.r == 0 {
        return Err(Error::Input("LoRA rank r must be at least 1".into()));
    }
    if !(0.0..1.0).contains(&config.lora_dropout) {
        return Err(Error::Input(format!(
            "LoRA dropout {} is not in [0, 1)",
            config.lora_dropout
        )));
    }
    let device = model.device().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    for (name, lin) in model.linears_mut() {
        let leaf = name.rsplit('.').next().unwrap_or(&name);
        if !targets.contains(&leaf) {
            continue;
        }
        let (inp, out) = (lin.in_features(), lin.out_features());
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f32> = (0..config.r * inp)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let mut l = Lora {
            a: Tensor::from_vec(a, (config.r, inp), &device)?,
            b: Tensor::zeros((out, config.r), DType::F32, &device)?,
            scale: config.scaling(&name),
            dropout: config.lora_dropout,
            dropout_seed: None,
            id: module_id(&name),
            dora: None,
        };
        if config.use_dora {
            // PEFT's `dora_init`: m = ||W + scale B A|| = ||W|| row by row (B is zero).
            l.dora = Some(Dora {
                magnitude: lin.adapted_row_norms(&l)?,
                row_scale: None,
            });
        }
        lin.lora.push(l);
        n += 1;
    }
    Ok(n)
}

/// The adapters' matrices as trainable `Var`s under PEFT's names
/// (`base_model.model.<module>.lora_A.weight`); the base weights stay frozen. With a quantized
/// base (QLoRA) gradients reach these through the quantized matmuls (`quant::grad`).
pub fn trainable(model: &mut Llama) -> Result<Vec<(String, candle_core::Var)>> {
    let mut out = Vec::new();
    for (name, lin) in model.linears_mut() {
        if let Some(l) = lin.lora.first_mut() {
            let a = candle_core::Var::from_tensor(&l.a)?;
            let b = candle_core::Var::from_tensor(&l.b)?;
            l.a = a.as_tensor().clone();
            l.b = b.as_tensor().clone();
            out.push((format!("{PREFIX}{name}.lora_A.weight"), a));
            out.push((format!("{PREFIX}{name}.lora_B.weight"), b));
            if let Some(dora) = l.dora.as_mut() {
                let m = candle_core::Var::from_tensor(&dora.magnitude)?;
                dora.magnitude = m.as_tensor().clone();
                dora.row_scale = None; // m, A and B change from step to step
                out.push((format!("{PREFIX}{name}{MAGNITUDE}"), m));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Input(
            "the model has no LoRA adapter to train".into(),
        ));
    }
    Ok(out)
}

/// Applies the PEFT adapter of `spec` (`PATH[:SCALE]`, the `--lora` flag) to `model`, whatever
/// its `peft_type`: LoRA / DoRA inside the linears, prompt or prefix tuning as virtual tokens
/// (without a scale). Returns what was applied, for the log.
pub fn apply_spec(model: &mut Llama, spec: &str) -> Result<String> {
    let (dir, scale) = parse_spec(spec)?;
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let prompt = serde_json::from_str::<PromptConfig>(&text)
        .ok()
        .filter(|c| c.kind().is_some());
    if let Some(config) = prompt {
        if scale != 1.0 {
            return Err(Error::Input(format!(
                "--lora {spec}: a scale applies to LoRA adapters; {} is {}",
                dir.display(),
                config.peft_type
            )));
        }
        let n = config.num_virtual_tokens;
        let kind = config.peft_type.clone();
        PromptAdapter::load(&dir, config, model.device())?.apply(model)?;
        return Ok(format!("{kind} {} ({n} virtual tokens)", dir.display()));
    }
    let adapter = Adapter::load(&dir, model.device())?;
    let n = adapter.apply(model, scale)?;
    let kind = match adapter.config.use_dora {
        true => "DoRA",
        false => "LoRA",
    };
    Ok(format!(
        "{kind} {} (x{scale}) on {n} modules",
        dir.display()
    ))
}

/// Parses `PATH[:SCALE]` (the `--lora` flag): a trailing `:number` is the adapter's weight.
pub fn parse_spec(spec: &str) -> Result<(PathBuf, f64)> {
    if let Some((path, scale)) = spec.rsplit_once(':') {
        if let Ok(s) = scale.parse::<f64>() {
            if !s.is_finite() {
                return Err(Error::Input(format!(
                    "--lora {spec}: the scale must be finite"
                )));
            }
            return Ok((PathBuf::from(path), s));
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// Folds every adapter into its weight (`W += scale * B A`, in f32, then back to the weight's
/// dtype) and removes the adapters. A model with quantized weights is dequantized to f32 first
/// (`Llama::dequantize`).
pub fn merge(model: &mut Llama) -> Result<()> {
    // Checked first, so a refused merge leaves the model as it was.
    let tied = model.config.tie_word_embeddings;
    if tied && !model.lm_head.lora.is_empty() {
        return Err(Error::Unsupported(
            "merging a LoRA on a tied lm_head would change the embedding too".into(),
        ));
    }
    let quantized = model
        .linears_mut()
        .iter()
        .any(|(_, l)| !l.lora.is_empty() && l.weight.is_quantized());
    if quantized {
        model.dequantize()?;
    }
    for (name, lin) in model.linears_mut() {
        if lin.lora.is_empty() {
            continue;
        }
        let LinearWeight::Dense(t) = &lin.weight else {
            return Err(Error::Unsupported(format!(
                "{name}: weight still quantized"
            )));
        };
        let (mut w, dtype) = (t.to_dtype(DType::F32)?, t.dtype());
        let base = w.clone();
        for l in lin.lora.drain(..) {
            // (out, r) x (r, in) -> (out, in)
            let delta =
                l.b.to_dtype(DType::F32)?
                    .matmul(&l.a.to_dtype(DType::F32)?)?;
            let delta = (delta * l.scale)?;
            let Some(dora) = &l.dora else {
                w = (w + delta)?;
                continue;
            };
            // PEFT's DoRA merge: the rows of W + delta rescaled by m / ||base + delta||, the
            // norm of the unmerged weight, as the forward computes it.
            let norm = (&base + &delta)?.sqr()?.sum_keepdim(1)?.sqrt()?; // (out, 1)
            let m = dora.magnitude.to_dtype(DType::F32)?.unsqueeze(1)?;
            w = (w + delta)?.broadcast_mul(&m.div(&norm)?)?;
        }
        lin.weight = LinearWeight::Dense(w.to_dtype(dtype)?);
    }
    // The merged weights replaced views of the stacks (on a GPU): stack them again.
    for layer in model.layers.iter_mut() {
        layer.unstack_projections();
    }
    model.stack_projections()?;
    Ok(())
}

/// Writes the model's first adapter on every module as a PEFT adapter directory: `config`
/// as `adapter_config.json` and the A/B matrices under PEFT's key names. `scale` of each
/// module must be `config.scaling(module)` (what loading gives back).
pub fn save(model: &mut Llama, config: &LoraConfig, dir: &Path) -> Result<()> {
    save_with(model, config, &[], dir)
}

/// [`save`] plus whole modules (`modules_to_save`, e.g. a classifier's `("score.weight",
/// tensor)`), written as PEFT writes them: `base_model.model.<name>`.
pub fn save_with(
    model: &mut Llama,
    config: &LoraConfig,
    saved: &[(String, Tensor)],
    dir: &Path,
) -> Result<()> {
    crate::weights::atomic::create_dir_all(dir)?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, lin) in model.linears_mut() {
        if let Some(l) = lin.lora.first() {
            let a = l.a.detach().to_dtype(DType::F32)?.contiguous()?;
            let b = l.b.detach().to_dtype(DType::F32)?.contiguous()?;
            tensors.push((format!("{PREFIX}{name}.lora_A.weight"), a));
            tensors.push((format!("{PREFIX}{name}.lora_B.weight"), b));
            if let Some(dora) = &l.dora {
                let m = dora.magnitude.detach().to_dtype(DType::F32)?.contiguous()?;
                tensors.push((format!("{PREFIX}{name}{MAGNITUDE}"), m));
            }
        }
    }
    if tensors.is_empty() {
        return Err(Error::Input("the model has no LoRA adapter to save".into()));
    }
    for (name, t) in saved {
        let t = t.detach().to_dtype(DType::F32)?.contiguous()?;
        tensors.push((format!("{PREFIX}{name}"), t));
    }
    crate::weights::safetensors::save(&tensors, &dir.join(WEIGHTS_FILE))?;
    crate::weights::atomic::write_json(&dir.join(CONFIG_FILE), config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Weight;

    #[test]
    fn dropout_masks_are_seeded_per_module_and_scaled() {
        let x = Tensor::ones((64, 1000), DType::F32, &Device::Cpu).unwrap();
        let vals = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let a = vals(&dropout(&x, 0.1, 7, module_id("q")).unwrap());
        let kept = a.iter().filter(|&&v| v > 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.9).abs() < 0.01, "kept {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // The same seed and module: the same mask; another module or seed: another.
        assert_eq!(a, vals(&dropout(&x, 0.1, 7, module_id("q")).unwrap()));
        assert_ne!(a, vals(&dropout(&x, 0.1, 7, module_id("k")).unwrap()));
        assert_ne!(a, vals(&dropout(&x, 0.1, 8, module_id("q")).unwrap()));
    }

    /// Dropout applies while a training loop has it on, with or without a graph (the
    /// recomputation's first forward has none), and never otherwise.
    #[test]
    fn dropout_only_while_switched_on() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (6, 32), &dev).unwrap();
        let mut lin = Linear::new(Weight::Dense(w));
        lin.lora.push(Lora {
            a: Tensor::randn(0f32, 1.0, (4, 32), &dev).unwrap(),
            b: Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap(),
            scale: 2.0,
            dropout: 0.5,
            dropout_seed: None,
            id: module_id("m"),
            dora: None,
        });
        let x = Tensor::randn(0f32, 1.0, (3, 32), &dev).unwrap();
        let off = lin.forward(&x).unwrap();
        let mut plain = lin.clone();
        plain.lora[0].dropout = 0.0;
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar().unwrap()
        };
        assert_eq!(diff(&off, &plain.forward(&x).unwrap()), 0.0);
        lin.lora[0].dropout_seed = Some(11);
        let detached = lin.forward(&x).unwrap();
        let a = candle_core::Var::from_tensor(&lin.lora[0].a).unwrap();
        lin.lora[0].a = a.as_tensor().clone();
        let trained = lin.forward(&x).unwrap();
        assert!(diff(&trained, &off) > 1e-3, "no dropout while training");
        assert_eq!(
            diff(&trained, &detached),
            0.0,
            "masks differ with and without a graph"
        );
        let g = trained.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&a).is_some());
        lin.lora[0].dropout_seed = None;
        assert_eq!(diff(&lin.forward(&x).unwrap(), &off), 0.0);
    }
}
