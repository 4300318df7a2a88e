//! A scan of a GGUF header that lets files with IQ4 tensors through candle's reader.
//!
//! candle's `Content::read` refuses any tensor type it has no `GgmlDType` for. IQ4_NL and
//! IQ4_XS have our kernels (`quant::iq4`), so their entries are taken out of the header
//! before candle reads it (everything else verbatim) and returned apart; any other unknown
//! type is a clear error naming it. Files without such tensors go to candle unchanged.

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::quant::Iq4;

/// An IQ4 tensor's entry: type, dims (outermost first, as candle's), offset in the data.
#[derive(Clone, Debug)]
pub struct IqTensor {
    pub iq: Iq4,
    pub dims: Vec<usize>,
    pub offset: u64,
}

/// What went wrong: an unknown tensor type (ggml id), or a malformed header (candle says
/// what).
pub enum HeaderError {
    UnknownType(u32),
    Candle(candle_core::Error),
    Malformed(String),
}

/// The header as candle reads it with IQ4 entries taken out, and those entries.
pub fn read(bytes: &[u8]) -> Result<(Content, HashMap<String, IqTensor>), HeaderError> {
    let scan = match Scan::new(bytes).tensors() {
        Ok(s) => s,
        // Let candle describe a header it cannot read either.
        Err(_) => {
            return Err(match Content::read(&mut Cursor::new(bytes)) {
                Err(e) => HeaderError::Candle(e),
                Ok(_) => HeaderError::Malformed("unreadable tensor table".into()),
            })
        }
    };
    let mut iq = HashMap::new();
    let mut header = Vec::new();
    for t in &scan.entries {
        if let Some(kind) = Iq4::from_ggml_id(t.dtype) {
            iq.insert(
                t.name.clone(),
                IqTensor {
                    iq: kind,
                    dims: t.dims.iter().rev().copied().collect(),
                    offset: t.offset,
                },
            );
        } else if !candle_knows(t.dtype) {
            return Err(HeaderError::UnknownType(t.dtype));
        }
    }
    if iq.is_empty() {
        let content = Content::read(&mut Cursor::new(bytes)).map_err(HeaderError::Candle)?;
        return Ok((content, iq));
    }
    // The header without the IQ4 entries: magic, version, counts, metadata, other tensors.
    let wide = scan.version >= 2;
    header.extend_from_slice(&bytes[..8]);
    let kept = (scan.entries.len() - iq.len()) as u64;
    match wide {
        true => header.extend_from_slice(&kept.to_le_bytes()),
        false => header.extend_from_slice(&(kept as u32).to_le_bytes()),
    }
    header.extend_from_slice(&bytes[scan.kv_count_at..scan.kv_end]);
    for t in scan
        .entries
        .iter()
        .filter(|t| Iq4::from_ggml_id(t.dtype).is_none())
    {
        header.extend_from_slice(&bytes[t.span.0..t.span.1]);
    }
    let mut content = Content::read(&mut Cursor::new(&header)).map_err(HeaderError::Candle)?;
    // The data starts after the original table, aligned as candle aligns it.
    let alignment = match content.metadata.get("general.alignment") {
        Some(Value::U32(v)) if *v > 0 => *v as u64,
        Some(Value::U64(v)) if *v > 0 => *v,
        _ => 32,
    };
    content.tensor_data_offset = (scan.end as u64).div_ceil(alignment) * alignment;
    Ok((content, iq))
}

/// ggml type ids candle 0.11 reads (`GgmlDType::from_u32`).
fn candle_knows(id: u32) -> bool {
    matches!(
        id,
        0 | 1 | 2 | 3 | 6 | 7 | 8 | 9 | 10 | 11 | 12 | 13 | 14 | 15 | 30
    )
}

struct Entry {
    name: String,
    dims: Vec<usize>,
    dtype: u32,
    offset: u64,
    /// Byte range of the entry in the header.
    span: (usize, usize),
}

struct Scan<'a> {
    b: &'a [u8],
    at: usize,
    version: u32,
    kv_count_at: usize,
    kv_end: usize,
    entries: Vec<Entry>,
    end: usize,
}

