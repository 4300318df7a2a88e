//! The one mapping of `llama3 train`'s settings onto `TrainConfig`: the TOML file (or the
//! defaults), then each flag given, then the defaults that need a look around (the cache).

use anyhow::{Context, Result};
use llama3_train::presets::PRESETS;
use llama3_train::TrainConfig;

use super::TrainArgs;

/// The config `a` describes; `say` hears each default taken that the user may not expect.
pub(super) fn to_config(a: &TrainArgs, say: &mut dyn FnMut(&str)) -> Result<TrainConfig> {
    let (mut c, in_file) = from_file(a)?;
    apply_flags(&mut c, a)?;
    let given = |flag: bool, key: &str| flag || in_file.contains_key(key);
    // `--num-gpus 0` says "no GPU": the CPU, unless --device says where (the config's own
    // default, `device = "auto"`, would take a GPU when there is one).
    let no_gpu = c.num_gpus == 0 && given(a.num_gpus.is_some(), "num_gpus");
    if no_gpu && !given(a.device.is_some(), "device") {
        c.device = "cpu".into();
    }
    // Checks first: no fetching of a tokenizer for a run that would fail anyway.
    c.validate()?;
    let preset = PRESETS.contains(&c.init.as_str());
    if preset && !given(a.init.is_some(), "init") {
        say(&format!(
            "no --init: training the preset {:?} from scratch (give --init a model directory \
             or GGUF to fine-tune it)",
            c.init
        ));
    }
    // A preset has no tokenizer of its own. The seed's `llama3 train --data_path=...
    // --model_path=...` names none, so one is needed by default: the default model's, the
    // one every other command already fetches, is a real Llama-style BPE (49152 tokens, with
    // a chat template) whose size keeps the tiny preset trainable on a CPU in minutes, and the
    // run directory then carries it, so `llama3 generate -m <run>` works. Fine-tuning the
    // default model instead was rejected as the default: a full step of 8 x 256 tokens on
    // its 135M parameters is ~1.7 TFLOP, ~17 s on two cores at the ~100 GFLOP/s of
    // docs/training.md, so hours per epoch of a million-token corpus; and an unattended
    // fine-tune of a chat model is rarely what a first `train` means; `--init <model>` is one
    // flag away.
    // (LoRA needs a model, which setup says; nothing to fetch for it.)
    if preset && c.tokenizer.is_none() && !c.method.is_adapter() {
        let path = llama3::hub::ensure_default_model(|m| say(m)).with_context(|| {
            format!(
                "training the preset {:?} from scratch needs a tokenizer: the default \
                 model's could not be fetched; give --tokenizer",
                c.init
            )
        })?;
        say(&format!(
            "no --tokenizer: using the default model's ({})",
            path.display()
        ));
        c.tokenizer = Some(path);
    }
    Ok(c)
}

/// The TOML file's config (the defaults without one) and the keys it sets.
fn from_file(a: &TrainArgs) -> Result<(TrainConfig, toml::Table)> {
    let Some(p) = &a.config else {
        return Ok((TrainConfig::default(), toml::Table::new()));
    };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read config {}", p.display()))?;
    let bad = || format!("bad config {}", p.display());
    let c = toml::from_str(&text).with_context(bad)?;
    let keys = toml::from_str(&text).with_context(bad)?;
    Ok((c, keys))
}

fn apply_flags(c: &mut TrainConfig, a: &TrainArgs) -> Result<()> {
    if !a.data_path.is_empty() {
        c.data_path = a.data_path.clone();
    }
    if !a.valid_data_path.is_empty() {
        c.valid_data_path = a.valid_data_path.clone();
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; } )* };
    }
    set!(
        model_path,
        init,
        seq_len,
        batch_size,
        grad_accum,
        num_epochs,
        learning_rate
    );
    set!(
        min_lr,
        warmup,
        lr_schedule,
        weight_decay,
        clip,
        eval_every,
        save_every,
        seed
    );
    set!(
        num_gpus,
        device,
        precision,
        lora_r,
        lora_alpha,
        lora_dropout,
        lora_targets,
        num_virtual_tokens,
        eval_batches,
        dist_timeout,
        kd_alpha,
        kd_temperature,
        beta,
        loss_type,
        label_smoothing,
        replay_ratio
    );
    if a.replay_data.is_some() {
        c.replay_data = a.replay_data.clone();
    }
    match a.method {
        Some(super::MethodArg::Train(m)) => c.method = m,
        Some(super::MethodArg::Dpo) => {
            c.method = llama3_train::Method::Full;
            c.dpo = true;
        }
        None => {}
    }
    if a.dpo {
        c.dpo = true;
    }
    if a.teacher.is_some() {
        c.teacher = a.teacher.clone();
    }
    if a.rslora {
        c.use_rslora = true;
    }
    if a.use_dora {
        c.use_dora = true;
    }
    if a.gradient_checkpointing {
        c.gradient_checkpointing = true;
    }
    if a.tokenizer.is_some() {
        c.tokenizer = a.tokenizer.clone();
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
    }
    if let Some(b) = &a.betas {
        match b[..] {
            [b1, b2] => c.betas = (b1, b2),
            _ => anyhow::bail!("--betas takes two numbers, B1,B2 (e.g. 0.9,0.95); got {b:?}"),
        }
    }
    Ok(())
}
