//! One device's readings for one tick, and the NVML calls that produce them.
//! Units follow HashiCorp's Go plugin: W, %, C, MiB and error counts.

use std::os::raw::{c_uint, c_ulonglong};

use nvml_sys::*;

use crate::nvml::{Handle, Nvml};

/// A stat value in one of the Go plugin's three forms, or a float (GPM).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Reading {
    /// NVML could not tell (error, not supported, timed out): "N/A".
    #[default]
    NotAvailable,
    /// An integer numerator.
    Int(i64),
    /// A numerator/denominator pair (used / total, usage / limit).
    Ratio(i64, i64),
    /// A float numerator (GPM percentages, two decimals).
    Float(f64),
}

/// GPM stats per device, in the order of `vocabulary::GPM_STATS`.
pub type GpmReadings = [Reading; crate::gpm::GPM_STATS];

/// Extra readings sent only when extended stats are on.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Extended {
    pub sm_clock_mhz: Reading,
    pub memory_clock_mhz: Reading,
    pub energy_mj: Reading,
    pub pcie_tx_kbps: Reading,
    pub pcie_rx_kbps: Reading,
    pub throttle_reasons: Reading,
    /// Critical XID errors since the engine started; a MIG instance shows
    /// its parent GPU's count (see xid.rs).
    pub xid_count: Reading,
    /// GPM metrics; None on a device without GPM (nothing is sent for it).
    pub gpm: Option<GpmReadings>,
}

#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct DeviceSample {
    pub power_w: Reading,
    pub gpu_utilization: Reading,
    pub memory_utilization: Reading,
    pub encoder_utilization: Reading,
    pub decoder_utilization: Reading,
    pub temperature_c: Reading,
    pub memory_mib: Reading,
    pub bar1_mib: Reading,
    pub ecc_l1: Reading,
    pub ecc_l2: Reading,
    pub ecc_device: Reading,
    pub extended: Option<Extended>,
}

impl DeviceSample {
    /// Every value "N/A": a device that did not answer in time or has no handle.
    pub fn unavailable(extended: bool) -> DeviceSample {
        DeviceSample {
            extended: extended.then(Extended::default),
            ..DeviceSample::default()
        }
    }
}

/// How a device is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    pub extended: bool,
    /// Read the ECC counters (and energy) with one nvmlDeviceGetFieldValues
    /// call instead of nvmlDeviceGetDetailedEccErrors (+ energy call). Saves
    /// a call only when extended stats add energy: see EngineConfig.
    pub batched: bool,
}

const MIB: u64 = 1 << 20;

fn int(v: impl Into<i64>) -> Reading {
    Reading::Int(v.into())
}

