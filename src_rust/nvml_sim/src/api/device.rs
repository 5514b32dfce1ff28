//! Per-device queries of the whole GPU: identity, memory, power and thermals,
//! utilization, clocks and PCIe, modes, processes and topology.

use std::os::raw::{c_char, c_int, c_uint, c_ulong, c_ulonglong};

use nvml_sys::*;

use super::{
    clamp_u32, clamp_u64, gpu_only, not_in_mig_mode, on_device, put, put_pair, put_str,
    struct_version, supported_if, R,
};
use crate::fns::Fn;
use crate::sim::{Device, Metric, Sim, MIB};

// ---------------------------------------------------------------- identity

device_queries! {
    nvmlDeviceGetUUID(uuid: *mut c_char, length: c_uint) |_, _, d| put_str(uuid, length, &d.uuid);
    nvmlDeviceGetName(name: *mut c_char, length: c_uint) |_, _, d| put_str(name, length, &d.name);
    nvmlDeviceGetSerial(serial: *mut c_char, length: c_uint)
        |_, _, d| put_str(serial, length, &d.serial);
    nvmlDeviceGetVbiosVersion(v: *mut c_char, length: c_uint)
        |s, _, d| put_str(v, length, &s.model_of(d).vbios);
    nvmlDeviceGetBrand(brand: *mut nvmlBrandType_t) |s, _, d| put(brand, s.model_of(d).brand);
    nvmlDeviceGetIndex(index: *mut c_uint) |_, _, d| put(index, d.gpu as c_uint);
    nvmlDeviceGetMinorNumber(minor: *mut c_uint) |_, _, d| put(minor, d.gpu as c_uint);
    nvmlDeviceGetBoardId(id: *mut c_uint)
        |_, _, d| put(id, (d.pci.bus << 8) | (d.pci.domain << 16));
    nvmlDeviceGetPciInfo_v3 as nvmlDeviceGetPciInfo(pci: *mut nvmlPciInfo_t) |_, _, d| put(pci, d.pci);
    nvmlDeviceGetCudaComputeCapability(major: *mut c_int, minor: *mut c_int) |s, _, d| {
        if major.is_null() || minor.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let (a, b) = s.model_of(d).compute_capability;
        put(major, a)?;
        put(minor, b)
    };
    nvmlDeviceGetArchitecture(arch: *mut nvmlDeviceArchitecture_t)
        |s, _, d| put(arch, s.model_of(d).architecture);
    nvmlDeviceGetVirtualizationMode(mode: *mut c_uint)
        |_, _, _| put(mode, NVML_GPU_VIRTUALIZATION_MODE_NONE);
}

// ---------------------------------------------------------------- memory

/// A GPU without dedicated memory (an integrated GPU sharing the host's) has no
/// memory info to report.
fn dedicated_memory(d: &Device) -> R {
    supported_if(d.memory_total != 0)
}

fn memory_used(s: &Sim, d: &Device) -> u64 {
    let cap = d.memory_total - d.memory_reserved;
    clamp_u64(s.sample(d, Metric::MemoryUsed) * MIB as f64).min(cap)
}

device_queries! {
    nvmlDeviceGetMemoryInfo(memory: *mut nvmlMemory_t) |s, _, d| {
        dedicated_memory(d)?;
        // v1 counts the driver's reservation as used.
        let used = d.memory_reserved + memory_used(s, d);
        let total = d.memory_total;
        put(memory, nvmlMemory_t { total, free: total - used, used })
    };
    nvmlDeviceGetMemoryInfo_v2 as nvmlDeviceGetMemoryInfo(memory: *mut nvmlMemory_v2_t) |s, _, d| {
        let version = struct_version(memory, &[nvmlMemory_v2])?;
        dedicated_memory(d)?;
        let used = memory_used(s, d);
        let (total, reserved) = (d.memory_total, d.memory_reserved);
        let free = total - reserved - used;
        put(memory, nvmlMemory_v2_t { version, total, reserved, free, used })
    };
    nvmlDeviceGetBAR1MemoryInfo(bar1: *mut nvmlBAR1Memory_t) |s, _, d| {
        let total = s.model_of(d).bar1_mib.ok_or(NVML_ERROR_NOT_SUPPORTED)? * MIB;
        let used = clamp_u64(s.sample(d, Metric::Bar1Used) * MIB as f64).min(total);
        put(bar1, nvmlBAR1Memory_t { bar1Total: total, bar1Free: total - used, bar1Used: used })
    };
}

// ---------------------------------------------------------------- power and thermals

