//! Crash-safe file writes, the one path every writer of the workspace takes (weights, GGUF,
//! PEFT adapters, checkpoints, configs, tokenizers, metrics, plots): a temporary file in the
//! target's directory, filled, fsynced, made 0644, renamed over the target, and the directory
//! fsynced. A reader sees the old file or the new one, never a torn one; a writer that fails
//! leaves the old file as it was and no temporary behind (the temporary is removed on drop).

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Mode of every file we write: what `File::create` gives under the usual umask 022, set
/// explicitly because temporary files are created 0600 and a model file is for others to read.
pub const FILE_MODE: u32 = 0o644;

/// Writes `path` atomically with what `fill` writes into the open temporary file. `fill`'s
/// own error type comes back unchanged (so callers keep theirs); ours convert into it.
pub fn write_with<E: From<Error>>(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dir = parent(path);
    let mut tmp = new_temp(path)?;
    fill(tmp.as_file_mut())?;
    finish(tmp, path, dir)?;
    Ok(())
}

/// Writes `path` atomically with a writer that wants a path rather than a file (safetensors'
/// `serialize_to_file`, plotters' `BitMapBackend`). The temporary path keeps the target's
/// extension, since some writers pick the format by it.
pub fn write_path_with<E: From<Error>>(
    path: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dir = parent(path);
    let tmp = new_temp(path)?;
    fill(tmp.path())?;
    // The writer may have replaced the file (create + truncate keeps the inode, a rename
    // would not): set the mode again through the path.
    set_mode(tmp.path())?;
    finish(tmp, path, dir)?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |f| f.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::format(path, format!("cannot serialize JSON: {e}")))?;
    write_bytes(path, text.as_bytes())
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// `create_dir_all` with the directory named in the error.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Flush, fsync through a fresh handle (a path writer reopened the file), rename, fsync the
/// directory.
fn finish(tmp: tempfile::NamedTempFile, path: &Path, dir: &Path) -> Result<()> {
    tmp.as_file().flush().map_err(|e| Error::io(path, e))?;
    std::fs::File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    sync_dir(dir)
}

/// A hidden temporary beside `path` (`.NAME.XXXXXX.EXT`), mode [`FILE_MODE`].
fn new_temp(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let suffix = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(&suffix)
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    set_mode(tmp.path())?;
    Ok(tmp)
}

fn set_mode(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(FILE_MODE);
        std::fs::set_permissions(path, perms).map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    #[test]
    fn written_files_are_0644_whatever_the_writer() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let a = dir.path().join("a.json");
        write_json(&a, &serde_json::json!({"k": 1})).unwrap();
        assert_eq!(mode(&a), 0o644);
        // A path writer that creates its own file (as `std::fs::write` does, 0666 & umask).
        let b = dir.path().join("b.bin");
        write_path_with::<Error>(&b, |p| {
            std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
            std::fs::write(p, b"xy").map_err(|e| Error::io(p, e))
        })
        .unwrap();
        assert_eq!(mode(&b), 0o644);
        assert_eq!(std::fs::read(&b).unwrap(), b"xy");
        assert_eq!(names(dir.path()), ["a.json", "b.bin"]);
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        write_bytes(&p, b"old contents").unwrap();
        let err = write_with(&p, |f| {
            f.write_all(b"half of the new")
                .map_err(|e| Error::io(&p, e))?;
            Err(Error::Input("the writer failed".into()))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "the writer failed");
        let err = write_path_with(&p, |tmp| {
            std::fs::write(tmp, b"half").map_err(|e| Error::io(tmp, e))?;
            Err(Error::Input("the path writer failed".into()))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "the path writer failed");
        assert_eq!(std::fs::read(&p).unwrap(), b"old contents");
        // No temporary left behind.
        assert_eq!(names(dir.path()), ["model.safetensors"]);
    }

    #[test]
    fn temporaries_keep_the_extension_and_a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        write_path_with::<Error>(&p, |tmp| {
            assert_eq!(tmp.extension().unwrap(), "png");
            assert!(tmp
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".loss.png."));
            std::fs::write(tmp, b"png").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        let err = write_bytes(Path::new("/nonexistent-dir/x.json"), b"{}").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
    }
}
