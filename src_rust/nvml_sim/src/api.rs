//! The exported NVML entry points. Every one runs its body under `catch_unwind` (a
//! panic becomes NVML_ERROR_UNKNOWN, never an unwind into C), checks that NVML is
//! initialized and that handles point into the current machine, and checks every
//! output pointer for null before writing.
#![allow(non_snake_case, non_upper_case_globals, clippy::missing_safety_doc)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uint, c_ulong, c_ulonglong};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use nvml_sys::*;

use crate::events;
use crate::fns::{Fn, SysFn};
use crate::sim::{ComputeInstance, Device, GpuInstance, Metric, Sim, MIB};
use crate::state;

pub(crate) type R = Result<(), nvmlReturn_t>;

#[inline]
pub(crate) fn guard(f: impl FnOnce() -> R) -> nvmlReturn_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => NVML_SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => NVML_ERROR_UNKNOWN,
    }
}

/// The machine of the current session; Err while uninitialized or while a
/// driver_gone fault holds (every call but nvmlShutdown and nvmlErrorString).
#[inline]
pub(crate) fn sim() -> Result<&'static Sim, nvmlReturn_t> {
    let s = state::current().ok_or(NVML_ERROR_UNINITIALIZED)?;
    match s.gone() {
        Some(code) => Err(code),
        None => Ok(s),
    }
}

/// Index of the element of `items` that `p` points at, if it points exactly at one.
#[inline]
fn index_in<T>(items: &[T], p: usize) -> Option<usize> {
    let base = items.as_ptr() as usize;
    let size = std::mem::size_of::<T>();
    let off = p.checked_sub(base)?;
    (off % size == 0 && off / size < items.len()).then_some(off / size)
}

#[inline]
pub(crate) fn device(
    s: &'static Sim,
    h: nvmlDevice_t,
) -> Result<(usize, &'static Device), nvmlReturn_t> {
    let i = index_in(&s.devices, h as usize).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    Ok((i, &s.devices[i]))
}

#[inline]
pub(crate) fn device_handle(s: &Sim, i: usize) -> nvmlDevice_t {
    &s.devices[i] as *const Device as nvmlDevice_t
}

fn gpu_instance(
    s: &'static Sim,
    h: nvmlGpuInstance_t,
) -> Result<&'static GpuInstance, nvmlReturn_t> {
    let i = index_in(&s.gpu_instances, h as usize).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    Ok(&s.gpu_instances[i])
}

fn gpu_instance_handle(s: &Sim, i: usize) -> nvmlGpuInstance_t {
    &s.gpu_instances[i] as *const GpuInstance as nvmlGpuInstance_t
}

fn compute_instance(
    s: &'static Sim,
    h: nvmlComputeInstance_t,
) -> Result<&'static ComputeInstance, nvmlReturn_t> {
    let i = index_in(&s.compute_instances, h as usize).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    Ok(&s.compute_instances[i])
}

fn compute_instance_handle(s: &Sim, i: usize) -> nvmlComputeInstance_t {
    &s.compute_instances[i] as *const ComputeInstance as nvmlComputeInstance_t
}

/// The common shape of a per-device query.
#[inline]
pub(crate) fn on_device(
    h: nvmlDevice_t,
    f: Fn,
    body: impl FnOnce(&'static Sim, usize, &'static Device) -> R,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let (i, d) = device(s, h)?;
        s.enter(d, f)?;
        body(s, i, d)
    })
}

#[inline]
pub(crate) unsafe fn put<T>(p: *mut T, v: T) -> R {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    p.write(v);
    Ok(())
}

unsafe fn put_str(buf: *mut c_char, len: c_uint, s: &str) -> R {
    if buf.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let bytes = s.as_bytes();
    if (len as usize) < bytes.len() + 1 {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len());
    *buf.add(bytes.len()) = 0;
    Ok(())
}

unsafe fn get_str<'a>(p: *const c_char) -> Result<&'a str, nvmlReturn_t> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| NVML_ERROR_INVALID_ARGUMENT)
}

/// Queries a MIG device cannot answer (they belong to the whole GPU).
#[inline]
pub(crate) fn gpu_only(d: &Device) -> R {
    if d.mig.is_some() {
        Err(NVML_ERROR_NOT_SUPPORTED)
    } else {
        Ok(())
    }
}

/// Queries nvml.h says are not supported on MIG-enabled GPUs (utilization, encoder
/// and decoder utilization): neither a MIG device nor a GPU in MIG mode answers.
#[inline]
fn not_in_mig_mode(d: &Device) -> R {
    gpu_only(d)?;
    if d.mig_enabled {
        Err(NVML_ERROR_NOT_SUPPORTED)
    } else {
        Ok(())
    }
}

fn clamp_u32(v: f64) -> c_uint {
    v.clamp(0.0, u32::MAX as f64) as c_uint
}

fn clamp_u64(v: f64) -> c_ulonglong {
    v.clamp(0.0, u64::MAX as f64) as c_ulonglong
}

// ---------------------------------------------------------------- init and system

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    guard(|| match state::init(0) {
        NVML_SUCCESS => Ok(()),
        e => Err(e),
    })
}

