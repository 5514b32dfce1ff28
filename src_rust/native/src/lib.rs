//! PyO3 glue for `nomad_device_nvidia._native`. Only the module definition and
//! conversions live here; the work is done by plain-Rust crates beside it.

use pyo3::prelude::*;

mod lanes;
mod stats_engine;
mod stats_ticker;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<stats_engine::StatsEngine>()?;
    m.add_class::<lanes::Lanes>()?;
    m.add_class::<stats_ticker::StatsTicker>()?;
    Ok(())
}
