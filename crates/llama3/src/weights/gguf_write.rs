//! Writing GGUF files: candle's `gguf_file::write` does the encoding (GGUF v2, 32-byte
//! alignment); this module adds what a tool needs around it: a stable key order, no stale
//! `general.alignment`, and an atomic replace of the destination.

use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;

use crate::{Error, Result};

/// GGUF `general.alignment`: candle's writer always pads tensor data to 32 bytes, so a copied
/// key with another value would make readers look for tensors in the wrong place.
const ALIGNMENT_KEY: &str = "general.alignment";

/// Orders metadata as llama.cpp's gguf-py writes it: `general.architecture` first, then the
/// other `general.*` keys, the architecture's keys, `tokenizer.*`, and anything else; sorted
/// by name within each group so that output is reproducible (GGUF readers do not care).
pub fn order_metadata(md: &mut [(String, Value)]) {
    fn group(k: &str) -> u8 {
        match k {
            "general.architecture" => 0,
            k if k.starts_with("general.") => 1,
            k if k.starts_with("tokenizer.") => 3,
            k if k.contains('.') => 2,
            _ => 4,
        }
    }
    md.sort_by(|a, b| group(&a.0).cmp(&group(&b.0)).then(a.0.cmp(&b.0)));
}

/// Writes a GGUF file to `path` through [`atomic`](super::atomic): `path` is never left
/// half-written (an error or a kill leaves the old file, if any). Returns the size of the file
/// written.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<u64> {
    let md: Vec<(&str, &Value)> = metadata
        .iter()
        .filter(|(k, _)| k != ALIGNMENT_KEY)
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    super::atomic::write_with(path, |file| {
        let mut w = BufWriter::new(file);
        gguf_file::write(&mut w, &md, &ts).map_err(|e| {
            Error::format(
                path,
                format!("writing GGUF: {}", crate::error::candle_message(&e)),
            )
        })?;
        w.flush().map_err(|e| Error::io(path, e))
    })?;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Tensor};

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let t = Tensor::arange(0f32, 64., &Device::Cpu)
            .unwrap()
            .reshape((2, 32))
            .unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let mut md = vec![
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            (ALIGNMENT_KEY.to_string(), Value::U32(64)),
            ("llama.block_count".to_string(), Value::U32(1)),
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
        ];
        order_metadata(&mut md);
        assert_eq!(md[0].0, "general.architecture");
        assert_eq!(md[3].0, "tokenizer.ggml.model");
        let n = write_gguf(&out, &md, &[("w".to_string(), q)]).unwrap();
        assert_eq!(n, std::fs::metadata(&out).unwrap().len());
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary file left behind");

        let mut f = std::fs::File::open(&out).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        assert!(!c.metadata.contains_key(ALIGNMENT_KEY));
        let back = c
            .tensor(&mut f, "w", &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let d: f32 = (back - t)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        // Q8_0 of 32..63: scale 63/127, so errors up to half of it.
        assert!(d <= 0.26, "{d}");
    }

    #[test]
    fn missing_directory_is_an_io_error_naming_it() {
        let err = write_gguf(Path::new("/nonexistent-dir/x.gguf"), &[], &[]).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
    }
}
