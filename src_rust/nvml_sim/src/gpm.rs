//! GPU Performance Monitoring: sample buffers (nvmlGpmSampleAlloc / Free),
//! samples of a GPU or of a MIG GPU instance (nvmlGpmSampleGet on a GPU or MIG
//! device handle, nvmlGpmMigSampleGet on the GPU with a GPU instance id), and
//! the metrics between two samples (nvmlGpmMetricsGet). Support follows the
//! model (Hopper and later, `gpm` in the scenario).
//!
//! Every sample taken of a device advances that device's GPM sample number; a
//! metric between two samples of one device is its generator's value at the
//! later sample's number, so the values repeat from run to run whatever the
//! time between the samples, as long as they are at least the driver's sample
//! refresh (100 ms, nvml.h) apart. Closer samples read the same snapshot of
//! the counters: the scenario's `[choices] gpm_close_samples` says whether
//! the metrics are then 0 or the call fails.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_uint};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use nvml_sys::*;

use crate::api::{guard, on_device, put, put_with, sim, struct_version, R};
use crate::fns::Fn;
use crate::sim::{Device, Metric, Sim};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Taken {
    /// The machine's address: a sample is only good on the machine it was taken of.
    sim: usize,
    device: usize,
    n: u64,
    /// The machine's clock when the sample was taken.
    at_ns: u64,
}

/// nvml.h: samples should be more than 100 ms apart, the driver's refresh.
const REFRESH_NS: u64 = 100_000_000;

struct Sample {
    live: AtomicBool,
    taken: Mutex<Option<Taken>>,
}

/// Every sample buffer allocated, by id (its index + 1; ids are never
/// reused, a freed one stays dead). Handles are ids in pointer clothing,
/// never dereferenced, so a freed or made-up handle is an INVALID_ARGUMENT,
/// not a crash; a lookup is an index under a read lock.
fn samples() -> &'static RwLock<Vec<Sample>> {
    static SAMPLES: OnceLock<RwLock<Vec<Sample>>> = OnceLock::new();
    SAMPLES.get_or_init(Default::default)
}

fn id_of(h: nvmlGpmSample_t) -> usize {
    (h as usize) >> 4
}

fn with_sample<T>(h: nvmlGpmSample_t, f: impl FnOnce(&Sample) -> T) -> Result<T, nvmlReturn_t> {
    let all = samples().read().unwrap_or_else(|e| e.into_inner());
    match id_of(h).checked_sub(1).and_then(|i| all.get(i)) {
        Some(s) if s.live.load(Ordering::Acquire) => Ok(f(s)),
        _ => Err(NVML_ERROR_INVALID_ARGUMENT),
    }
}

/// Takes a sample of device `i` into `h`.
fn take(s: &Sim, i: usize, h: nvmlGpmSample_t) -> R {
    let d = &s.devices[i];
    // Found before the count moves: a bad handle takes no sample.
    with_sample(h, |sample| {
        let n = d.gpm_samples.fetch_add(1, Ordering::Relaxed) + 1;
        *sample.taken.lock().unwrap_or_else(|e| e.into_inner()) = Some(Taken {
            sim: s as *const Sim as usize,
            device: i,
            n,
            at_ns: s.elapsed_ns(),
        });
    })
}

fn taken(h: nvmlGpmSample_t) -> Result<Taken, nvmlReturn_t> {
    with_sample(h, |sample| {
        *sample.taken.lock().unwrap_or_else(|e| e.into_inner())
    })?
    .ok_or(NVML_ERROR_INVALID_ARGUMENT)
}

