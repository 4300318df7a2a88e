//! `llama3._llama3`: the native module of the Python package (`python/llama3`). It holds the
//! model and runs generation, scoring and the CLI; the package shapes results into Python and
//! OpenAI objects. Everything that runs the model releases the GIL.

mod errors;
mod model;
mod stream;
mod tool_calls;
mod tools;

use pyo3::prelude::*;

#[pymodule]
fn _llama3(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Model>()?;
    m.add_class::<stream::Stream>()?;
    m.add_class::<tool_calls::ToolReader>()?;
    m.add_function(wrap_pyfunction!(tool_calls::response_format_constraint, m)?)?;
    m.add_function(wrap_pyfunction!(tools::run_cli, m)?)?;
    m.add_function(wrap_pyfunction!(tools::call_cli, m)?)?;
    m.add_function(wrap_pyfunction!(tools::train, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The CLI's process settings (thread pools, allocator thresholds, logging): the model
    // runs as fast here as in the binary.
    llama3_cli::setup_process();
    Ok(())
}
