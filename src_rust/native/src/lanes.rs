//! `Lanes`: the Python face of stats_core::Lanes, the per-GPU lane table the
//! Python executor and the Rust stats engine share. Its calls only take a
//! short mutex (never held across an NVML call), so they keep the GIL.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// (owner, seconds held, what) of a lane's holder.
type Holder = (u64, f64, String);

#[pyclass(frozen, module = "nomad_device_nvidia._native")]
pub struct Lanes {
    pub(crate) inner: Arc<stats_core::Lanes>,
}

fn seconds(deadline: f64) -> PyResult<Duration> {
    if !(deadline.is_finite() && deadline > 0.0) {
        return Err(PyValueError::new_err(format!(
            "deadline must be a positive number of seconds, got {deadline}"
        )));
    }
    Ok(Duration::from_secs_f64(deadline))
}

fn holder(h: stats_core::Held) -> Holder {
    (h.owner, h.held_for.as_secs_f64(), h.what)
}

#[pymethods]
impl Lanes {
    #[new]
    fn new(deadline: f64) -> PyResult<Self> {
        Ok(Lanes {
            inner: Arc::new(stats_core::Lanes::new(seconds(deadline)?)),
        })
    }

    /// The NVML deadline in seconds: a lane held longer is stuck.
    #[getter]
    fn deadline(&self) -> f64 {
        self.inner.deadline().as_secs_f64()
    }

    fn set_deadline(&self, deadline: f64) -> PyResult<()> {
        self.inner.set_deadline(seconds(deadline)?);
        Ok(())
    }

    /// Takes `key` for `owner` if it is free (or already theirs): None;
    /// else its holder as (owner, seconds held, what).
    fn try_hold(&self, key: &str, owner: u64, what: &str) -> Option<Holder> {
        self.inner
            .try_hold(key, owner, what.to_string())
            .err()
            .map(holder)
    }

    /// Gives `key` back; False when `owner` does not hold it.
    fn release(&self, key: &str, owner: u64) -> bool {
        self.inner.release(key, owner)
    }

    /// The holder of `key` as (owner, seconds held, what), or None.
    fn holder(&self, key: &str) -> Option<Holder> {
        self.inner.holder(key).map(holder)
    }

    /// Every lane held now: (key, owner, seconds held, what).
    fn held(&self) -> Vec<(String, u64, f64, String)> {
        self.inner
            .held()
            .into_iter()
            .map(|h| (h.key, h.owner, h.held_for.as_secs_f64(), h.what))
            .collect()
    }
}
