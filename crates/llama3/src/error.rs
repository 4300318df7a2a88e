//! Typed errors for the library. Messages name the file, the tensor and the shape.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what its format requires (bad magic, truncated...).
    #[error("{}: {msg}", file.display())]
    Format { file: PathBuf, msg: String },
    #[error("missing tensor {name} in {}", file.display())]
    MissingTensor { name: String, file: PathBuf },
    #[error("tensor {name} in {} has shape {got:?}, expected {expected:?}", file.display())]
    Shape {
        name: String,
        file: PathBuf,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A valid file that asks for something we do not support (architecture, quant type...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// A JSON schema, regex or grammar that cannot be compiled (says what and where).
    #[error("grammar: {0}")]
    Grammar(String),
    /// Bad value given by the caller (prompt too long, bad sampling parameter...).
    #[error("{0}")]
    Input(String),
    #[error("{}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is set:
/// users get one line.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        e => e.to_string(),
    }
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