fn supported(s: &Sim, d: &Device) -> R {
    if s.model_of(d).gpm {
        Ok(())
    } else {
        Err(NVML_ERROR_NOT_SUPPORTED)
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpmQueryDeviceSupport(
    device: nvmlDevice_t,
    support: *mut nvmlGpmSupport_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlGpmQueryDeviceSupport, |s, _, d| {
        let version = struct_version(support, &[NVML_GPM_SUPPORT_VERSION])?;
        put(
            support,
            nvmlGpmSupport_t {
                version,
                isSupportedDevice: c_uint::from(s.model_of(d).gpm),
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpmSampleAlloc(out: *mut nvmlGpmSample_t) -> nvmlReturn_t {
    guard(|| {
        sim()?;
        put_with(out, || {
            let mut all = samples().write().unwrap_or_else(|e| e.into_inner());
            all.push(Sample {
                live: AtomicBool::new(true),
                taken: Mutex::new(None),
            });
            (all.len() << 4) as nvmlGpmSample_t
        })
    })
}

/// Works with NVML initialised or not, so a buffer can always be given back.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpmSampleFree(sample: nvmlGpmSample_t) -> nvmlReturn_t {
    guard(|| {
        let was_live = with_sample(sample, |s| s.live.swap(false, Ordering::AcqRel))?;
        if was_live {
            Ok(())
        } else {
            Err(NVML_ERROR_INVALID_ARGUMENT)
        }
    })
}

device_queries! {
    /// A sample of a GPU, or of the GPU instance of a MIG device handle.
    nvmlGpmSampleGet(sample: nvmlGpmSample_t) |s, i, d| {
        supported(s, d)?;
        take(s, i, sample)
    };
    /// A sample of GPU instance `gpu_instance_id` of a GPU in MIG mode.
    nvmlGpmMigSampleGet(gpu_instance_id: c_uint, sample: nvmlGpmSample_t) |s, _, d| {
        if d.mig.is_some() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        supported(s, d)?;
        if !d.mig_enabled {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        let mig = d
            .mig_devices
            .iter()
            .copied()
            .find(|&m| {
                let r = s.devices[m].mig.expect("a MIG device");
                s.gpu_instances[r.gpu_instance].id == gpu_instance_id
            })
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        take(s, mig, sample)
    };
}

/// A metric the simulator reports: its scenario metric, whether it is a
/// percentage, and NVML's names for it.
fn metric(id: c_uint) -> Option<(Metric, bool, &'static CStr, &'static CStr)> {
    Some(match id {
        NVML_GPM_METRIC_GRAPHICS_UTIL => (
            Metric::GpmGraphics,
            true,
            c"gr_util",
            c"graphics engine activity",
        ),
        NVML_GPM_METRIC_SM_UTIL => (Metric::GpmSm, true, c"sm_util", c"SM activity"),
        NVML_GPM_METRIC_SM_OCCUPANCY => (
            Metric::GpmSmOccupancy,
            true,
            c"sm_occupancy",
            c"SM occupancy",
        ),
        NVML_GPM_METRIC_ANY_TENSOR_UTIL => (
            Metric::GpmTensor,
            true,
            c"any_tensor_util",
            c"tensor pipe activity",
        ),
        NVML_GPM_METRIC_DRAM_BW_UTIL => (
            Metric::GpmDram,
            true,
            c"dram_bw_util",
            c"DRAM bandwidth utilization",
        ),
        NVML_GPM_METRIC_PCIE_TX_PER_SEC => {
            (Metric::GpmPcieTx, false, c"pcie_tx", c"PCIe transmit rate")
        }
        NVML_GPM_METRIC_PCIE_RX_PER_SEC => {
            (Metric::GpmPcieRx, false, c"pcie_rx", c"PCIe receive rate")
        }
        NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC => (
            Metric::GpmNvlinkTx,
            false,
            c"nvlink_tx",
            c"NVLink transmit rate, all links",
        ),
        NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC => (
            Metric::GpmNvlinkRx,
            false,
            c"nvlink_rx",
            c"NVLink receive rate, all links",
        ),
        _ => return None,
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpmMetricsGet(get: *mut nvmlGpmMetricsGet_t) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        struct_version(get, &[NVML_GPM_METRICS_GET_VERSION])?;
        let n = (*get).numMetrics as usize;
        if n == 0 || n > NVML_GPM_METRIC_MAX {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let (first, second) = (taken((*get).sample1)?, taken((*get).sample2)?);
        let here = s as *const Sim as usize;
        if first.sim != here
            || second.sim != here
            || first.device != second.device
            || second.n <= first.n
        {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let d = &s.devices[second.device];
        s.enter(d, Fn::nvmlGpmMetricsGet)?;
        // Two reads of one snapshot: nothing moved between them.
        let same_snapshot = second.at_ns.saturating_sub(first.at_ns) < REFRESH_NS;
        if same_snapshot {
            s.choices.gpm_close_samples?;
        }
        // Through a raw pointer: the caller's array may be longer or shorter
        // than this header's; only the first `numMetrics` entries are touched.
        let entries = std::ptr::addr_of_mut!((*get).metrics) as *mut nvmlGpmMetric_t;
        for k in 0..n {
            let e = &mut *entries.add(k);
            match metric(e.metricId) {
                Some((m, percent, short, long)) => {
                    let v = if same_snapshot {
                        0.0
                    } else {
                        d.gens[m as usize].at(d.seed, second.n)
                    };
                    e.value = if percent {
                        v.clamp(0.0, 100.0)
                    } else {
                        v.max(0.0)
                    };
                    e.nvmlReturn = NVML_SUCCESS;
                    let unit: &CStr = if percent { c"%" } else { c"MiB/sec" };
                    e.metricInfo = nvmlGpmMetricInfo_t {
                        shortName: short.as_ptr() as *mut c_char,
                        longName: long.as_ptr() as *mut c_char,
                        unit: unit.as_ptr() as *mut c_char,
                    };
                }
                None => {
                    e.value = 0.0;
                    e.nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
                }
            }
        }
        Ok(())
    })
}

const _: nvmlGpmQueryDeviceSupport_fn = nvmlGpmQueryDeviceSupport;
const _: nvmlGpmSampleAlloc_fn = nvmlGpmSampleAlloc;
const _: nvmlGpmSampleFree_fn = nvmlGpmSampleFree;
const _: nvmlGpmSampleGet_fn = nvmlGpmSampleGet;
const _: nvmlGpmMigSampleGet_fn = nvmlGpmMigSampleGet;
const _: nvmlGpmMetricsGet_fn = nvmlGpmMetricsGet;
