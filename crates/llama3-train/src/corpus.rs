//! Text corpora tokenized once into a cached token file: documents (a text file, or a
//! JSONL line's `text`) each followed by EOS, stored as little-endian u32 after a header,
//! memory-mapped for training. The cache name hashes the tokenizer and each file's path,
//! size and modification time, so edited data or another tokenizer gets a new file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use llama3::tokenizer::Tokenizer;
use memmap2::Mmap;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{Error, Result};
use llama3::weights::atomic;

const MAGIC: &[u8; 8] = b"LL3TOK01";
const HEADER: usize = 16; // magic, u64 token count

/// A memory-mapped token file.
pub struct TokenFile {
    map: Mmap,
    len: usize,
    path: PathBuf,
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: cache files are written once (atomically) and never modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(Error::format(path, "not a llama3 token file"));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&map[8..16]);
        let len = u64::from_le_bytes(n) as usize;
        if map.len() != HEADER + 4 * len {
            return Err(Error::format(
                path,
                format!("truncated: header says {len} tokens"),
            ));
        }
        Ok(Self {
            map,
            len,
            path: path.to_path_buf(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens `start..start + len`.
    pub fn slice(&self, start: usize, len: usize) -> Vec<u32> {
        self.map[HEADER + 4 * start..HEADER + 4 * (start + len)]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

/// The files under `paths`: files as given, folders searched recursively for `.txt`, `.md`
/// and `.jsonl`, in name order.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .extension()
            .is_some_and(|x| x == "txt" || x == "md" || x == "jsonl")
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Tokenizes `files` into `cache_dir` unless an up-to-date cache exists, and opens it.
/// `progress(bytes done, bytes total)` is called as files finish.
pub fn tokenize_cached(
    files: &[PathBuf],
    tok: &Tokenizer,
    cache_dir: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<TokenFile> {
    if files.is_empty() {
        return Err(Error::Input("no text files found in the data path".into()));
    }
    let eos = tok.eos_id().ok_or_else(|| {
        Error::Input("the tokenizer has no EOS token to separate documents".into())
    })?;
    let mut hasher = Sha256::new();
    hasher.update(MAGIC);
    hasher.update(tok.inner().to_string(false).unwrap_or_default().as_bytes());
    hasher.update(eos.to_le_bytes());
    let mut total = 0u64;
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let abs = std::fs::canonicalize(f).map_err(|e| Error::io(f, e))?;
        hasher.update(abs.to_string_lossy().as_bytes());
        hasher.update(meta.len().to_le_bytes());
        hasher.update(mtime.to_le_bytes());
        total += meta.len();
    }
    let key: String = hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    atomic::create_dir_all(cache_dir)?;
    let path = cache_dir.join(format!("tokens-{key}.bin"));
    if !path.exists() {
        write_tokens(&path, files, tok, eos, total, progress)?;
    }
    let file = TokenFile::open(&path)?;
    if file.is_empty() {
        return Err(Error::Input(format!(
            "the training text holds no tokens ({} files)",
            files.len()
        )));
    }
    Ok(file)
}

fn write_tokens(
    path: &Path,
    files: &[PathBuf],
    tok: &Tokenizer,
    eos: u32,
    total: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let done = AtomicU64::new(0);
    let mut n_tokens = 0u64;
    let io = |e: std::io::Error| Error::io(path, e);
    atomic::write_with(path, |out| {
        let mut w = std::io::BufWriter::new(out);
        w.write_all(MAGIC).map_err(io)?;
        w.write_all(&0u64.to_le_bytes()).map_err(io)?; // count, patched below
        for chunk in files.chunks(64) {
            let tokens: Vec<Vec<u32>> = chunk
                .par_iter()
                .map(|f| {
                    let t = tokenize_file(f, tok, eos);
                    let size = std::fs::metadata(f).map_or(0, |m| m.len());
                    progress(done.fetch_add(size, Ordering::Relaxed) + size, total);
                    t
                })
                .collect::<Result<_>>()?;
            for t in tokens.iter().flatten() {
                w.write_all(&t.to_le_bytes()).map_err(io)?;
                n_tokens += 1;
            }
        }
        let out = w.into_inner().map_err(|e| io(e.into_error()))?;
        use std::io::Seek;
        out.seek(std::io::SeekFrom::Start(8)).map_err(io)?;
        out.write_all(&n_tokens.to_le_bytes()).map_err(io)
    })
}

/// The documents of one file, each encoded and followed by `eos`.
fn tokenize_file(path: &Path, tok: &Tokenizer, eos: u32) -> Result<Vec<u32>> {
    let docs = documents(path)?;
    let encoded: Vec<Vec<u32>> = docs
        .par_iter()
        .map(|d| tok.encode(d, false, false).map_err(Error::from))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(encoded.iter().map(|e| e.len() + 1).sum());
    for mut e in encoded {
        out.append(&mut e);
        out.push(eos);
    }
    Ok(out)
}

/// A `.jsonl` file's `text` fields, or a text file's whole content; empty ones dropped.
pub fn documents(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::format(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    if path.extension().is_none_or(|x| x != "jsonl") {
        return Ok(if text.trim().is_empty() {
            vec![]
        } else {
            vec![text]
        });
    }
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: String| Error::format(path, format!("line {}: {m}", i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("no \"text\" string field".into()))?;
        if !t.is_empty() {
            docs.push(t.to_string());
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, "{\"text\": \"hi\"}\n\n{\"txt\": 1}\n").unwrap();
        let e = documents(&p).unwrap_err().to_string();
        assert!(e.contains("a.jsonl") && e.contains("line 3"), "{e}");
        std::fs::write(&p, "{\"text\": \"hi\"}\n{\"text\": \"\"}\n").unwrap();
        assert_eq!(documents(&p).unwrap(), vec!["hi".to_string()]);
        let t = dir.path().join("b.txt");
        std::fs::write(&t, b"ok \xff bad").unwrap();
        let e = documents(&t).unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("offset 3"), "{e}");
    }
}
