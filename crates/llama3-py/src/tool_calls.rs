//! Chat helpers for the Python package: `ToolReader` reads tool calls out of an answer as it
//! streams (`llama3::tools::ToolStream`), and `response_format_constraint` reads OpenAI's
//! `response_format` as the server does.

use llama3::grammar::Constraint;
use llama3::tools::{ToolFormat, ToolParser, ToolStream};
use pyo3::prelude::*;

use crate::errors::{invalid, to_py};

/// The constraint of a `response_format` (JSON text), as (kind, data) for `Model.generate`;
/// None for `{"type": "text"}`.
#[pyfunction]
pub fn response_format_constraint(response_format: &str) -> PyResult<Option<(String, String)>> {
    let v: serde_json::Value = serde_json::from_str(response_format)
        .map_err(|e| invalid(format!("response_format: {e}")))?;
    let c = Constraint::from_response_format(&v).map_err(to_py)?;
    Ok(c.map(|c| {
        let (kind, data) = c.to_tagged();
        (kind.to_string(), data)
    }))
}

/// One answer's reader: `push` each piece (returns the text that can be shown now), `finish`
/// at the end (JSON `{"content", "tool_calls"}` of what was held).
#[pyclass(module = "llama3._llama3")]
pub struct ToolReader {
    inner: ToolStream,
}

#[pymethods]
impl ToolReader {
    /// `format` as `Model.chat_plan` names it; `forced`: the answer is a call (required or a
    /// named function).
    #[new]
    fn new(format: &str, parallel: bool, forced: bool) -> PyResult<Self> {
        let format: ToolFormat = serde_json::from_value(serde_json::json!(format))
            .map_err(|e| invalid(format!("tool format {format:?}: {e}")))?;
        Ok(Self {
            inner: ToolStream::new(ToolParser::new(format, parallel), forced),
        })
    }

    fn push(&mut self, piece: &str) -> String {
        self.inner.push(piece)
    }

    fn finish(&mut self) -> PyResult<String> {
        serde_json::to_string(&self.inner.finish()).map_err(|e| invalid(e.to_string()))
    }
}