#[no_mangle]
pub extern "C" fn nvmlInit() -> nvmlReturn_t {
    nvmlInit_v2()
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(flags: c_uint) -> nvmlReturn_t {
    guard(|| match state::init(flags) {
        NVML_SUCCESS => Ok(()),
        e => Err(e),
    })
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    guard(|| match state::shutdown() {
        NVML_SUCCESS => Ok(()),
        e => Err(e),
    })
}

/// NVIDIA's texts (crate::errors), "Unknown Error" for codes without one.
#[no_mangle]
pub extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    crate::errors::text(result).as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        s.enter_system(SysFn::nvmlSystemGetDriverVersion)?;
        put_str(version, length, &s.driver_version)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| put_str(version, length, &sim()?.nvml_version))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(v: *mut c_int) -> nvmlReturn_t {
    guard(|| put(v, sim()?.cuda_version))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(v: *mut c_int) -> nvmlReturn_t {
    nvmlSystemGetCudaDriverVersion(v)
}

/// Not part of NVML: says this library is the simulation and which scenario it runs.
/// The Python driver loader looks for this symbol to tell the simulation from a driver.
#[no_mangle]
pub unsafe extern "C" fn nvmlSimGetScenario(path: *mut c_char, length: c_uint) -> nvmlReturn_t {
    guard(|| {
        let s = state::current()
            .or_else(state::last)
            .ok_or(NVML_ERROR_UNINITIALIZED)?;
        put_str(path, length, &s.path)
    })
}

/// Not part of NVML: how many calls are blocked in a `hang` fault now, those on
/// GPU `gpu` (its index; its handle lookups and its MIG devices' calls included),
/// or the system-level ones (`nvmlDeviceGetCount`, event waits) when `gpu` is -1.
/// Lets a test count exactly the threads a hung GPU holds.
#[no_mangle]
pub unsafe extern "C" fn nvmlSimGetBlockedCalls(gpu: c_int, count: *mut c_uint) -> nvmlReturn_t {
    guard(|| {
        let s = state::current()
            .or_else(state::last)
            .ok_or(NVML_ERROR_UNINITIALIZED)?;
        let which = if gpu < 0 { None } else { Some(gpu as usize) };
        let n = s.blocked_calls(which).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        put(count, n.min(c_uint::MAX as u64) as c_uint)
    })
}

// ---------------------------------------------------------------- enumeration

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        s.enter_system(SysFn::nvmlDeviceGetCount)?;
        put(count, s.gpu_count as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> nvmlReturn_t {
    nvmlDeviceGetCount_v2(count)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        if index as usize >= s.gpu_count {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        s.enter_lookup(&s.devices[index as usize], Fn::nvmlDeviceGetHandleByIndex)?;
        put(device, device_handle(s, index as usize))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    nvmlDeviceGetHandleByIndex_v2(index, device)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let i = s
            .device_by_uuid(get_str(uuid)?)
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        s.enter_lookup(&s.devices[i], Fn::nvmlDeviceGetHandleByUUID)?;
        put(device, device_handle(s, i))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let i = s
            .device_by_bus_id(get_str(bus_id)?)
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        s.enter_lookup(&s.devices[i], Fn::nvmlDeviceGetHandleByPciBusId)?;
        put(device, device_handle(s, i))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    nvmlDeviceGetHandleByPciBusId_v2(bus_id, device)
}

// ---------------------------------------------------------------- identity

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetUUID, |_, _, d| {
        put_str(uuid, length, &d.uuid)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetName, |_, _, d| {
        put_str(name, length, &d.name)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBrand(
    device: nvmlDevice_t,
    brand: *mut nvmlBrandType_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetBrand, |s, _, d| {
        put(brand, s.model_of(d).brand)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetIndex, |_, _, d| {
        put(index, d.gpu as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: nvmlDevice_t,
    minor: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetMinorNumber, |_, _, d| {
        put(minor, d.gpu as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSerial(
    device: nvmlDevice_t,
    serial: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetSerial, |_, _, d| {
        put_str(serial, length, &d.serial)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetVbiosVersion(
    device: nvmlDevice_t,
    v: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetVbiosVersion, |s, _, d| {
        put_str(v, length, &s.model_of(d).vbios)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBoardId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetBoardId, |_, _, d| {
        put(id, (d.pci.bus << 8) | (d.pci.domain << 16))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetPciInfo, |_, _, d| put(pci, d.pci))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    nvmlDeviceGetPciInfo_v3(device, pci)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    nvmlDeviceGetPciInfo_v3(device, pci)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetCudaComputeCapability, |s, _, d| {
        if major.is_null() || minor.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let (a, b) = s.model_of(d).compute_capability;
        put(major, a)?;
        put(minor, b)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetArchitecture(
    device: nvmlDevice_t,
    arch: *mut nvmlDeviceArchitecture_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetArchitecture, |s, _, d| {
        put(arch, s.model_of(d).architecture)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetVirtualizationMode(
    device: nvmlDevice_t,
    mode: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetVirtualizationMode, |_, _, _| {
        put(mode, NVML_GPU_VIRTUALIZATION_MODE_NONE)
    })
}

// ---------------------------------------------------------------- memory

/// A GPU without dedicated memory (an integrated GPU sharing the host's) has no
/// memory info to report.
fn dedicated_memory(d: &Device) -> R {
    if d.memory_total == 0 {
        Err(NVML_ERROR_NOT_SUPPORTED)
    } else {
        Ok(())
    }
}

fn memory_used(s: &Sim, d: &Device) -> u64 {
    let cap = d.memory_total - d.memory_reserved;
    clamp_u64(s.sample(d, Metric::MemoryUsed) * MIB as f64).min(cap)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetMemoryInfo, |s, _, d| {
        dedicated_memory(d)?;
        // v1 counts the driver's reservation as used.
        let used = d.memory_reserved + memory_used(s, d);
        put(
            memory,
            nvmlMemory_t {
                total: d.memory_total,
                free: d.memory_total - used,
                used,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetMemoryInfo, |s, _, d| {
        if memory.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        if (*memory).version != nvmlMemory_v2 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        dedicated_memory(d)?;
        let used = memory_used(s, d);
        put(
            memory,
            nvmlMemory_v2_t {
                version: nvmlMemory_v2,
                total: d.memory_total,
                reserved: d.memory_reserved,
                free: d.memory_total - d.memory_reserved - used,
                used,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBAR1MemoryInfo(
    device: nvmlDevice_t,
    bar1: *mut nvmlBAR1Memory_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetBAR1MemoryInfo, |s, _, d| {
        let total = s.model_of(d).bar1_mib.ok_or(NVML_ERROR_NOT_SUPPORTED)? * MIB;
        let used = clamp_u64(s.sample(d, Metric::Bar1Used) * MIB as f64).min(total);
        put(
            bar1,
            nvmlBAR1Memory_t {
                bar1Total: total,
                bar1Free: total - used,
                bar1Used: used,
            },
        )
    })
}

// ---------------------------------------------------------------- power and thermals

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    device: nvmlDevice_t,
    power: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetPowerUsage, |s, _, d| {
        gpu_only(d)?;
        put(power, clamp_u32(s.sample(d, Metric::Power) * 1000.0))
    })
}

fn limit_mw(s: &Sim, d: &Device) -> c_uint {
    clamp_u32(s.model_of(d).power_limit_w * 1000.0)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetPowerManagementLimit, |s, _, d| {
        gpu_only(d)?;
        put(limit, limit_mw(s, d))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementDefaultLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    on_device(
        device,
        Fn::nvmlDeviceGetPowerManagementDefaultLimit,
        |s, _, d| {
            gpu_only(d)?;
            put(limit, limit_mw(s, d))
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetEnforcedPowerLimit, |s, _, d| {
        gpu_only(d)?;
        put(limit, limit_mw(s, d))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimitConstraints(
    device: nvmlDevice_t,
    min: *mut c_uint,
    max: *mut c_uint,
) -> nvmlReturn_t {
    on_device(
        device,
        Fn::nvmlDeviceGetPowerManagementLimitConstraints,
        |s, _, d| {
            gpu_only(d)?;
            if min.is_null() || max.is_null() {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            let m = s.model_of(d);
            put(min, clamp_u32(m.power_min_w * 1000.0))?;
            put(max, clamp_u32(m.power_max_w * 1000.0))
        },
    )
}

/// Energy in mJ since init, as if the GPU drew half its limit all along.
fn energy_mj(s: &Sim, d: &Device) -> c_ulonglong {
    let half_limit_mw = s.model_of(d).power_limit_w * 500.0;
    clamp_u64(half_limit_mw * s.elapsed_ns() as f64 / 1e9)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> nvmlReturn_t {
    on_device(
        device,
        Fn::nvmlDeviceGetTotalEnergyConsumption,
        |s, _, d| {
            gpu_only(d)?;
            put(energy, energy_mj(s, d))
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: c_uint,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetTemperature, |s, _, d| {
        gpu_only(d)?;
        if sensor != NVML_TEMPERATURE_GPU {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        put(temp, clamp_u32(s.sample(d, Metric::Temperature)))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperatureThreshold(
    device: nvmlDevice_t,
    kind: c_uint,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetTemperatureThreshold, |s, _, d| {
        gpu_only(d)?;
        let t = *s
            .model_of(d)
            .temp_thresholds_c
            .get(kind as usize)
            .ok_or(NVML_ERROR_NOT_SUPPORTED)?;
        if t == 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        put(temp, t)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed(
    device: nvmlDevice_t,
    speed: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetFanSpeed, |s, _, d| {
        gpu_only(d)?;
        if !s.model_of(d).has_fan {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        put(speed, clamp_u32(s.sample(d, Metric::Fan)))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPerformanceState(
    device: nvmlDevice_t,
    state: *mut nvmlPstates_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetPerformanceState, |_, _, d| {
        gpu_only(d)?;
        put(state, NVML_PSTATE_0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(
    device: nvmlDevice_t,
    reasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    on_device(
        device,
        Fn::nvmlDeviceGetCurrentClocksEventReasons,
        |_, _, d| {
            gpu_only(d)?;
            put(reasons, 0)
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: nvmlDevice_t,
    reasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    nvmlDeviceGetCurrentClocksEventReasons(device, reasons)
}

// ---------------------------------------------------------------- utilization

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    util: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetUtilizationRates, |s, _, d| {
        not_in_mig_mode(d)?;
        let gpu = clamp_u32(s.sample(d, Metric::UtilGpu)).min(100);
        let memory = clamp_u32(s.sample(d, Metric::UtilMemory)).min(100);
        put(util, nvmlUtilization_t { gpu, memory })
    })
}

unsafe fn codec(
    device: nvmlDevice_t,
    f: Fn,
    m: Metric,
    util: *mut c_uint,
    period: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, f, |s, _, d| {
        not_in_mig_mode(d)?;
        if util.is_null() || period.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        put(util, clamp_u32(s.sample(d, m)).min(100))?;
        put(period, 167_000)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetEncoderUtilization(
    device: nvmlDevice_t,
    util: *mut c_uint,
    period_us: *mut c_uint,
) -> nvmlReturn_t {
    codec(
        device,
        Fn::nvmlDeviceGetEncoderUtilization,
        Metric::UtilEncoder,
        util,
        period_us,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDecoderUtilization(
    device: nvmlDevice_t,
    util: *mut c_uint,
    period_us: *mut c_uint,
) -> nvmlReturn_t {
    codec(
        device,
        Fn::nvmlDeviceGetDecoderUtilization,
        Metric::UtilDecoder,
        util,
        period_us,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPcieThroughput(
    device: nvmlDevice_t,
    counter: c_uint,
    value: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetPcieThroughput, |s, _, d| {
        gpu_only(d)?;
        let m = match counter {
            NVML_PCIE_UTIL_TX_BYTES => Metric::PcieTx,
            NVML_PCIE_UTIL_RX_BYTES => Metric::PcieRx,
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        put(value, clamp_u32(s.sample(d, m)))
    })
}

// ---------------------------------------------------------------- ECC

/// Total errors of a type and its split over L1, L2, device memory, register file.
fn ecc_counts(
    s: &Sim,
    d: &Device,
    error_type: c_uint,
) -> Result<nvmlEccErrorCounts_t, nvmlReturn_t> {
    gpu_only(d)?;
    if !d.ecc {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    let m = match error_type {
        NVML_MEMORY_ERROR_TYPE_CORRECTED => Metric::EccCorrected,
        NVML_MEMORY_ERROR_TYPE_UNCORRECTED => Metric::EccUncorrected,
        _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
    };
    let total = clamp_u64(s.sample(d, m));
    let part = total / 8;
    Ok(nvmlEccErrorCounts_t {
        l1Cache: part,
        l2Cache: part,
        deviceMemory: total - 3 * part,
        registerFile: part,
    })
}

fn check_counter(counter: c_uint) -> R {
    match counter {
        NVML_VOLATILE_ECC | NVML_AGGREGATE_ECC => Ok(()),
        _ => Err(NVML_ERROR_INVALID_ARGUMENT),
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: nvmlDevice_t,
    error_type: c_uint,
    counter: c_uint,
    count: *mut c_ulonglong,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetTotalEccErrors, |s, _, d| {
        check_counter(counter)?;
        let c = ecc_counts(s, d, error_type)?;
        put(
            count,
            c.l1Cache + c.l2Cache + c.deviceMemory + c.registerFile,
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDetailedEccErrors(
    device: nvmlDevice_t,
    error_type: c_uint,
    counter: c_uint,
    counts: *mut nvmlEccErrorCounts_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetDetailedEccErrors, |s, _, d| {
        check_counter(counter)?;
        put(counts, ecc_counts(s, d, error_type)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryErrorCounter(
    device: nvmlDevice_t,
    error_type: c_uint,
    counter: c_uint,
    location: c_uint,
    count: *mut c_ulonglong,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetMemoryErrorCounter, |s, _, d| {
        check_counter(counter)?;
        let c = ecc_counts(s, d, error_type)?;
        let v = match location {
            NVML_MEMORY_LOCATION_L1_CACHE => c.l1Cache,
            NVML_MEMORY_LOCATION_L2_CACHE => c.l2Cache,
            NVML_MEMORY_LOCATION_DEVICE_MEMORY => c.deviceMemory,
            NVML_MEMORY_LOCATION_REGISTER_FILE => c.registerFile,
            4..=7 => 0,
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        put(count, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetEccMode(
    device: nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetEccMode, |_, _, d| {
        if current.is_null() || pending.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let v = d.ecc as c_uint;
        put(current, v)?;
        put(pending, v)
    })
}

// ---------------------------------------------------------------- memory repair

/// Page retirement answers on GPUs that have it (before Ampere) with ECC on.
fn page_retirement(s: &Sim, d: &Device) -> R {
    gpu_only(d)?;
    if !s.model_of(d).page_retirement || !d.ecc {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(())
}

/// Row remapping answers on GPUs that have it (Ampere and later) with ECC on, and,
/// as nvml.h says, not while MIG mode is on.
fn row_remapping(s: &Sim, d: &Device) -> R {
    gpu_only(d)?;
    if !s.model_of(d).row_remapping || !d.ecc || d.mig_enabled {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPagesPendingStatus(
    device: nvmlDevice_t,
    is_pending: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    on_device(
        device,
        Fn::nvmlDeviceGetRetiredPagesPendingStatus,
        |s, i, d| {
            page_retirement(s, d)?;
            let pending = s.memory_state(i).retirement_pending;
            put(
                is_pending,
                if pending {
                    NVML_FEATURE_ENABLED
                } else {
                    NVML_FEATURE_DISABLED
                },
            )
        },
    )
}

/// Both retired-pages calls: `*page_count` is the buffer size in, the number of
/// pages out; a short buffer answers INSUFFICIENT_SIZE with the size needed (so
/// 0 asks for the size). Pages are listed for double-bit ECC errors only.
unsafe fn retired_pages(
    device: nvmlDevice_t,
    cause: nvmlPageRetirementCause_t,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: Option<*mut c_ulonglong>,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetRetiredPages, |s, i, d| {
        page_retirement(s, d)?;
        if page_count.is_null() || cause >= NVML_PAGE_RETIREMENT_CAUSE_COUNT {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let pages = if cause == NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR {
            s.retired_pages(i)
        } else {
            Vec::new()
        };
        let room = *page_count as usize;
        *page_count = pages.len() as c_uint;
        if room < pages.len() {
            return Err(NVML_ERROR_INSUFFICIENT_SIZE);
        }
        if pages.is_empty() {
            return Ok(());
        }
        if addresses.is_null() || timestamps.is_some_and(|t| t.is_null()) {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        for (k, &(addr, at)) in pages.iter().enumerate() {
            *addresses.add(k) = addr;
            if let Some(t) = timestamps {
                *t.add(k) = at;
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages(
    device: nvmlDevice_t,
    cause: nvmlPageRetirementCause_t,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
) -> nvmlReturn_t {
    retired_pages(device, cause, page_count, addresses, None)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages_v2(
    device: nvmlDevice_t,
    cause: nvmlPageRetirementCause_t,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> nvmlReturn_t {
    retired_pages(device, cause, page_count, addresses, Some(timestamps))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows(
    device: nvmlDevice_t,
    corr_rows: *mut c_uint,
    unc_rows: *mut c_uint,
    is_pending: *mut c_uint,
    failure_occurred: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetRemappedRows, |s, i, d| {
        row_remapping(s, d)?;
        if [corr_rows, unc_rows, is_pending, failure_occurred]
            .iter()
            .any(|p| p.is_null())
        {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let st = s.memory_state(i);
        put(corr_rows, st.correctable_rows)?;
        put(unc_rows, st.uncorrectable_rows)?;
        put(is_pending, st.remap_pending as c_uint)?;
        put(failure_occurred, st.remap_failed as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows_v2(
    device: nvmlDevice_t,
    info: *mut nvmlRemappedRowsInfo_v2_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetRemappedRows, |s, i, d| {
        row_remapping(s, d)?;
        let st = s.memory_state(i);
        put(
            info,
            nvmlRemappedRowsInfo_v2_t {
                corrActiveRemaps: st.correctable_rows,
                corrInactiveRemaps: 0,
                uncActiveRemaps: st.uncorrectable_rows,
                uncInactiveRemaps: 0,
                bPending: st.remap_pending as c_uint,
                bFailureOccurred: st.remap_failed as c_uint,
            },
        )
    })
}

// ---------------------------------------------------------------- clocks and PCIe

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
    clock_metric(kind)?;
    match s.model_of(d).max_clocks_mhz[kind as usize] {
        0 => Err(NVML_ERROR_NOT_SUPPORTED),
        mhz => Ok(mhz),
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    kind: c_uint,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetClockInfo, |s, _, d| {
        gpu_only(d)?;
        let max = max_clock(s, d, kind)?;
        put(clock, clamp_u32(s.sample(d, clock_metric(kind)?)).min(max))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxClockInfo(
    device: nvmlDevice_t,
    kind: c_uint,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetMaxClockInfo, |s, _, d| {
        gpu_only(d)?;
        put(clock, max_clock(s, d, kind)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetClock(
    device: nvmlDevice_t,
    kind: c_uint,
    id: c_uint,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetClock, |s, _, d| {
        gpu_only(d)?;
        let max = max_clock(s, d, kind)?;
        let v = match id {
            NVML_CLOCK_ID_CURRENT => clamp_u32(s.sample(d, clock_metric(kind)?)).min(max),
            NVML_CLOCK_ID_APP_CLOCK_TARGET
            | NVML_CLOCK_ID_APP_CLOCK_DEFAULT
            | NVML_CLOCK_ID_CUSTOMER_BOOST_MAX => max,
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        put(clock, v)
    })
}

macro_rules! model_uint {
    ($name:ident, $f:expr, |$m:ident| $v:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, out: *mut c_uint) -> nvmlReturn_t {
            on_device(device, $f, |s, _, d| {
                gpu_only(d)?;
                let $m = s.model_of(d);
                put(out, $v)
            })
        }
    };
}

model_uint!(
    nvmlDeviceGetMaxPcieLinkGeneration,
    Fn::nvmlDeviceGetMaxPcieLinkGeneration,
    |m| m.pcie_gen
);
model_uint!(
    nvmlDeviceGetMaxPcieLinkWidth,
    Fn::nvmlDeviceGetMaxPcieLinkWidth,
    |m| m.pcie_width
);
model_uint!(
    nvmlDeviceGetCurrPcieLinkGeneration,
    Fn::nvmlDeviceGetCurrPcieLinkGeneration,
    |m| m.pcie_gen
);
model_uint!(
    nvmlDeviceGetCurrPcieLinkWidth,
    Fn::nvmlDeviceGetCurrPcieLinkWidth,
    |m| m.pcie_width
);

// ---------------------------------------------------------------- modes

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDisplayMode(
    device: nvmlDevice_t,
    mode: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetDisplayMode, |_, _, d| {
        gpu_only(d)?;
        put(mode, d.display as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDisplayActive(
    device: nvmlDevice_t,
    active: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetDisplayActive, |_, _, d| {
        gpu_only(d)?;
        put(active, d.display as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPersistenceMode(
    device: nvmlDevice_t,
    mode: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetPersistenceMode, |_, _, d| {
        gpu_only(d)?;
        put(mode, d.persistence as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeMode(
    device: nvmlDevice_t,
    mode: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetComputeMode, |_, _, _| {
        put(mode, NVML_COMPUTEMODE_DEFAULT)
    })
}

unsafe fn running_processes(device: nvmlDevice_t, f: Fn, count: *mut c_uint) -> nvmlReturn_t {
    // Simulated GPUs run nothing: zero processes.
    on_device(device, f, |_, _, _| put(count, 0))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    _infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    running_processes(device, Fn::nvmlDeviceGetComputeRunningProcesses, count)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: nvmlDevice_t,
    count: *mut c_uint,
    _infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    running_processes(device, Fn::nvmlDeviceGetComputeRunningProcesses, count)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses(
    device: nvmlDevice_t,
    count: *mut c_uint,
    _infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    running_processes(device, Fn::nvmlDeviceGetComputeRunningProcesses, count)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    _infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    running_processes(device, Fn::nvmlDeviceGetGraphicsRunningProcesses, count)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v2(
    device: nvmlDevice_t,
    count: *mut c_uint,
    _infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    running_processes(device, Fn::nvmlDeviceGetGraphicsRunningProcesses, count)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses(
    device: nvmlDevice_t,
    count: *mut c_uint,
    _infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    running_processes(device, Fn::nvmlDeviceGetGraphicsRunningProcesses, count)
}

// ---------------------------------------------------------------- topology

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNumaNodeId(
    device: nvmlDevice_t,
    node: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetNumaNodeId, |_, _, d| {
        put(node, d.numa_node)
    })
}

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

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCpuAffinityWithinScope(
    device: nvmlDevice_t,
    size: c_uint,
    set: *mut c_ulong,
    _scope: c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetCpuAffinity, |_, _, d| {
        fill_bits(set, size, d.cpus.clone())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCpuAffinity(
    device: nvmlDevice_t,
    size: c_uint,
    set: *mut c_ulong,
) -> nvmlReturn_t {
    nvmlDeviceGetCpuAffinityWithinScope(device, size, set, NVML_AFFINITY_SCOPE_NODE)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryAffinity(
    device: nvmlDevice_t,
    size: c_uint,
    set: *mut c_ulong,
    _scope: c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetMemoryAffinity, |_, _, d| {
        fill_bits(set, size, std::iter::once(d.numa_node))
    })
}

// ---------------------------------------------------------------- MIG

fn mig_capable(s: &Sim, d: &Device) -> R {
    gpu_only(d)?;
    if s.model_of(d).mig_profiles.is_empty() {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetMigMode, |s, _, d| {
        mig_capable(s, d)?;
        if current.is_null() || pending.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let m = if d.mig_enabled {
            NVML_DEVICE_MIG_ENABLE
        } else {
            NVML_DEVICE_MIG_DISABLE
        };
        put(current, m)?;
        put(pending, m)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetMaxMigDeviceCount, |s, _, d| {
        mig_capable(s, d)?;
        put(count, s.model_of(d).mig_total_slices)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    on_device(
        device,
        Fn::nvmlDeviceGetMigDeviceHandleByIndex,
        |s, _, d| {
            if d.mig.is_some() || !d.mig_enabled {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            let i = *d
                .mig_devices
                .get(index as usize)
                .ok_or(NVML_ERROR_NOT_FOUND)?;
            put(mig, device_handle(s, i))
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    on_device(
        mig,
        Fn::nvmlDeviceGetDeviceHandleFromMigDeviceHandle,
        |s, _, d| {
            // nvml.h lists both INVALID_ARGUMENT and NOT_SUPPORTED for a handle
            // that is not a MIG device's; the scenario picks which.
            let m = d.mig.ok_or(s.choices.not_a_mig_device)?;
            put(device, device_handle(s, m.parent))
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: nvmlDevice_t,
    is_mig: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceIsMigDeviceHandle, |_, _, d| {
        put(is_mig, d.mig.is_some() as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetGpuInstanceId, |s, _, d| {
        let m = d.mig.ok_or(NVML_ERROR_NOT_SUPPORTED)?;
        put(id, s.gpu_instances[m.gpu_instance].id)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetComputeInstanceId, |s, _, d| {
        let m = d.mig.ok_or(NVML_ERROR_NOT_SUPPORTED)?;
        put(id, s.compute_instances[m.compute_instance].id)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetAttributes_v2(
    device: nvmlDevice_t,
    attrs: *mut nvmlDeviceAttributes_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetAttributes, |s, _, d| {
        // NVML answers this for MIG device handles only.
        let p = s.profile_of(d).ok_or(NVML_ERROR_NOT_SUPPORTED)?;
        put(
            attrs,
            nvmlDeviceAttributes_t {
                multiprocessorCount: p.multiprocessors,
                sharedCopyEngineCount: p.copy_engines,
                sharedDecoderCount: p.decoders,
                sharedEncoderCount: p.encoders,
                sharedJpegCount: p.jpegs,
                sharedOfaCount: p.ofas,
                gpuInstanceSliceCount: p.slices,
                computeInstanceSliceCount: p.slices,
                memorySizeMB: p.memory_mib,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetAttributes(
    device: nvmlDevice_t,
    attrs: *mut nvmlDeviceAttributes_t,
) -> nvmlReturn_t {
    nvmlDeviceGetAttributes_v2(device, attrs)
}

fn gi_profile(
    s: &Sim,
    d: &Device,
    index: c_uint,
) -> Result<&'static crate::models::MigProfile, nvmlReturn_t> {
    mig_capable(s, d)?;
    if index >= NVML_GPU_INSTANCE_PROFILE_COUNT {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let m = s.model_of(d);
    let p = m
        .mig_profiles
        .iter()
        .find(|p| p.index == index)
        .ok_or(NVML_ERROR_NOT_SUPPORTED)?;
    // SAFETY of 'static: models live inside the leaked Sim.
    Ok(unsafe { &*(p as *const crate::models::MigProfile) })
}

fn name96(s: &str) -> [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE] {
    let mut out = [0 as c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    for (o, b) in out
        .iter_mut()
        .zip(s.bytes().take(NVML_DEVICE_NAME_V2_BUFFER_SIZE - 1))
    {
        *o = b as c_char;
    }
    out
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfo(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_t,
) -> nvmlReturn_t {
    on_device(
        device,
        Fn::nvmlDeviceGetGpuInstanceProfileInfo,
        |s, _, d| {
            let p = gi_profile(s, d, profile)?;
            put(
                info,
                nvmlGpuInstanceProfileInfo_t {
                    id: p.id,
                    isP2pSupported: 0,
                    sliceCount: p.slices,
                    instanceCount: p.instance_count,
                    multiprocessorCount: p.multiprocessors,
                    copyEngineCount: p.copy_engines,
                    decoderCount: p.decoders,
                    encoderCount: p.encoders,
                    jpegCount: p.jpegs,
                    ofaCount: p.ofas,
                    memorySizeMB: p.memory_mib,
                },
            )
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfoV(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_v2_t,
) -> nvmlReturn_t {
    on_device(
        device,
        Fn::nvmlDeviceGetGpuInstanceProfileInfo,
        |s, _, d| {
            if info.is_null() {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            let p = gi_profile(s, d, profile)?;
            let name = name96(&format!("MIG {}", p.name));
            match (*info).version {
                nvmlGpuInstanceProfileInfo_v2 => put(
                    info,
                    nvmlGpuInstanceProfileInfo_v2_t {
                        version: nvmlGpuInstanceProfileInfo_v2,
                        id: p.id,
                        isP2pSupported: 0,
                        sliceCount: p.slices,
                        instanceCount: p.instance_count,
                        multiprocessorCount: p.multiprocessors,
                        copyEngineCount: p.copy_engines,
                        decoderCount: p.decoders,
                        encoderCount: p.encoders,
                        jpegCount: p.jpegs,
                        ofaCount: p.ofas,
                        memorySizeMB: p.memory_mib,
                        name,
                    },
                ),
                nvmlGpuInstanceProfileInfo_v3 => put(
                    info as *mut nvmlGpuInstanceProfileInfo_v3_t,
                    nvmlGpuInstanceProfileInfo_v3_t {
                        version: nvmlGpuInstanceProfileInfo_v3,
                        id: p.id,
                        sliceCount: p.slices,
                        instanceCount: p.instance_count,
                        multiprocessorCount: p.multiprocessors,
                        copyEngineCount: p.copy_engines,
                        decoderCount: p.decoders,
                        encoderCount: p.encoders,
                        jpegCount: p.jpegs,
                        ofaCount: p.ofas,
                        memorySizeMB: p.memory_mib,
                        name,
                        capabilities: 0,
                    },
                ),
                _ => Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH),
            }
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstances(
    device: nvmlDevice_t,
    profile_id: c_uint,
    instances: *mut nvmlGpuInstance_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetGpuInstances, |s, _, d| {
        mig_capable(s, d)?;
        if instances.is_null() || count.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let m = s.model_of(d);
        let mut n = 0;
        for &gi in &d.gpu_instances {
            if m.mig_profiles[s.gpu_instances[gi].profile].id == profile_id {
                *instances.add(n) = gpu_instance_handle(s, gi);
                n += 1;
            }
        }
        put(count, n as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceById(
    device: nvmlDevice_t,
    id: c_uint,
    instance: *mut nvmlGpuInstance_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetGpuInstanceById, |s, _, d| {
        mig_capable(s, d)?;
        let gi = d
            .gpu_instances
            .iter()
            .copied()
            .find(|&gi| s.gpu_instances[gi].id == id)
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        put(instance, gpu_instance_handle(s, gi))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetInfo(
    instance: nvmlGpuInstance_t,
    info: *mut nvmlGpuInstanceInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let gi = gpu_instance(s, instance)?;
        let parent = &s.devices[gi.device];
        s.enter(parent, Fn::nvmlDeviceGetGpuInstances)?;
        put(
            info,
            nvmlGpuInstanceInfo_t {
                device: device_handle(s, gi.device),
                id: gi.id,
                profileId: s.model_of(parent).mig_profiles[gi.profile].id,
                placement: nvmlGpuInstancePlacement_t {
                    start: gi.placement.0,
                    size: gi.placement.1,
                },
            },
        )
    })
}

/// Compute-instance profile index -> compute slices it spans.
const CI_SLICES: [u32; 8] = [1, 2, 3, 4, 7, 8, 6, 1];

fn ci_profile(
    s: &Sim,
    gi: &GpuInstance,
    profile: c_uint,
    eng: c_uint,
) -> Result<nvmlComputeInstanceProfileInfo_t, nvmlReturn_t> {
    if eng != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
        || profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT
    {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let p = &s.model_of(&s.devices[gi.device]).mig_profiles[gi.profile];
    let slices = *CI_SLICES
        .get(profile as usize)
        .ok_or(NVML_ERROR_NOT_SUPPORTED)?;
    if slices > p.slices || profile == NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1 {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(nvmlComputeInstanceProfileInfo_t {
        id: profile,
        sliceCount: slices,
        instanceCount: p.slices / slices,
        multiprocessorCount: p.multiprocessors * slices / p.slices,
        sharedCopyEngineCount: p.copy_engines,
        sharedDecoderCount: p.decoders,
        sharedEncoderCount: p.encoders,
        sharedJpegCount: p.jpegs,
        sharedOfaCount: p.ofas,
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    instance: nvmlGpuInstance_t,
    profile: c_uint,
    eng: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let gi = gpu_instance(s, instance)?;
        s.enter(&s.devices[gi.device], Fn::nvmlDeviceGetGpuInstances)?;
        put(info, ci_profile(s, gi, profile, eng)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfoV(
    instance: nvmlGpuInstance_t,
    profile: c_uint,
    eng: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_v2_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let gi = gpu_instance(s, instance)?;
        s.enter(&s.devices[gi.device], Fn::nvmlDeviceGetGpuInstances)?;
        if info.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let c = ci_profile(s, gi, profile, eng)?;
        let gi_name = &s.model_of(&s.devices[gi.device]).mig_profiles[gi.profile].name;
        let name =
            if c.sliceCount == s.model_of(&s.devices[gi.device]).mig_profiles[gi.profile].slices {
                gi_name.clone()
            } else {
                format!("{}c.{gi_name}", c.sliceCount)
            };
        let v2 = nvmlComputeInstanceProfileInfo_v2_t {
            version: nvmlComputeInstanceProfileInfo_v2,
            id: c.id,
            sliceCount: c.sliceCount,
            instanceCount: c.instanceCount,
            multiprocessorCount: c.multiprocessorCount,
            sharedCopyEngineCount: c.sharedCopyEngineCount,
            sharedDecoderCount: c.sharedDecoderCount,
            sharedEncoderCount: c.sharedEncoderCount,
            sharedJpegCount: c.sharedJpegCount,
            sharedOfaCount: c.sharedOfaCount,
            name: name96(&name),
        };
        match (*info).version {
            nvmlComputeInstanceProfileInfo_v2 => put(info, v2),
            nvmlComputeInstanceProfileInfo_v3 => put(
                info as *mut nvmlComputeInstanceProfileInfo_v3_t,
                nvmlComputeInstanceProfileInfo_v3_t {
                    version: nvmlComputeInstanceProfileInfo_v3,
                    id: v2.id,
                    sliceCount: v2.sliceCount,
                    instanceCount: v2.instanceCount,
                    multiprocessorCount: v2.multiprocessorCount,
                    sharedCopyEngineCount: v2.sharedCopyEngineCount,
                    sharedDecoderCount: v2.sharedDecoderCount,
                    sharedEncoderCount: v2.sharedEncoderCount,
                    sharedJpegCount: v2.sharedJpegCount,
                    sharedOfaCount: v2.sharedOfaCount,
                    name: v2.name,
                    capabilities: 0,
                },
            ),
            _ => Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH),
        }
    })
}

/// The compute-instance profile index whose slice count matches `slices`.
fn ci_profile_index(slices: u32) -> c_uint {
    CI_SLICES.iter().position(|&s| s == slices).unwrap_or(0) as c_uint
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstances(
    instance: nvmlGpuInstance_t,
    profile_id: c_uint,
    instances: *mut nvmlComputeInstance_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let gi = gpu_instance(s, instance)?;
        s.enter(&s.devices[gi.device], Fn::nvmlDeviceGetGpuInstances)?;
        if instances.is_null() || count.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let ci = &s.compute_instances[gi.compute_instance];
        if ci_profile_index(ci.slices) == profile_id {
            *instances = compute_instance_handle(s, gi.compute_instance);
            put(count, 1)
        } else {
            put(count, 0)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceById(
    instance: nvmlGpuInstance_t,
    id: c_uint,
    out: *mut nvmlComputeInstance_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let gi = gpu_instance(s, instance)?;
        s.enter(&s.devices[gi.device], Fn::nvmlDeviceGetGpuInstances)?;
        if s.compute_instances[gi.compute_instance].id != id {
            return Err(NVML_ERROR_NOT_FOUND);
        }
        put(out, compute_instance_handle(s, gi.compute_instance))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo_v2(
    instance: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let ci = compute_instance(s, instance)?;
        let gi = &s.gpu_instances[ci.gpu_instance];
        s.enter(&s.devices[gi.device], Fn::nvmlDeviceGetGpuInstances)?;
        put(
            info,
            nvmlComputeInstanceInfo_t {
                device: device_handle(s, gi.device),
                gpuInstance: gpu_instance_handle(s, ci.gpu_instance),
                id: ci.id,
                profileId: ci_profile_index(ci.slices),
                placement: nvmlComputeInstancePlacement_t {
                    start: 0,
                    size: ci.slices,
                },
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo(
    instance: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> nvmlReturn_t {
    nvmlComputeInstanceGetInfo_v2(instance, info)
}

// ---------------------------------------------------------------- field values

/// Functions whose answer a field repeats: a fault on the function covers the field.
fn field_function(id: u32) -> Option<Fn> {
    Some(match id {
        NVML_FI_DEV_ECC_CURRENT | NVML_FI_DEV_ECC_PENDING => Fn::nvmlDeviceGetEccMode,
        3..=28 => Fn::nvmlDeviceGetTotalEccErrors,
        NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION | NVML_FI_DEV_ENERGY => {
            Fn::nvmlDeviceGetTotalEnergyConsumption
        }
        NVML_FI_DEV_POWER_AVERAGE | NVML_FI_DEV_POWER_INSTANT => Fn::nvmlDeviceGetPowerUsage,
        NVML_FI_DEV_MEMORY_TEMP => Fn::nvmlDeviceGetTemperature,
        187..=192 => Fn::nvmlDeviceGetPowerManagementLimit,
        NVML_FI_DEV_RETIRED_SBE | NVML_FI_DEV_RETIRED_DBE => Fn::nvmlDeviceGetRetiredPages,
        NVML_FI_DEV_RETIRED_PENDING
        | NVML_FI_DEV_RETIRED_PENDING_SBE
        | NVML_FI_DEV_RETIRED_PENDING_DBE => Fn::nvmlDeviceGetRetiredPagesPendingStatus,
        NVML_FI_DEV_REMAPPED_COR..=NVML_FI_DEV_REMAPPED_FAILURE
        | NVML_FI_DEV_REMAPPED_ROWS_COR_INACTIVE
        | NVML_FI_DEV_REMAPPED_ROWS_UNC_INACTIVE => Fn::nvmlDeviceGetRemappedRows,
        NVML_FI_DEV_NVLINK_SPEED_MBPS_L0..=NVML_FI_DEV_NVLINK_LINK_COUNT
        | NVML_FI_DEV_NVLINK_SPEED_MBPS_L6..=NVML_FI_DEV_NVLINK_SPEED_MBPS_L11
        | NVML_FI_DEV_NVLINK_GET_SPEED..=NVML_FI_DEV_NVLINK_GET_VERSION => {
            Fn::nvmlDeviceGetNvLinkState
        }
        _ => return None,
    })
}

enum FieldValue {
    U32(c_uint),
    U64(c_ulonglong),
}

fn field_value(
    s: &Sim,
    i: usize,
    d: &Device,
    id: u32,
    scope: u32,
) -> Result<FieldValue, nvmlReturn_t> {
    if d.unsupported_fields.contains(&id) {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    if let Some(f) = field_function(id) {
        if d.unsupported & (1u128 << f as usize) != 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
    }
    gpu_only(d)?;
    let m = s.model_of(d);
    // ECC fields: (corrected?, volatile?, location); totals use location None.
    let ecc = |corrected: bool, loc: Option<u32>| -> Result<FieldValue, nvmlReturn_t> {
        let t = if corrected {
            NVML_MEMORY_ERROR_TYPE_CORRECTED
        } else {
            NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        };
        let c = ecc_counts(s, d, t)?;
        Ok(FieldValue::U64(match loc {
            None => c.l1Cache + c.l2Cache + c.deviceMemory + c.registerFile,
            Some(NVML_MEMORY_LOCATION_L1_CACHE) => c.l1Cache,
            Some(NVML_MEMORY_LOCATION_L2_CACHE) => c.l2Cache,
            Some(NVML_MEMORY_LOCATION_DEVICE_MEMORY) => c.deviceMemory,
            Some(NVML_MEMORY_LOCATION_REGISTER_FILE) => c.registerFile,
            Some(_) => 0,
        }))
    };
    const L1: Option<u32> = Some(NVML_MEMORY_LOCATION_L1_CACHE);
    const L2: Option<u32> = Some(NVML_MEMORY_LOCATION_L2_CACHE);
    const DEV: Option<u32> = Some(NVML_MEMORY_LOCATION_DEVICE_MEMORY);
    const REG: Option<u32> = Some(NVML_MEMORY_LOCATION_REGISTER_FILE);
    const TEX: Option<u32> = Some(NVML_MEMORY_LOCATION_TEXTURE_MEMORY);
    Ok(match id {
        NVML_FI_DEV_ECC_CURRENT | NVML_FI_DEV_ECC_PENDING => FieldValue::U32(d.ecc as c_uint),
        NVML_FI_DEV_ECC_SBE_VOL_TOTAL | NVML_FI_DEV_ECC_SBE_AGG_TOTAL => ecc(true, None)?,
        NVML_FI_DEV_ECC_DBE_VOL_TOTAL | NVML_FI_DEV_ECC_DBE_AGG_TOTAL => ecc(false, None)?,
        NVML_FI_DEV_ECC_SBE_VOL_L1 | NVML_FI_DEV_ECC_SBE_AGG_L1 => ecc(true, L1)?,
        NVML_FI_DEV_ECC_DBE_VOL_L1 | NVML_FI_DEV_ECC_DBE_AGG_L1 => ecc(false, L1)?,
        NVML_FI_DEV_ECC_SBE_VOL_L2 | NVML_FI_DEV_ECC_SBE_AGG_L2 => ecc(true, L2)?,
        NVML_FI_DEV_ECC_DBE_VOL_L2 | NVML_FI_DEV_ECC_DBE_AGG_L2 => ecc(false, L2)?,
        NVML_FI_DEV_ECC_SBE_VOL_DEV | NVML_FI_DEV_ECC_SBE_AGG_DEV => ecc(true, DEV)?,
        NVML_FI_DEV_ECC_DBE_VOL_DEV | NVML_FI_DEV_ECC_DBE_AGG_DEV => ecc(false, DEV)?,
        NVML_FI_DEV_ECC_SBE_VOL_REG | NVML_FI_DEV_ECC_SBE_AGG_REG => ecc(true, REG)?,
        NVML_FI_DEV_ECC_DBE_VOL_REG | NVML_FI_DEV_ECC_DBE_AGG_REG => ecc(false, REG)?,
        NVML_FI_DEV_ECC_SBE_VOL_TEX | NVML_FI_DEV_ECC_SBE_AGG_TEX => ecc(true, TEX)?,
        NVML_FI_DEV_ECC_DBE_VOL_TEX | NVML_FI_DEV_ECC_DBE_AGG_TEX => ecc(false, TEX)?,
        NVML_FI_DEV_ECC_DBE_VOL_CBU | NVML_FI_DEV_ECC_DBE_AGG_CBU => ecc(false, TEX)?,
        NVML_FI_DEV_RETIRED_SBE | NVML_FI_DEV_RETIRED_PENDING_SBE => {
            page_retirement(s, d)?;
            FieldValue::U64(0)
        }
        NVML_FI_DEV_RETIRED_DBE => {
            page_retirement(s, d)?;
            FieldValue::U64(u64::from(s.memory_state(i).retired_dbe_pages))
        }
        NVML_FI_DEV_RETIRED_PENDING | NVML_FI_DEV_RETIRED_PENDING_DBE => {
            page_retirement(s, d)?;
            let st = s.memory_state(i);
            FieldValue::U64(if !st.retirement_pending {
                0
            } else if id == NVML_FI_DEV_RETIRED_PENDING {
                1
            } else {
                u64::from(st.retired_dbe_pages)
            })
        }
        NVML_FI_DEV_PCIE_REPLAY_COUNTER => FieldValue::U64(0),
        NVML_FI_DEV_REMAPPED_COR..=NVML_FI_DEV_REMAPPED_FAILURE => {
            row_remapping(s, d)?;
            let st = s.memory_state(i);
            FieldValue::U32(match id {
                NVML_FI_DEV_REMAPPED_COR => st.correctable_rows,
                NVML_FI_DEV_REMAPPED_UNC => st.uncorrectable_rows,
                NVML_FI_DEV_REMAPPED_PENDING => st.remap_pending as c_uint,
                _ => st.remap_failed as c_uint,
            })
        }
        NVML_FI_DEV_REMAPPED_ROWS_COR_INACTIVE | NVML_FI_DEV_REMAPPED_ROWS_UNC_INACTIVE => {
            row_remapping(s, d)?;
            FieldValue::U32(0)
        }
        NVML_FI_DEV_MEMORY_TEMP => {
            FieldValue::U32(clamp_u32(s.sample(d, Metric::MemoryTemperature)))
        }
        NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION | NVML_FI_DEV_ENERGY => {
            FieldValue::U64(energy_mj(s, d))
        }
        NVML_FI_DEV_POWER_AVERAGE | NVML_FI_DEV_POWER_INSTANT => {
            FieldValue::U32(clamp_u32(s.sample(d, Metric::Power) * 1000.0))
        }
        NVML_FI_DEV_POWER_MIN_LIMIT => FieldValue::U32(clamp_u32(m.power_min_w * 1000.0)),
        NVML_FI_DEV_POWER_MAX_LIMIT => FieldValue::U32(clamp_u32(m.power_max_w * 1000.0)),
        NVML_FI_DEV_POWER_DEFAULT_LIMIT
        | NVML_FI_DEV_POWER_CURRENT_LIMIT
        | NVML_FI_DEV_POWER_REQUESTED_LIMIT => FieldValue::U32(limit_mw(s, d)),
        NVML_FI_DEV_NVLINK_LINK_COUNT => FieldValue::U32(crate::fabric::links(m)?),
        NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON => {
            crate::fabric::links(m)?;
            FieldValue::U32(m.nvlink_speed_mbps)
        }
        NVML_FI_DEV_NVLINK_SPEED_MBPS_L0..=NVML_FI_DEV_NVLINK_SPEED_MBPS_L5 => {
            crate::fabric::link(m, id - NVML_FI_DEV_NVLINK_SPEED_MBPS_L0)?;
            FieldValue::U32(m.nvlink_speed_mbps)
        }
        NVML_FI_DEV_NVLINK_SPEED_MBPS_L6..=NVML_FI_DEV_NVLINK_SPEED_MBPS_L11 => {
            crate::fabric::link(m, id - NVML_FI_DEV_NVLINK_SPEED_MBPS_L6 + 6)?;
            FieldValue::U32(m.nvlink_speed_mbps)
        }
        // Per link: the link is the field's scopeId.
        NVML_FI_DEV_NVLINK_GET_SPEED => {
            crate::fabric::link(m, scope)?;
            FieldValue::U32(m.nvlink_speed_mbps)
        }
        NVML_FI_DEV_NVLINK_GET_STATE => {
            crate::fabric::link(m, scope)?;
            FieldValue::U32(NVML_NVLINK_STATE_ACTIVE)
        }
        NVML_FI_DEV_NVLINK_GET_VERSION => {
            crate::fabric::link(m, scope)?;
            FieldValue::U32(m.nvlink_version)
        }
        _ => return Err(NVML_ERROR_NOT_SUPPORTED),
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    device: nvmlDevice_t,
    count: c_int,
    values: *mut nvmlFieldValue_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetFieldValues, |s, i, d| {
        if values.is_null() || count <= 0 {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let values = std::slice::from_raw_parts_mut(values, count as usize);
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_micros() as i64)
            .unwrap_or(0);
        for v in values {
            v.timestamp = timestamp;
            v.latencyUsec = 0;
            match field_value(s, i, d, v.fieldId, v.scopeId) {
                Ok(FieldValue::U32(x)) => {
                    v.valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
                    v.value = nvmlValue_t { ullVal: 0 };
                    v.value.uiVal = x;
                    v.nvmlReturn = NVML_SUCCESS;
                }
                Ok(FieldValue::U64(x)) => {
                    v.valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
                    v.value = nvmlValue_t { ullVal: x };
                    v.nvmlReturn = NVML_SUCCESS;
                }
                Err(code) => {
                    v.value = nvmlValue_t { ullVal: 0 };
                    v.nvmlReturn = code;
                }
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------- events

const SUPPORTED_EVENTS: c_ulonglong = nvmlEventTypeXidCriticalError
    | nvmlEventTypeSingleBitEccError
    | nvmlEventTypeDoubleBitEccError
    | nvmlEventTypePState
    | nvmlEventTypeClock;

/// nvml.h's nvmlEventMigConfigChange (not among nvml_sys's constants).
const EVENT_MIG_CONFIG_CHANGE: c_ulonglong = 0x100;

/// nvml.h's nvmlEventTypeAll: every bit that is an event type.
const ALL_EVENT_TYPES: c_ulonglong = nvmlEventTypeSingleBitEccError
    | nvmlEventTypeDoubleBitEccError
    | nvmlEventTypePState
    | nvmlEventTypeClock
    | nvmlEventTypeXidCriticalError
    | nvmlEventTypePowerSourceChange
    | EVENT_MIG_CONFIG_CHANGE
    | nvmlEventTypeSingleBitEccErrorStorm
    | nvmlEventTypeDramRetirementEvent
    | nvmlEventTypeDramRetirementFailure
    | nvmlEventTypeNonFatalPoisonError
    | nvmlEventTypeFatalPoisonError
    | nvmlEventTypeGpuUnavailableError
    | nvmlEventTypeGpuRecoveryAction;

fn supported_events(d: &Device) -> c_ulonglong {
    if d.ecc {
        SUPPORTED_EVENTS
    } else {
        SUPPORTED_EVENTS & !(nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError)
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    types: *mut c_ulonglong,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetSupportedEventTypes, |_, _, d| {
        gpu_only(d)?;
        put(types, supported_events(d))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        if set.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        put(set, events::create(s))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    types: c_ulonglong,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceRegisterEvents, |s, i, d| {
        gpu_only(d)?;
        let es = events::get(set).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        if !std::ptr::eq(es.sim, s) {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // nvml.h: an invalid mask (nothing, or a bit that is no nvmlEventType) is
        // INVALID_ARGUMENT; a known type this GPU does not record is NOT_SUPPORTED,
        // and then none of the requested types is registered.
        if types == 0 || types & !ALL_EVENT_TYPES != 0 {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        if types & !supported_events(d) != 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        es.register(i, types);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        if data.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let es = events::get(set).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        s.enter_system(SysFn::nvmlEventSetWait)?;
        let e = es
            .wait(Duration::from_millis(timeout_ms.into()))?
            .ok_or(NVML_ERROR_TIMEOUT)?;
        put(
            data,
            nvmlEventData_t {
                device: device_handle(s, e.gpu),
                eventType: e.event_type,
                eventData: e.data,
                gpuInstanceId: e.gpu_instance,
                computeInstanceId: e.compute_instance,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> nvmlReturn_t {
    nvmlEventSetWait_v2(set, data, timeout_ms)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    guard(|| {
        sim()?;
        if events::free(set) {
            Ok(())
        } else {
            Err(NVML_ERROR_INVALID_ARGUMENT)
        }
    })
}

// Compile-time check that the exports match the shared signatures in nvml_sys.
const _: nvmlInit_v2_fn = nvmlInit_v2;
const _: nvmlErrorString_fn = nvmlErrorString;
const _: nvmlDeviceGetCount_v2_fn = nvmlDeviceGetCount_v2;
const _: nvmlDeviceGetHandleByIndex_v2_fn = nvmlDeviceGetHandleByIndex_v2;
const _: nvmlDeviceGetHandleByUUID_fn = nvmlDeviceGetHandleByUUID;
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
const _: nvmlDeviceGetTotalEccErrors_fn = nvmlDeviceGetTotalEccErrors;
const _: nvmlDeviceGetDetailedEccErrors_fn = nvmlDeviceGetDetailedEccErrors;
const _: nvmlDeviceGetMemoryErrorCounter_fn = nvmlDeviceGetMemoryErrorCounter;
const _: nvmlDeviceGetPciInfo_v3_fn = nvmlDeviceGetPciInfo_v3;
const _: nvmlDeviceGetFieldValues_fn = nvmlDeviceGetFieldValues;
const _: nvmlDeviceGetMigMode_fn = nvmlDeviceGetMigMode;
const _: nvmlDeviceGetMigDeviceHandleByIndex_fn = nvmlDeviceGetMigDeviceHandleByIndex;
const _: nvmlDeviceGetDeviceHandleFromMigDeviceHandle_fn =
    nvmlDeviceGetDeviceHandleFromMigDeviceHandle;
const _: nvmlEventSetCreate_fn = nvmlEventSetCreate;
const _: nvmlDeviceRegisterEvents_fn = nvmlDeviceRegisterEvents;
const _: nvmlEventSetWait_v2_fn = nvmlEventSetWait_v2;
const _: nvmlEventSetFree_fn = nvmlEventSetFree;
const _: nvmlDeviceGetUlonglong_fn = nvmlDeviceGetTotalEnergyConsumption;
const _: nvmlDeviceGetRetiredPagesPendingStatus_fn = nvmlDeviceGetRetiredPagesPendingStatus;
const _: nvmlDeviceGetRetiredPages_fn = nvmlDeviceGetRetiredPages;
const _: nvmlDeviceGetRetiredPages_v2_fn = nvmlDeviceGetRetiredPages_v2;
const _: nvmlDeviceGetRemappedRows_fn = nvmlDeviceGetRemappedRows;
const _: nvmlDeviceGetRemappedRows_v2_fn = nvmlDeviceGetRemappedRows_v2;