impl<'a> Scan<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scan {
            b,
            at: 0,
            version: 0,
            kv_count_at: 0,
            kv_end: 0,
            entries: Vec::new(),
            end: 0,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| "truncated header".to_string())?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(std::array::from_fn(|i| s[i])))
    }

    /// A length or count: u32 in GGUF v1, u64 after.
    fn len(&mut self) -> Result<usize, String> {
        let n = match self.version {
            1 => self.u32()? as u64,
            _ => self.u64()?,
        };
        usize::try_from(n).map_err(|_| format!("length {n} out of range"))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }

    fn skip_value(&mut self, ty: u32, depth: usize) -> Result<(), String> {
        match ty {
            0 | 1 | 7 => self.take(1).map(drop),
            2 | 3 => self.take(2).map(drop),
            4..=6 => self.take(4).map(drop),
            10..=12 => self.take(8).map(drop),
            8 => self.string().map(drop),
            9 if depth < 4 => {
                let elem = self.u32()?;
                let n = self.len()?;
                for _ in 0..n {
                    self.skip_value(elem, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(format!("metadata value type {ty}")),
        }
    }

    fn tensors(mut self) -> Result<Self, String> {
        if self.take(4)? != b"GGUF" {
            return Err("not GGUF".into());
        }
        self.version = self.u32()?;
        if !(1..=3).contains(&self.version) {
            return Err(format!("GGUF version {}", self.version));
        }
        let tensors = self.len()?;
        self.kv_count_at = self.at;
        let kvs = self.len()?;
        for _ in 0..kvs {
            self.string()?;
            let ty = self.u32()?;
            self.skip_value(ty, 0)?;
        }
        self.kv_end = self.at;
        for _ in 0..tensors {
            let start = self.at;
            let name = String::from_utf8_lossy(self.string()?).into_owned();
            let n_dims = self.u32()? as usize;
            if n_dims > 4 {
                return Err(format!("tensor {name}: {n_dims} dimensions"));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(self.len()?);
            }
            let dtype = self.u32()?;
            let offset = self.u64()?;
            self.entries.push(Entry {
                name,
                dims,
                dtype,
                offset,
                span: (start, self.at),
            });
        }
        self.end = self.at;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file: one string KV and tensors (name, dims innermost first, ggml type).
    fn file(tensors: &[(&str, &[u64], u32)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend(1u64.to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        string(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        string(&mut b, "llama");
        let mut offset = 0u64;
        for (name, dims, ty) in tensors {
            string(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += 1024; // room for any of these tensors, aligned
        }
        b.resize(b.len().div_ceil(32) * 32 + offset as usize, 0);
        b
    }

    /// IQ4 entries come apart with the data offset candle computes for the same table (Q4_0
    /// has IQ4_NL's block size, so the file with Q4_0 in its place lays out the same).
    #[test]
    fn iq4_entries_are_taken_apart() {
        let iq = file(&[("a", &[4], 0), ("w", &[32, 8], 20), ("x", &[256, 8], 23)]);
        let q = file(&[("a", &[4], 0), ("w", &[32, 8], 2), ("x", &[256, 8], 2)]);
        let (content, found) = read(&iq).ok().unwrap();
        let want = Content::read(&mut Cursor::new(&q)).unwrap();
        assert_eq!(content.tensor_data_offset, want.tensor_data_offset);
        assert_eq!(content.tensor_infos.len(), 1);
        assert_eq!(content.tensor_infos["a"].offset, 0);
        assert_eq!(content.metadata.len(), 1);
        assert_eq!(found.len(), 2);
        assert_eq!((found["w"].iq, found["w"].offset), (Iq4::Nl, 1024));
        assert_eq!(found["w"].dims, vec![8, 32]);
        assert_eq!((found["x"].iq, found["x"].offset), (Iq4::Xs, 2048));
        // Without IQ4 tensors: candle's reading, unchanged.
        let (c, none) = read(&q).ok().unwrap();
        assert!(none.is_empty());
        assert_eq!(c.tensor_infos.len(), 3);
    }

    #[test]
    fn other_unknown_types_and_bad_headers_are_errors() {
        let f = file(&[("w", &[256, 8], 16)]);
        assert!(matches!(read(&f), Err(HeaderError::UnknownType(16))));
        let f = file(&[("w", &[32, 8], 20)]);
        for cut in [3, 20, 60, 90] {
            assert!(read(&f[..cut]).is_err(), "cut at {cut}");
        }
    }
}