pub(super) fn limit_mw(s: &Sim, d: &Device) -> c_uint {
    clamp_u32(s.model_of(d).power_limit_w * 1000.0)
}

/// Energy in mJ since init, as if the GPU drew half its limit all along.
pub(super) fn energy_mj(s: &Sim, d: &Device) -> c_ulonglong {
    let half_limit_mw = s.model_of(d).power_limit_w * 500.0;
    clamp_u64(half_limit_mw * s.elapsed_ns() as f64 / 1e9)
}

/// A query of the whole GPU answering `value(s, d)`.
unsafe fn gpu_value<T>(
    device: nvmlDevice_t,
    f: Fn,
    out: *mut T,
    value: impl FnOnce(&Sim, &Device) -> T,
) -> nvmlReturn_t {
    on_device(device, f, |s, _, d| {
        gpu_only(d)?;
        put(out, value(s, d))
    })
}

/// Exports answering one value of the whole GPU (MIG devices: NOT_SUPPORTED).
macro_rules! gpu_values {
    ($($name:ident($out:ty) |$s:pat_param, $d:pat_param| $v:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, out: *mut $out) -> nvmlReturn_t {
            gpu_value(device, Fn::$name, out, |$s, $d| $v)
        }
    )*};
}

gpu_values! {
    nvmlDeviceGetPowerUsage(c_uint) |s, d| clamp_u32(s.sample(d, Metric::Power) * 1000.0);
    nvmlDeviceGetPowerManagementLimit(c_uint) |s, d| limit_mw(s, d);
    nvmlDeviceGetPowerManagementDefaultLimit(c_uint) |s, d| limit_mw(s, d);
    nvmlDeviceGetEnforcedPowerLimit(c_uint) |s, d| limit_mw(s, d);
    nvmlDeviceGetTotalEnergyConsumption(c_ulonglong) |s, d| energy_mj(s, d);
    nvmlDeviceGetPerformanceState(nvmlPstates_t) |_, _| NVML_PSTATE_0;
    nvmlDeviceGetCurrentClocksEventReasons(c_ulonglong) |_, _| 0;
    nvmlDeviceGetMaxPcieLinkGeneration(c_uint) |s, d| s.model_of(d).pcie_gen;
    nvmlDeviceGetMaxPcieLinkWidth(c_uint) |s, d| s.model_of(d).pcie_width;
    nvmlDeviceGetCurrPcieLinkGeneration(c_uint) |s, d| s.model_of(d).pcie_gen;
    nvmlDeviceGetCurrPcieLinkWidth(c_uint) |s, d| s.model_of(d).pcie_width;
    nvmlDeviceGetDisplayMode(c_uint) |_, d| d.display as c_uint;
    nvmlDeviceGetDisplayActive(c_uint) |_, d| d.display as c_uint;
    nvmlDeviceGetPersistenceMode(c_uint) |_, d| d.persistence as c_uint;
}

