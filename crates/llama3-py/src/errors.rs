//! Library errors as Python exceptions. The classes live in `llama3/_errors.py`, where they
//! can also be `FileNotFoundError` / `ValueError` (Python multiple inheritance); this picks one
//! by the error's kind.

use pyo3::prelude::*;

/// The exception class for `e`.
fn class_of(e: &llama3::Error) -> &'static str {
    use llama3::Error as E;
    match e {
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "ModelNotFoundError"
        }
        E::Format { .. } | E::MissingTensor { .. } | E::Shape { .. } => "ModelFormatError",
        E::Unsupported(_) => "UnsupportedError",
        E::Input(_) | E::Config(_) | E::Grammar(_) => "InvalidArgumentError",
        E::Tokenizer(_) | E::Template(_) => "TokenizerError",
        E::Io { .. } | E::Candle(_) => "Llama3Error",
    }
}

/// An exception of class `name` from `llama3._errors` with `msg`.
pub fn raise(name: &str, msg: String) -> PyErr {
    Python::attach(|py| {
        let class = py.import("llama3._errors").and_then(|m| m.getattr(name));
        match class {
            Ok(c) => match c.call1((msg.clone(),)) {
                Ok(inst) => PyErr::from_value(inst),
                Err(e) => e,
            },
            // The package is broken (the native module imported alone): still an exception.
            Err(_) => pyo3::exceptions::PyRuntimeError::new_err(msg),
        }
    })
}

/// A library error as its Python exception.
pub fn to_py(e: llama3::Error) -> PyErr {
    raise(class_of(&e), e.to_string())
}

/// A bad argument (`InvalidArgumentError`, also a `ValueError`).
pub fn invalid(msg: impl Into<String>) -> PyErr {
    raise("InvalidArgumentError", msg.into())
}
