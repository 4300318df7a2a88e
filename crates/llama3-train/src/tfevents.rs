//! TensorBoard event files (`events.out.tfevents.<time>.<host>`): scalars written as
//! TensorFlow `Event` protos (`tensorflow/core/util/event.proto`, `summary.proto`) framed as
//! TFRecords (`u64 length`, masked CRC-32C of the length, data, masked CRC-32C of the data), so
//! `tensorboard --logdir RUN` shows the run's curves. Built with the `tensorboard` feature
//! (prost, crc32c).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use llama3::weights::atomic;
use prost::Message;

use crate::{Error, Result};

/// `tensorflow.Event`, the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a `simple_value` scalar.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// TFRecord's masked CRC-32C (`tensorflow/core/lib/hash/crc32c.h`, `Mask`).
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Reads the events of a file written by [`EventWriter`], checking every CRC.
pub fn read(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: &str| Error::format(path, format!("TFRecord: {m}"));
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(bad("truncated header"));
        }
        let (len_bytes, tail) = rest.split_at(8);
        let len = u64::from_le_bytes(len_bytes.try_into().map_err(|_| bad("length"))?) as usize;
        let crc = u32::from_le_bytes(tail[..4].try_into().map_err(|_| bad("crc"))?);
        if crc != masked_crc(len_bytes) {
            return Err(bad("length CRC mismatch"));
        }
        let tail = &tail[4..];
        if tail.len() < len + 4 {
            return Err(bad("truncated record"));
        }
        let (data, tail) = tail.split_at(len);
        let crc = u32::from_le_bytes(tail[..4].try_into().map_err(|_| bad("crc"))?);
        if crc != masked_crc(data) {
            return Err(bad("data CRC mismatch"));
        }
        out.push(Event::decode(data).map_err(|e| bad(&e.to_string()))?);
        rest = &tail[4..];
    }
    Ok(out)
}

/// Appends scalar events to a new event file in a run directory.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<unix time>.llama3` with its `brain.Event:2` header.
    pub fn create(dir: &Path) -> Result<Self> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let path = dir.join(format!("events.out.tfevents.{}.llama3", now as u64));
        let header = Event {
            wall_time: now,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        };
        // Created whole (0644, fsynced) with its header, then appended to record by record.
        atomic::write_bytes(&path, &record(&header.encode_to_vec()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event with scalars `(tag, value)` at `step`.
    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let wall_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.write(&Event {
            wall_time,
            step: step as i64,
            file_version: None,
            summary: Some(Summary {
                value: values
                    .iter()
                    .map(|(tag, v)| SummaryValue {
                        tag: tag.to_string(),
                        simple_value: Some(*v as f32),
                    })
                    .collect(),
            }),
        })
    }

    fn write(&mut self, e: &Event) -> Result<()> {
        let data = e.encode_to_vec();
        self.file
            .write_all(&record(&data))
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_mask_match_tensorflow() {
        // The CRC-32C check value, and TensorFlow's mask of it: ((c >> 15) | (c << 17)) +
        // 0xa282ead8, worked out by hand.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn events_round_trip_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("train/loss", 2.5), ("train/lr", 1e-3)])
            .unwrap();
        w.scalars(2, &[("train/loss", 2.25)]).unwrap();
        let events = read(w.path()).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let v = &events[1].summary.as_ref().unwrap().value;
        assert_eq!(
            (v[0].tag.as_str(), v[0].simple_value),
            ("train/loss", Some(2.5))
        );
        assert_eq!(events[2].step, 2);
        let mut bytes = std::fs::read(w.path()).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(w.path(), bytes).unwrap();
        assert!(read(w.path()).is_err());
    }
}
