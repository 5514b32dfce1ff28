//! `StatsEngine`: the Python face of stats_core::Engine. Every call that
//! touches NVML (open, each tick, close) runs with the GIL released.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use stats_core::{Engine, EngineConfig, Level, LogSink, TrackedDevice, DEFAULT_LIBRARY};

use crate::lanes::Lanes;

#[pyclass(frozen, module = "nomad_device_nvidia._native")]
pub struct StatsEngine {
    // None once closed. A Mutex, not a borrow flag, so that the fingerprint
    // thread's track() simply waits for a running tick. Shared with the
    // engine's clock (stats_ticker.rs), which stops once it finds it closed.
    engine: Arc<Mutex<Option<Engine>>>,
    // The encode buffer, reused: a fresh multi-100-KB buffer per tick costs
    // an mmap, page faults and an munmap each time.
    scratch: Mutex<Vec<u8>>,
    // The engine's log, kept past close(): events logged by close() and by a
    // hung read returning after it are still taken.
    log: LogSink,
}

fn closed() -> PyErr {
    PyRuntimeError::new_err("stats engine is closed")
}

impl StatsEngine {
    fn lock(&self) -> MutexGuard<'_, Option<Engine>> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine, for its clock.
    pub(crate) fn shared(&self) -> Arc<Mutex<Option<Engine>>> {
        Arc::clone(&self.engine)
    }
}

#[pymethods]
impl StatsEngine {
    #[new]
    #[pyo3(signature = (library = None, *, extended = false, batched = None, timeout = 1.0, max_workers = 32, lanes = None))]
    fn new(
        py: Python<'_>,
        library: Option<String>,
        extended: bool,
        batched: Option<bool>,
        timeout: f64,
        max_workers: usize,
        lanes: Option<PyRef<'_, Lanes>>,
    ) -> PyResult<Self> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(PyValueError::new_err(format!(
                "timeout must be a positive number of seconds, got {timeout}"
            )));
        }
        if max_workers == 0 {
            return Err(PyValueError::new_err("max_workers must be at least 1"));
        }
        let config = EngineConfig {
            extended,
            // Measured: one field-values call for the three ECC counters costs
            // the same as nvmlDeviceGetDetailedEccErrors, so batching pays only
            // when extended stats add the energy counter to the batch.
            batched: batched.unwrap_or(extended),
            timeout: Duration::from_secs_f64(timeout),
            max_workers,
        };
        let library = library.unwrap_or_else(|| DEFAULT_LIBRARY.to_string());
        // The process's lanes: the reads skip GPUs stuck in the Python side's calls,
        // and the tick deadline follows theirs.
        let lanes = lanes.map(|l| l.inner.clone());
        let engine = py
            .detach(|| Engine::open_with(&library, config, lanes))
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(StatsEngine {
            log: engine.log_sink(),
            engine: Arc::new(Mutex::new(Some(engine))),
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// Replaces the tracked set with (device_id, uuid, group, gpu) tuples;
    /// gpu is the physical GPU's UUID ("": uuid is the GPU's own).
    fn track(
        &self,
        py: Python<'_>,
        devices: Vec<(String, String, String, String)>,
    ) -> PyResult<()> {
        let devices = devices
            .into_iter()
            .map(|(device_id, uuid, group, gpu)| TrackedDevice {
                device_id,
                uuid,
                group,
                gpu,
            })
            .collect();
        py.detach(|| match self.lock().as_mut() {
            Some(e) => {
                e.track(devices);
                Ok(())
            }
            None => Err(()),
        })
        .map_err(|()| closed())
    }

    /// One tick: a serialized StatsResponse.
    fn collect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        // Only this method takes `scratch`, and never while waiting for the GIL.
        let mut out = std::mem::take(&mut *self.scratch.lock().unwrap_or_else(|p| p.into_inner()));
        py.detach(|| match self.lock().as_mut() {
            Some(e) => {
                e.collect_into(&mut out);
                Ok(())
            }
            None => Err(()),
        })
        .map_err(|()| closed())?;
        let bytes = PyBytes::new(py, &out);
        *self.scratch.lock().unwrap_or_else(|p| p.into_inner()) = out;
        Ok(bytes)
    }

    /// Log events since the last call, as (level, message); level is
    /// "info" or "warning". Also after close().
    fn take_log(&self) -> Vec<(&'static str, String)> {
        self.log
            .take()
            .into_iter()
            .map(|e| {
                let level = match e.level {
                    Level::Info => "info",
                    Level::Warning => "warning",
                };
                (level, e.message)
            })
            .collect()
    }

    /// Number of tracked devices.
    #[getter]
    fn tracked(&self, py: Python<'_>) -> usize {
        py.detach(|| self.lock().as_ref().map_or(0, |e| e.tracked()))
    }

    /// Stops the workers and releases NVML (nvmlShutdown once no read is in
    /// flight). Idempotent; take_log() still answers afterwards.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            if let Some(engine) = self.lock().take() {
                engine.close();
            }
        });
    }
}
