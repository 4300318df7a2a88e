//! Typed errors for training. Messages name the file, the line and the value at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but does not hold what it should (bad JSONL line, corrupt checkpoint...).
    #[error("{}: {msg}", file.display())]
    Format { file: PathBuf, msg: String },
    /// Bad value given by the caller (label outside the vocabulary, empty corpus...).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] llama3::Error),
    #[error("{}", llama3::error::candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(file: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            file: file.into(),
            msg: msg.into(),
        }
    }
}
