//! HF model directories: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`; f32/f16/bf16 tensors, memory-mapped. [`save`] writes one.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::Dtype;

use super::{Weight, WeightSource};
use crate::{Error, Result};

/// Named tensors to a safetensors file with `format: pt` metadata (what transformers expects),
/// atomically.
pub fn save(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let data = tensors.iter().map(|(n, t)| (n.as_str(), t));
    super::atomic::write_path_with(path, |tmp| {
        safetensors::serialize_to_file(data, Some(meta), tmp)
            .map_err(|e| Error::format(path, format!("cannot write safetensors: {e}")))
    })
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8-byte length + JSON header).
    data_start: usize,
    meta: Metadata,
}

/// All safetensors files of one HF directory, memory-mapped; tensors are copied out on `get`
/// in the requested dtype.
pub struct SafetensorsSource {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
    dtype: DType,
    device: Device,
}

impl SafetensorsSource {
    /// Opens `dir/model.safetensors` or the shards named by `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            shard_files(&index_path)?
        } else {
            return Err(Error::format(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        };
        Self::open_files(dir, &files, dtype, device)
    }

    pub fn open_files(
        dir: &Path,
        files: &[PathBuf],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the file is opened read-only; a model file changed under a running process
            // is outside what any loader (HF's included) can defend against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
                    Error::format(
                        path,
                        format!("not a valid safetensors file (truncated or corrupt?): {e}"),
                    )
                })?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard {
                path: path.clone(),
                mmap,
                data_start: 8 + header_len,
                meta,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
            dtype,
            device: device.clone(),
        })
    }

    /// Names of all tensors in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Count of tensors per stored dtype, for `llama3 info`.
    pub fn type_counts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for shard in &self.shards {
            for info in shard.meta.tensors().values() {
                let t = format!("{:?}", info.dtype);
                match counts.iter_mut().find(|(k, _)| *k == t) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((t, 1)),
                }
            }
        }
        counts
    }

    /// Shape and stored dtype (`F32`, `BF16`, `I8`...) of tensor `name`, without reading it.
    pub fn shape_and_dtype(&self, name: &str) -> Option<(Vec<usize>, String)> {
        let shard = self.shard(name).ok()?;
        let info = shard.meta.info(name)?;
        Some((info.shape.clone(), format!("{:?}", info.dtype)))
    }

    /// Loads a tensor with whatever shape it has (used for optional extras such as heads).
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let shard = self.shard(name)?;
        let info = shard.meta.info(name).ok_or_else(|| self.missing(name))?;
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(Error::Unsupported(format!(
                    "tensor {name} in {} has dtype {other:?} (f32/f16/bf16 only)",
                    shard.path.display()
                )))
            }
        };
        let (start, end) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + start..shard.data_start + end];
        let t = Tensor::from_raw_buffer(bytes, dtype, &info.shape, &self.device)?;
        Ok(t.to_dtype(self.dtype)?)
    }

    fn shard(&self, name: &str) -> Result<&Shard> {
        self.index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| self.missing(name))
    }

    fn missing(&self, name: &str) -> Error {
        let file = match self.shards.as_slice() {
            [one] => one.path.clone(),
            _ => self.dir.clone(),
        };
        Error::MissingTensor {
            name: name.to_string(),
            file,
        }
    }
}

impl WeightSource for SafetensorsSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        let shard = self.shard(name)?;
        let info = shard.meta.info(name).ok_or_else(|| self.missing(name))?;
        if info.shape != shape {
            return Err(Error::Shape {
                name: name.to_string(),
                file: shard.path.clone(),
                got: info.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(Weight::Dense(self.get_any(name)?))
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

/// The distinct shard files named by `model.safetensors.index.json`'s `weight_map`.
fn shard_files(index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(index_path, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index_path, "no \"weight_map\" object"))?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for v in map.values() {
        let f = v
            .as_str()
            .ok_or_else(|| Error::format(index_path, "weight_map values must be file names"))?;
        let p = dir.join(f);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}
