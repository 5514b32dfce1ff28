//! GPM (GPU Performance Monitoring, Hopper and later) metrics per device, for
//! extended stats: what the SMs, tensor cores and memory did, and the PCIe
//! and NVLink rates, per GPU and per MIG instance (whose NVML utilization is
//! NOT_SUPPORTED).
//!
//! Each device keeps two sample buffers. A tick takes one new sample and
//! computes the metrics between it and the previous tick's, so the numbers
//! cover the interval since the last tick and cost two NVML calls. The first
//! tick has no interval yet and reads "N/A". A device whose support query
//! says no (or has not answered yet) sends no GPM stats at all. MIG
//! instances are sampled with nvmlGpmMigSampleGet on their GPU and GPU
//! instance id, both looked up once.
//!
//! nvml.h: samples should be more than 100 ms apart (the driver's sample
//! refresh); closer ones read one snapshot twice, and the metrics between
//! them mean nothing (zeros, or an error). A tick that comes sooner after the
//! last sample (two Stats streams, a short interval) takes no sample and
//! sends the last interval's readings again.
//!
//! The python engine (stats/python.py) makes the same calls in the same
//! order: support query (until it answers), parent and GPU instance lookup
//! (until they answer), sample, metrics.

use std::cell::RefCell;
use std::os::raw::c_uint;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvml_sys::*;

use crate::nvml::{Handle, Nvml};
use crate::sample::{GpmReadings, Reading};
use crate::vocabulary::{GpmScale, GPM_SCALES};

/// GPM stats per device (crate::vocabulary::GPM_STATS).
pub const GPM_STATS: usize = crate::vocabulary::GPM_STATS.len();

/// The NVML metric behind each stat, in `vocabulary::GPM_STATS` order.
pub const METRIC_IDS: [c_uint; GPM_STATS] = crate::vocabulary::GPM_METRIC_IDS;

pub const NOT_AVAILABLE: GpmReadings = [Reading::NotAvailable; GPM_STATS];

/// nvml.h: the interval between two samples should be greater than 100 ms.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A percentage as sent: two decimals. The python engine rounds the same
/// way (floor of x * 100 + 0.5), so both send the same bits.
pub fn percent(v: f64) -> Reading {
    if !v.is_finite() {
        return Reading::NotAvailable;
    }
    Reading::Float((v.max(0.0) * 100.0 + 0.5).floor() / 100.0)
}

/// NVML's MiB/s as MB/s (10^6 bytes), rounded to a whole number.
pub fn mib_to_mb(v: f64) -> Reading {
    if !v.is_finite() {
        return Reading::NotAvailable;
    }
    Reading::Int((v.max(0.0) * 1.048576 + 0.5).floor() as i64)
}

const UNKNOWN: u8 = 0;
const NO: u8 = 1;
const YES: u8 = 2;

#[derive(Clone, Copy)]
enum Target {
    /// A whole GPU (or a library without nvmlGpmMigSampleGet: the MIG handle itself).
    Device,
    /// A MIG instance: its GPU and GPU instance id.
    Mig {
        parent: Handle,
        gpu_instance: c_uint,
    },
}

struct Buffers {
    nvml: Arc<Nvml>,
    samples: [nvmlGpmSample_t; 2],
}

thread_local! {
    // The nvmlGpmMetricsGet argument (19 KB: the header's whole 477-slot metric
    // array, which a driver may clear in full) is one per worker thread, not one
    // per device: 4,096 devices would hold 78 MB of them.
    static GET: RefCell<Box<nvmlGpmMetricsGet_t>> =
        // SAFETY: all-zero is a valid nvmlGpmMetricsGet_t (null pointers, zeros).
        RefCell::new(Box::new(unsafe { std::mem::zeroed() }));
}

// SAFETY: sample handles are opaque tokens NVML accepts from any thread.
unsafe impl Send for Buffers {}