device_queries! {
    nvmlDeviceGetPowerManagementLimitConstraints(min: *mut c_uint, max: *mut c_uint) |s, _, d| {
        gpu_only(d)?;
        if min.is_null() || max.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let m = s.model_of(d);
        put(min, clamp_u32(m.power_min_w * 1000.0))?;
        put(max, clamp_u32(m.power_max_w * 1000.0))
    };
    nvmlDeviceGetTemperature(sensor: c_uint, temp: *mut c_uint) |s, _, d| {
        gpu_only(d)?;
        if sensor != NVML_TEMPERATURE_GPU {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        put(temp, clamp_u32(s.sample(d, Metric::Temperature)))
    };
    nvmlDeviceGetTemperatureThreshold(kind: c_uint, temp: *mut c_uint) |s, _, d| {
        gpu_only(d)?;
        let thresholds = &s.model_of(d).temp_thresholds_c;
        match thresholds.get(kind as usize) {
            Some(&t) if t != 0 => put(temp, t),
            _ => Err(NVML_ERROR_NOT_SUPPORTED),
        }
    };
    nvmlDeviceGetFanSpeed(speed: *mut c_uint) |s, _, d| {
        gpu_only(d)?;
        supported_if(s.model_of(d).has_fan)?;
        put(speed, clamp_u32(s.sample(d, Metric::Fan)))
    };
}

// ---------------------------------------------------------------- utilization

/// Encoder and decoder utilization: a percentage and the sampling period (µs).
unsafe fn codec(s: &Sim, d: &Device, m: Metric, util: *mut c_uint, period: *mut c_uint) -> R {
    not_in_mig_mode(d)?;
    if util.is_null() || period.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    put(util, clamp_u32(s.sample(d, m)).min(100))?;
    put(period, 167_000)
}

device_queries! {
    nvmlDeviceGetEncoderUtilization(util: *mut c_uint, period_us: *mut c_uint)
        |s, _, d| codec(s, d, Metric::UtilEncoder, util, period_us);
    nvmlDeviceGetDecoderUtilization(util: *mut c_uint, period_us: *mut c_uint)
        |s, _, d| codec(s, d, Metric::UtilDecoder, util, period_us);
}

device_queries! {
    nvmlDeviceGetUtilizationRates(util: *mut nvmlUtilization_t) |s, _, d| {
        not_in_mig_mode(d)?;
        let gpu = clamp_u32(s.sample(d, Metric::UtilGpu)).min(100);
        let memory = clamp_u32(s.sample(d, Metric::UtilMemory)).min(100);
        put(util, nvmlUtilization_t { gpu, memory })
    };
    nvmlDeviceGetPcieThroughput(counter: c_uint, value: *mut c_uint) |s, _, d| {
        gpu_only(d)?;
        let m = match counter {
            NVML_PCIE_UTIL_TX_BYTES => Metric::PcieTx,
            NVML_PCIE_UTIL_RX_BYTES => Metric::PcieRx,
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        put(value, clamp_u32(s.sample(d, m)))
    };
}

// ---------------------------------------------------------------- clocks

fn clock_metric(kind: c_uint) -> Result<Metric, nvmlReturn_t> {
    Ok(match kind {
        NVML_CLOCK_GRAPHICS => Metric::ClockGraphics,
        NVML_CLOCK_SM => Metric::ClockSm,
        NVML_CLOCK_MEM => Metric::ClockMemory,
        NVML_CLOCK_VIDEO => Metric::ClockVideo,
        _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
    })
}

/// A max clock of 0 is a clock the board does not report (GB10's memory clock):
/// every query of that clock answers NOT_SUPPORTED.
fn max_clock(s: &Sim, d: &Device, kind: c_uint) -> Result<c_uint, nvmlReturn_t> {
    gpu_only(d)?;
    clock_metric(kind)?;
    match s.model_of(d).max_clocks_mhz[kind as usize] {
        0 => Err(NVML_ERROR_NOT_SUPPORTED),
        mhz => Ok(mhz),
    }
}

/// The clock now, never above its max.
fn current_clock(s: &Sim, d: &Device, kind: c_uint) -> Result<c_uint, nvmlReturn_t> {
    let max = max_clock(s, d, kind)?;
    Ok(clamp_u32(s.sample(d, clock_metric(kind)?)).min(max))
}

device_queries! {
    nvmlDeviceGetClockInfo(kind: c_uint, clock: *mut c_uint)
        |s, _, d| put(clock, current_clock(s, d, kind)?);
    nvmlDeviceGetMaxClockInfo(kind: c_uint, clock: *mut c_uint)
        |s, _, d| put(clock, max_clock(s, d, kind)?);
    nvmlDeviceGetClock(kind: c_uint, id: c_uint, clock: *mut c_uint) |s, _, d| {
        let max = max_clock(s, d, kind)?;
        let v = match id {
            NVML_CLOCK_ID_CURRENT => current_clock(s, d, kind)?,
            NVML_CLOCK_ID_APP_CLOCK_TARGET
            | NVML_CLOCK_ID_APP_CLOCK_DEFAULT
            | NVML_CLOCK_ID_CUSTOMER_BOOST_MAX => max,
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        put(clock, v)
    };
}

// ---------------------------------------------------------------- modes and processes

device_queries! {
    nvmlDeviceGetComputeMode(mode: *mut c_uint) |_, _, _| put(mode, NVML_COMPUTEMODE_DEFAULT);
    nvmlDeviceGetEccMode(current: *mut c_uint, pending: *mut c_uint)
        |_, _, d| put_pair(current, pending, d.ecc as c_uint);
    // Simulated GPUs run nothing: zero processes, whichever version of the call.
    nvmlDeviceGetComputeRunningProcesses_v3 as nvmlDeviceGetComputeRunningProcesses(
        count: *mut c_uint, _infos: *mut nvmlProcessInfo_t) |_, _, _| put(count, 0);
    nvmlDeviceGetGraphicsRunningProcesses_v3 as nvmlDeviceGetGraphicsRunningProcesses(
        count: *mut c_uint, _infos: *mut nvmlProcessInfo_t) |_, _, _| put(count, 0);
}

// ---------------------------------------------------------------- topology

unsafe fn fill_bits(set: *mut c_ulong, words: c_uint, bits: impl Iterator<Item = u32>) -> R {
    if set.is_null() || words == 0 {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let out = std::slice::from_raw_parts_mut(set, words as usize);
    out.fill(0);
    let width = c_ulong::BITS;
    for b in bits {
        if let Some(w) = out.get_mut((b / width) as usize) {
            *w |= 1 << (b % width);
        }
    }
    Ok(())
}

device_queries! {
    nvmlDeviceGetNumaNodeId(node: *mut c_uint) |_, _, d| put(node, d.numa_node);
    nvmlDeviceGetCpuAffinityWithinScope as nvmlDeviceGetCpuAffinity(
        size: c_uint, set: *mut c_ulong, _scope: c_uint) |_, _, d| fill_bits(set, size, d.cpus.clone());
    nvmlDeviceGetMemoryAffinity(size: c_uint, set: *mut c_ulong, _scope: c_uint)
        |_, _, d| fill_bits(set, size, std::iter::once(d.numa_node));
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCpuAffinity(
    device: nvmlDevice_t,
    size: c_uint,
    set: *mut c_ulong,
) -> nvmlReturn_t {
    nvmlDeviceGetCpuAffinityWithinScope(device, size, set, NVML_AFFINITY_SCOPE_NODE)
}

aliases! {
    nvmlDeviceGetPciInfo_v2(device: nvmlDevice_t, pci: *mut nvmlPciInfo_t) = nvmlDeviceGetPciInfo_v3;
    nvmlDeviceGetPciInfo(device: nvmlDevice_t, pci: *mut nvmlPciInfo_t) = nvmlDeviceGetPciInfo_v3;
    nvmlDeviceGetCurrentClocksThrottleReasons(device: nvmlDevice_t, reasons: *mut c_ulonglong)
        = nvmlDeviceGetCurrentClocksEventReasons;
    nvmlDeviceGetComputeRunningProcesses_v2(device: nvmlDevice_t, count: *mut c_uint,
        infos: *mut nvmlProcessInfo_t) = nvmlDeviceGetComputeRunningProcesses_v3;
    nvmlDeviceGetComputeRunningProcesses(device: nvmlDevice_t, count: *mut c_uint,
        infos: *mut nvmlProcessInfo_t) = nvmlDeviceGetComputeRunningProcesses_v3;
    nvmlDeviceGetGraphicsRunningProcesses_v2(device: nvmlDevice_t, count: *mut c_uint,
        infos: *mut nvmlProcessInfo_t) = nvmlDeviceGetGraphicsRunningProcesses_v3;
    nvmlDeviceGetGraphicsRunningProcesses(device: nvmlDevice_t, count: *mut c_uint,
        infos: *mut nvmlProcessInfo_t) = nvmlDeviceGetGraphicsRunningProcesses_v3;
}

// Compile-time check that the exports match the shared signatures in nvml_sys.
const _: nvmlDeviceGetString_fn = nvmlDeviceGetUUID;
const _: nvmlDeviceGetMemoryInfo_fn = nvmlDeviceGetMemoryInfo;
const _: nvmlDeviceGetMemoryInfo_v2_fn = nvmlDeviceGetMemoryInfo_v2;
const _: nvmlDeviceGetBAR1MemoryInfo_fn = nvmlDeviceGetBAR1MemoryInfo;
const _: nvmlDeviceGetUint_fn = nvmlDeviceGetPowerUsage;
const _: nvmlDeviceGetUtilizationRates_fn = nvmlDeviceGetUtilizationRates;
const _: nvmlDeviceGetCodecUtilization_fn = nvmlDeviceGetEncoderUtilization;
const _: nvmlDeviceGetTemperature_fn = nvmlDeviceGetTemperature;
const _: nvmlDeviceGetClockInfo_fn = nvmlDeviceGetClockInfo;
const _: nvmlDeviceGetPcieThroughput_fn = nvmlDeviceGetPcieThroughput;
const _: nvmlDeviceGetUint_fn = nvmlDeviceGetPowerManagementLimit;
const _: nvmlDeviceGetUlonglong_fn = nvmlDeviceGetCurrentClocksEventReasons;
const _: nvmlDeviceGetPciInfo_v3_fn = nvmlDeviceGetPciInfo_v3;
const _: nvmlDeviceGetUlonglong_fn = nvmlDeviceGetTotalEnergyConsumption;