impl Nvml {
    /// Reads every stat of one device. Each failed call makes only its own
    /// values "N/A"; nothing here returns an error.
    pub fn read_device(&self, dev: Handle, opts: ReadOptions) -> DeviceSample {
        let h = dev.0;
        let mut s = DeviceSample::unavailable(opts.extended);
        // SAFETY (all calls below): h is a handle NVML gave us, every out
        // pointer is a live local of the type the header declares.
        unsafe {
            if let Some(f) = self.memory_info {
                let mut m = nvmlMemory_t::default();
                match f(h, &mut m) {
                    NVML_SUCCESS => {
                        s.memory_mib =
                            Reading::Ratio((m.used / MIB) as i64, (m.total / MIB) as i64);
                    }
                    NVML_ERROR_NOT_SUPPORTED => {
                        if let Some((used, total)) = crate::host_memory::host_memory() {
                            s.memory_mib =
                                Reading::Ratio((used / MIB) as i64, (total / MIB) as i64);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(f) = self.utilization_rates {
                let mut u = nvmlUtilization_t::default();
                if f(h, &mut u) == NVML_SUCCESS {
                    s.gpu_utilization = int(u.gpu);
                    s.memory_utilization = int(u.memory);
                }
            }
            let (mut v, mut period) = (0 as c_uint, 0 as c_uint);
            if let Some(f) = self.encoder_utilization {
                if f(h, &mut v, &mut period) == NVML_SUCCESS {
                    s.encoder_utilization = int(v);
                }
            }
            if let Some(f) = self.decoder_utilization {
                if f(h, &mut v, &mut period) == NVML_SUCCESS {
                    s.decoder_utilization = int(v);
                }
            }
            if let Some(f) = self.temperature {
                if f(h, NVML_TEMPERATURE_GPU, &mut v) == NVML_SUCCESS {
                    s.temperature_c = int(v);
                }
            }
            if let (Some(usage), Some(limit)) = (self.power_usage, self.power_limit) {
                let mut lim: c_uint = 0;
                if usage(h, &mut v) == NVML_SUCCESS && limit(h, &mut lim) == NVML_SUCCESS {
                    s.power_w = Reading::Ratio(i64::from(v / 1000), i64::from(lim / 1000));
                }
            }
            if let Some(f) = self.bar1_memory_info {
                let mut b = nvmlBAR1Memory_t::default();
                if f(h, &mut b) == NVML_SUCCESS {
                    s.bar1_mib =
                        Reading::Ratio((b.bar1Used / MIB) as i64, (b.bar1Total / MIB) as i64);
                }
            }
            let mut energy = Reading::NotAvailable;
            // Without nvmlDeviceGetDetailedEccErrors (deprecated in NVML 13),
            // the field values are the only way to the ECC counters.
            let fields = opts.batched || self.detailed_ecc.is_none();
            if !(fields && self.read_fields(h, opts.extended, &mut s, &mut energy)) {
                self.read_ecc_single(h, &mut s);
                if opts.extended {
                    energy = self.read_energy_single(h);
                }
            }
            if let Some(x) = s.extended.as_mut() {
                x.energy_mj = energy;
                self.read_extended(h, x);
            }
        }
        s
    }

    /// The batched path; false when the library cannot answer field values
    /// at all, so the caller falls back to single calls.
    unsafe fn read_fields(
        &self,
        h: nvmlDevice_t,
        extended: bool,
        s: &mut DeviceSample,
        energy: &mut Reading,
    ) -> bool {
        let Some(f) = self.field_values else {
            return false;
        };
        let mut fv = [
            nvmlFieldValue_t::request(NVML_FI_DEV_ECC_SBE_VOL_L1),
            nvmlFieldValue_t::request(NVML_FI_DEV_ECC_SBE_VOL_L2),
            nvmlFieldValue_t::request(NVML_FI_DEV_ECC_SBE_VOL_DEV),
            // The energy counter joins the batch when extended.
            nvmlFieldValue_t::request(NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION),
        ];
        let n = if extended { 4 } else { 3 };
        let code = f(h, n, fv.as_mut_ptr());
        if code == NVML_ERROR_FUNCTION_NOT_FOUND || code == NVML_ERROR_NOT_SUPPORTED {
            return false;
        }
        if code == NVML_SUCCESS {
            let r = |v: &nvmlFieldValue_t| v.as_i64().map_or(Reading::NotAvailable, Reading::Int);
            s.ecc_l1 = r(&fv[0]);
            s.ecc_l2 = r(&fv[1]);
            s.ecc_device = r(&fv[2]);
            if extended {
                *energy = r(&fv[3]);
            }
        }
        true
    }

    unsafe fn read_ecc_single(&self, h: nvmlDevice_t, s: &mut DeviceSample) {
        if let Some(f) = self.detailed_ecc {
            let mut e = nvmlEccErrorCounts_t::default();
            if f(
                h,
                NVML_MEMORY_ERROR_TYPE_CORRECTED,
                NVML_VOLATILE_ECC,
                &mut e,
            ) == NVML_SUCCESS
            {
                s.ecc_l1 = Reading::Int(e.l1Cache as i64);
                s.ecc_l2 = Reading::Int(e.l2Cache as i64);
                s.ecc_device = Reading::Int(e.deviceMemory as i64);
            }
        }
    }

    unsafe fn read_energy_single(&self, h: nvmlDevice_t) -> Reading {
        let mut e: c_ulonglong = 0;
        match self.total_energy {
            Some(f) if f(h, &mut e) == NVML_SUCCESS => Reading::Int(e as i64),
            _ => Reading::NotAvailable,
        }
    }

    unsafe fn read_extended(&self, h: nvmlDevice_t, x: &mut Extended) {
        let mut v: c_uint = 0;
        if let Some(f) = self.clock_info {
            if f(h, NVML_CLOCK_SM, &mut v) == NVML_SUCCESS {
                x.sm_clock_mhz = int(v);
            }
            if f(h, NVML_CLOCK_MEM, &mut v) == NVML_SUCCESS {
                x.memory_clock_mhz = int(v);
            }
        }
        if let Some(f) = self.pcie_throughput {
            if f(h, NVML_PCIE_UTIL_TX_BYTES, &mut v) == NVML_SUCCESS {
                x.pcie_tx_kbps = int(v);
            }
            if f(h, NVML_PCIE_UTIL_RX_BYTES, &mut v) == NVML_SUCCESS {
                x.pcie_rx_kbps = int(v);
            }
        }
        if let Some(f) = self.clocks_event_reasons {
            let mut r: c_ulonglong = 0;
            if f(h, &mut r) == NVML_SUCCESS {
                x.throttle_reasons = Reading::Int(r as i64);
            }
        }
    }
}