impl Drop for Buffers {
    fn drop(&mut self) {
        if let Some(free) = self.nvml.gpm_sample_free {
            for s in self.samples {
                // SAFETY: buffers from nvmlGpmSampleAlloc, freed once.
                unsafe { free(s) };
            }
        }
    }
}

#[derive(Default)]
struct State {
    target: Option<Target>,
    buffers: Option<Buffers>,
    /// The buffer holding the last sample taken.
    last: Option<usize>,
    /// When the last sample's call returned (the driver took it before), and
    /// the readings of the interval it ended.
    last_at: Option<Instant>,
    last_out: Option<GpmReadings>,
}

/// One device's GPM state; read by one worker at a time (the slot's busy flag).
#[derive(Default)]
pub struct Gpm {
    support: AtomicU8,
    state: Mutex<State>,
}

impl Gpm {
    /// The support query said yes: the device's GPM stats are sent, "N/A"
    /// when a tick cannot read them. Read without the lock (a worker may be
    /// stuck in a call holding it).
    pub fn supported(&self) -> bool {
        self.support.load(Ordering::Acquire) == YES
    }

    /// This tick's GPM readings; None for a device without GPM (or whose
    /// support query has not answered yet).
    pub fn read(&self, nvml: &Arc<Nvml>, h: Handle) -> Option<GpmReadings> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.support.load(Ordering::Acquire) == UNKNOWN {
            let answer = query_support(nvml, h)?;
            self.support
                .store(if answer { YES } else { NO }, Ordering::Release);
        }
        if !self.supported() {
            return None;
        }
        let (Some(sample_get), Some(alloc)) = (nvml.gpm_sample_get, nvml.gpm_sample_alloc) else {
            return Some(NOT_AVAILABLE);
        };
        if st.target.is_none() {
            match target(nvml, h) {
                Some(t) => st.target = Some(t),
                None => return Some(NOT_AVAILABLE),
            }
        }
        if st.buffers.is_none() {
            st.buffers = allocate(nvml, alloc);
        }
        if let (Some(at), Some(out)) = (st.last_at, st.last_out) {
            // Measured from after the last sample to before this one: the
            // driver sees at least this much between them.
            if at.elapsed() <= MIN_INTERVAL {
                return Some(out);
            }
        }
        let target = st.target.expect("resolved above");
        let last = st.last;
        let Some(b) = st.buffers.as_ref() else {
            return Some(NOT_AVAILABLE);
        };
        let cur = last.map_or(0, |l| 1 - l);
        // SAFETY: live handles and sample buffers.
        let code = unsafe {
            match (target, nvml.gpm_mig_sample_get) {
                (
                    Target::Mig {
                        parent,
                        gpu_instance,
                    },
                    Some(mig_get),
                ) => mig_get(parent.0, gpu_instance, b.samples[cur]),
                _ => sample_get(h.0, b.samples[cur]),
            }
        };
        if code != NVML_SUCCESS {
            // The last good sample stays: the next interval starts there.
            return Some(NOT_AVAILABLE);
        }
        let at = Instant::now();
        let out = match last {
            Some(prev) => metrics(nvml, b, prev, cur),
            None => NOT_AVAILABLE,
        };
        st.last = Some(cur);
        st.last_at = Some(at);
        st.last_out = Some(out);
        Some(out)
    }
}

/// Some(true/false) once the query answers; None when it failed (asked again
/// next tick). A library without GPM has none.
fn query_support(nvml: &Nvml, h: Handle) -> Option<bool> {
    let Some(f) = nvml.gpm_query_device_support else {
        return Some(false);
    };
    let mut s = nvmlGpmSupport_t {
        version: NVML_GPM_SUPPORT_VERSION,
        isSupportedDevice: 0,
    };
    // SAFETY: out pointer to a live local with its version set.
    match unsafe { f(h.0, &mut s) } {
        NVML_SUCCESS => Some(s.isSupportedDevice != 0),
        NVML_ERROR_NOT_SUPPORTED | NVML_ERROR_FUNCTION_NOT_FOUND => Some(false),
        _ => None,
    }
}

