//! `llama3._llama3`: the native module of the Python package (`python/llama3`). It holds the
//! model and runs generation, scoring and the CLI; the package shapes results into Python and
//! OpenAI objects. Everything that runs the model releases the GIL.

mod errors;
mod model;
mod stream;

use pyo3::prelude::*;

#[pymodule]
fn _llama3(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Model>()?;
    m.add_class::<stream::Stream>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
