//! PEFT's `adapter_config.json` for LoRA: the fields read and written here, PEFT's scaling
//! rules, and what is refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The fields of PEFT's `LoraConfig` this crate reads and writes; others are kept when a
/// loaded config is saved again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names (PEFT also accepts one regex string; kept as given).
    #[serde(default)]
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "none")]
    pub bias: String,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub peft_type: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

fn none() -> String {
    "none".into()
}

impl LoraConfig {
    /// A config for `r`, `alpha` and the given target module names.
    pub fn new(r: usize, alpha: f64, targets: &[&str], use_rslora: bool) -> Self {
        let mut other = BTreeMap::new();
        other.insert("task_type".into(), "CAUSAL_LM".into());
        other.insert("inference_mode".into(), true.into());
        Self {
            r,
            lora_alpha: alpha,
            lora_dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            use_rslora,
            use_dora: false,
            fan_in_fan_out: false,
            bias: none(),
            modules_to_save: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            peft_type: Some("LORA".into()),
            other,
        }
    }

    /// PEFT's `scaling` of `module`: alpha / r, or alpha / sqrt(r) with rsLoRA; per-module
    /// rank and alpha from `rank_pattern` / `alpha_pattern` (keys matched as name suffixes).
    pub fn scaling(&self, module: &str) -> f64 {
        let pick = |keys: Vec<&String>| {
            keys.into_iter()
                .filter(|k| module == k.as_str() || module.ends_with(&format!(".{k}")))
                .max_by_key(|k| k.len())
                .cloned()
        };
        let r = pick(self.rank_pattern.keys().collect()).map_or(self.r, |k| self.rank_pattern[&k])
            as f64;
        let alpha = pick(self.alpha_pattern.keys().collect())
            .map_or(self.lora_alpha, |k| self.alpha_pattern[&k]);
        match self.use_rslora {
            true => alpha / r.sqrt(),
            false => alpha / r,
        }
    }

    /// Refuses what this crate would otherwise apply wrongly.
    pub(super) fn check(&self, file: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::Unsupported(format!("{}: {m}", file.display())));
        if let Some(t) = &self.peft_type {
            if t != "LORA" {
                return bad(format!("peft_type {t}: only LORA adapters are supported"));
            }
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out adapters (GPT-2 Conv1D layout) do not fit Llama".into());
        }
        if self.bias != "none" {
            return bad(format!("bias {:?}: only bias-free adapters", self.bias));
        }
        if self.r == 0 {
            return bad("r is 0".into());
        }
        Ok(())
    }

    /// `modules_to_save` as names (PEFT writes a list; null or absent is none).
    pub fn saved_modules(&self) -> Vec<String> {
        match &self.modules_to_save {
            Some(serde_json::Value::Array(v)) => v
                .iter()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect(),
            Some(serde_json::Value::String(m)) => vec![m.clone()],
            _ => Vec::new(),
        }
    }

    /// PEFT's `task_type` (`CAUSAL_LM`, `SEQ_CLS`, ...), when the config has one.
    pub fn task_type(&self) -> Option<&str> {
        self.other.get("task_type").and_then(|t| t.as_str())
    }
}
