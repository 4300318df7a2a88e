//! Labelled text examples from CSV (with a header row) or JSONL, optionally bzip2-compressed
//! (`.csv.bz2`, `.jsonl.bz2`). The format is chosen by extension: `.csv` is CSV, `.jsonl` /
//! `.json` / `.ndjson` are one JSON object per line. Errors name the file and the line.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value as Json;

use crate::{Error, Result};

/// One example: its text, its label as written in the file, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabelledExample {
    pub text: String,
    pub label: String,
    /// 1-based line of the record in its file (0 when not read from a file).
    #[serde(skip)]
    pub line: usize,
}

/// Which fields hold the text and the label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    pub text: String,
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            text: "text".into(),
            label: "label".into(),
        }
    }
}

/// Opens `path`, decompressing `.bz2` on the fly.
pub fn open(path: &Path) -> Result<Box<dyn Read>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(if extension(path).1 {
        Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    })
}

/// The extension that names the format (lowercase, `.bz2` peeled off) and whether the file is
/// bzip2-compressed.
fn extension(path: &Path) -> (String, bool) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (stem, bz2) = match name.strip_suffix(".bz2") {
        Some(s) => (s.to_string(), true),
        None => (name, false),
    };
    let ext = stem
        .rsplit_once('.')
        .map(|(_, e)| e.to_string())
        .unwrap_or_default();
    (ext, bz2)
}

/// Reads every example. Empty texts and labels are errors (a prompt without its text scores
/// nothing meaningful); surrounding whitespace is trimmed from both.
pub fn read_labelled(path: &Path, cols: &Columns) -> Result<Vec<LabelledExample>> {
    let rows = match extension(path).0.as_str() {
        "csv" => read_csv(path, &[&cols.text, &cols.label])?,
        "jsonl" | "json" | "ndjson" => read_jsonl(path, &[&cols.text, &cols.label])?,
        other => {
            return Err(Error::format(
                path,
                format!("unknown data format {other:?}: expected .csv or .jsonl (optionally .bz2)"),
            ))
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for (line, mut fields) in rows {
        let label = fields.pop().unwrap_or_default().trim().to_string();
        let text = fields.pop().unwrap_or_default().trim().to_string();
        for (what, v, col) in [("text", &text, &cols.text), ("label", &label, &cols.label)] {
            if v.is_empty() {
                return Err(Error::format(
                    path,
                    format!("line {line}: empty {what} (field {col:?})"),
                ));
            }
        }
        out.push(LabelledExample { text, label, line });
    }
    if out.is_empty() {
        return Err(Error::format(path, "no examples"));
    }
    Ok(out)
}

/// CSV records as (line, the named fields in order). Every named column must be in the header.
pub fn read_csv(path: &Path, fields: &[&str]) -> Result<Vec<(usize, Vec<String>)>> {
    let mut rdr = csv::Reader::from_reader(open(path)?);
    let csv_err = |e: csv::Error| {
        let at = e
            .position()
            .map(|p| format!("line {}: ", p.line()))
            .unwrap_or_default();
        Error::format(path, format!("{at}malformed CSV: {e}"))
    };
    let header = rdr.headers().map_err(csv_err)?.clone();
    let idx: Vec<usize> = fields
        .iter()
        .map(|f| {
            header.iter().position(|h| h == *f).ok_or_else(|| {
                let have: Vec<&str> = header.iter().collect();
                Error::format(
                    path,
                    format!("no column {f:?} in the header (columns: {have:?})"),
                )
            })
        })
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(csv_err)?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let vals = idx
            .iter()
            .map(|&i| rec.get(i).unwrap_or_default().to_string())
            .collect();
        out.push((line, vals));
    }
    Ok(out)
}

/// JSONL objects as (line, the named fields in order). Strings are taken as they are, numbers
/// and booleans as written (`1`, `true`); a missing field is an error. Blank lines are skipped.
pub fn read_jsonl(path: &Path, fields: &[&str]) -> Result<Vec<(usize, Vec<String>)>> {
    let reader = BufReader::new(open(path)?);
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Error::format(path, format!("line {n}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Json = serde_json::from_str(&line)
            .map_err(|e| Error::format(path, format!("line {n}: not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::format(path, format!("line {n}: not a JSON object")))?;
        let vals = fields
            .iter()
            .map(|f| match obj.get(*f) {
                Some(Json::String(s)) => Ok(s.clone()),
                Some(x @ (Json::Number(_) | Json::Bool(_))) => Ok(x.to_string()),
                Some(x) => Err(Error::format(
                    path,
                    format!("line {n}: field {f:?} must be a string or a number, not {x}"),
                )),
                None => Err(Error::format(path, format!("line {n}: no field {f:?}"))),
            })
            .collect::<Result<_>>()?;
        out.push((n, vals));
    }
    Ok(out)
}

/// Writes examples as JSONL (`{"text": ..., "label": ...}` plus `extra` fields per line).
pub fn write_jsonl(path: &Path, rows: &[Json]) -> Result<()> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r).map_err(|e| Error::format(path, e.to_string()))?);
        s.push('\n');
    }
    crate::weights::atomic::write_bytes(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn csv_and_jsonl_with_custom_columns() {
        let dir = tempfile::tempdir().unwrap();
        let cols = Columns {
            text: "review".into(),
            label: "y".into(),
        };
        let p = write(
            &dir,
            "a.csv",
            "y,review,other\npos,\"good, fine\",1\nneg, bad ,2\n",
        );
        let got = read_labelled(&p, &cols).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].text.as_str(), got[0].label.as_str(), got[0].line),
            ("good, fine", "pos", 2)
        );
        assert_eq!((got[1].text.as_str(), got[1].line), ("bad", 3));
        let p = write(
            &dir,
            "a.jsonl",
            "{\"review\": \"ok\", \"y\": 1}\n\n{\"review\": \"no\", \"y\": \"0\"}\n",
        );
        let got = read_labelled(&p, &cols).unwrap();
        assert_eq!(
            (got[0].label.as_str(), got[1].label.as_str(), got[1].line),
            ("1", "0", 3)
        );
    }

    #[test]
    fn bad_input_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let c = Columns::default();
        let msg = |name: &str, text: &str| {
            read_labelled(&write(&dir, name, text), &c)
                .unwrap_err()
                .to_string()
        };
        let m = msg(
            "e.jsonl",
            "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"  \", \"label\": \"x\"}\n",
        );
        assert!(
            m.contains("e.jsonl") && m.contains("line 2: empty text"),
            "{m}"
        );
        let m = msg(
            "m.jsonl",
            "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"a\",\n",
        );
        assert!(m.contains("line 2: not valid JSON"), "{m}");
        let m = msg("n.jsonl", "{\"text\": \"a\"}\n");
        assert!(m.contains("line 1: no field \"label\""), "{m}");
        let m = msg("h.csv", "body,label\na,b\n");
        assert!(m.contains("no column \"text\""), "{m}");
        let m = msg("r.csv", "text,label\na,b\nc,d,e\n");
        assert!(m.contains("line 3") && m.contains("malformed CSV"), "{m}");
        let m = msg("l.csv", "text,label\na,\n");
        assert!(m.contains("line 2: empty label"), "{m}");
        let m = msg("x.txt", "a\n");
        assert!(m.contains("unknown data format"), "{m}");
        let m = msg("z.jsonl", "\n");
        assert!(m.contains("no examples"), "{m}");
    }
}
