//! `StatsTicker`: the Python face of stats_core::Ticker, the clock of one
//! `StatsEngine`. The event loop watches `fileno()` and calls `drain()` when
//! it is readable; nothing here waits for a collection except `close()`,
//! which releases the GIL.

use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use stats_core::{SharedEngine, Ticker, TrackedDevice};

use crate::stats_engine::StatsEngine;

#[pyclass(frozen, module = "nomad_device_nvidia._native")]
pub struct StatsTicker {
    ticker: Ticker,
}

#[pymethods]
impl StatsTicker {
    /// Starts the engine's clock thread, with no interval subscribed yet.
    #[new]
    fn new(engine: &Bound<'_, StatsEngine>) -> PyResult<Self> {
        let ticker = Ticker::start(SharedEngine(engine.get().shared()))
            .map_err(|e| PyRuntimeError::new_err(format!("starting the stats clock: {e}")))?;
        Ok(StatsTicker { ticker })
    }

    /// The descriptor that turns readable when answers wait.
    fn fileno(&self) -> i32 {
        self.ticker.fd()
    }

    /// Subscribes exactly these intervals (nanoseconds); a new one is due at once.
    fn set_intervals(&self, intervals_ns: Vec<u64>) {
        let intervals: Vec<Duration> = intervals_ns.into_iter().map(Duration::from_nanos).collect();
        self.ticker.set_intervals(&intervals);
    }

    /// The tracked set, as (device_id, uuid, group, gpu), for the next
    /// collection; gpu is the physical GPU's UUID ("": uuid is the GPU's own).
    fn track(&self, devices: Vec<(String, String, String, String)>) {
        self.ticker.track(
            devices
                .into_iter()
                .map(|(device_id, uuid, group, gpu)| TrackedDevice {
                    device_id,
                    uuid,
                    group,
                    gpu,
                })
                .collect(),
        );
    }

    /// The answers waiting, as (interval in ns, serialized StatsResponse).
    fn drain<'py>(&self, py: Python<'py>) -> Vec<(u64, Bound<'py, PyBytes>)> {
        self.ticker
            .drain()
            .into_iter()
            .map(|(k, data)| (k, PyBytes::new(py, &data)))
            .collect()
    }

    /// The engine was closed: no more answers will come.
    #[getter]
    fn closed(&self) -> bool {
        self.ticker.closed()
    }

    /// Collections run so far.
    #[getter]
    fn collections(&self) -> u64 {
        self.ticker.collections()
    }

    /// Stops the clock; waits at most for the collection in progress.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.ticker.close());
    }
}