/// What to sample: the device itself, or for a MIG instance its GPU and GPU
/// instance id. None when a lookup failed (tried again next tick).
fn target(nvml: &Nvml, h: Handle) -> Option<Target> {
    let Some(parent_of) = nvml.parent_of_mig else {
        return Some(Target::Device);
    };
    let mut parent: nvmlDevice_t = std::ptr::null_mut();
    // SAFETY: out pointers to live locals.
    unsafe {
        match parent_of(h.0, &mut parent) {
            NVML_SUCCESS => {}
            // Not a MIG device handle.
            NVML_ERROR_INVALID_ARGUMENT | NVML_ERROR_NOT_SUPPORTED => return Some(Target::Device),
            _ => return None,
        }
        let Some(gi_of) = nvml.gpu_instance_id else {
            return Some(Target::Device);
        };
        let mut gpu_instance: c_uint = 0;
        if gi_of(h.0, &mut gpu_instance) != NVML_SUCCESS {
            return None;
        }
        Some(Target::Mig {
            parent: Handle(parent),
            gpu_instance,
        })
    }
}

fn allocate(nvml: &Arc<Nvml>, alloc: nvmlGpmSampleAlloc_fn) -> Option<Buffers> {
    let mut samples: [nvmlGpmSample_t; 2] = [std::ptr::null_mut(); 2];
    // SAFETY: out pointers to live locals.
    unsafe {
        if alloc(&mut samples[0]) != NVML_SUCCESS {
            return None;
        }
        if alloc(&mut samples[1]) != NVML_SUCCESS {
            if let Some(free) = nvml.gpm_sample_free {
                free(samples[0]);
            }
            return None;
        }
    }
    Some(Buffers {
        nvml: Arc::clone(nvml),
        samples,
    })
}

fn metrics(nvml: &Nvml, b: &Buffers, prev: usize, cur: usize) -> GpmReadings {
    let Some(f) = nvml.gpm_metrics_get else {
        return NOT_AVAILABLE;
    };
    GET.with(|get| metrics_into(f, &mut get.borrow_mut(), b, prev, cur))
}

fn metrics_into(
    f: nvmlGpmMetricsGet_fn,
    get: &mut nvmlGpmMetricsGet_t,
    b: &Buffers,
    prev: usize,
    cur: usize,
) -> GpmReadings {
    get.version = NVML_GPM_METRICS_GET_VERSION;
    get.numMetrics = GPM_STATS as c_uint;
    get.sample1 = b.samples[prev];
    get.sample2 = b.samples[cur];
    for (m, id) in get.metrics.iter_mut().zip(METRIC_IDS) {
        *m = nvmlGpmMetric_t::request(id);
    }
    // SAFETY: a filled-in request; NVML writes the first numMetrics entries.
    if unsafe { f(get) } != NVML_SUCCESS {
        return NOT_AVAILABLE;
    }
    let mut out = NOT_AVAILABLE;
    for ((m, o), scale) in get.metrics.iter().zip(out.iter_mut()).zip(GPM_SCALES) {
        if m.nvmlReturn == NVML_SUCCESS {
            *o = match scale {
                GpmScale::Percent => percent(m.value),
                GpmScale::MibToMb => mib_to_mb(m.value),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(percent(87.5), Reading::Float(87.5));
        assert_eq!(percent(33.333_333), Reading::Float(33.33));
        assert_eq!(percent(0.004), Reading::Float(0.0));
        assert_eq!(percent(-1.0), Reading::Float(0.0));
        assert_eq!(percent(f64::NAN), Reading::NotAvailable);
        assert_eq!(mib_to_mb(1200.0), Reading::Int(1258));
        assert_eq!(mib_to_mb(250_000.0), Reading::Int(262_144));
        assert_eq!(mib_to_mb(f64::INFINITY), Reading::NotAvailable);
    }
}
