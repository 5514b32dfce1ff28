//! Init and shutdown, the calls that belong to no GPU, and the handle lookups.

use std::os::raw::{c_char, c_int, c_uint};

use nvml_sys::*;

use super::{device_handle, get_str, guard, put, put_str, sim, R};
use crate::fns::{Fn, SysFn};
use crate::sim::Sim;
use crate::state;

fn ok_or_code(code: nvmlReturn_t) -> R {
    match code {
        NVML_SUCCESS => Ok(()),
        e => Err(e),
    }
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    guard(|| ok_or_code(state::init(0)))
}

#[no_mangle]
pub extern "C" fn nvmlInit() -> nvmlReturn_t {
    nvmlInit_v2()
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(flags: c_uint) -> nvmlReturn_t {
    guard(|| ok_or_code(state::init(flags)))
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    guard(|| ok_or_code(state::shutdown()))
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

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        s.enter_system(SysFn::nvmlDeviceGetCount)?;
        put(count, s.gpu_count as c_uint)
    })
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

/// A lookup by a string key (UUID, PCI bus id): NOT_FOUND when no GPU has it.
unsafe fn handle_by(
    key: *const c_char,
    f: Fn,
    find: fn(&Sim, &str) -> Option<usize>,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let i = find(s, get_str(key)?).ok_or(NVML_ERROR_NOT_FOUND)?;
        s.enter_lookup(&s.devices[i], f)?;
        put(device, device_handle(s, i))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    handle_by(
        uuid,
        Fn::nvmlDeviceGetHandleByUUID,
        Sim::device_by_uuid,
        device,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    handle_by(
        bus_id,
        Fn::nvmlDeviceGetHandleByPciBusId,
        Sim::device_by_bus_id,
        device,
    )
}

aliases! {
    nvmlSystemGetCudaDriverVersion_v2(v: *mut c_int) = nvmlSystemGetCudaDriverVersion;
    nvmlDeviceGetCount(count: *mut c_uint) = nvmlDeviceGetCount_v2;
    nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut nvmlDevice_t) = nvmlDeviceGetHandleByIndex_v2;
    nvmlDeviceGetHandleByPciBusId(bus_id: *const c_char, device: *mut nvmlDevice_t) = nvmlDeviceGetHandleByPciBusId_v2;
}

// Compile-time check that the exports match the shared signatures in nvml_sys.
const _: nvmlInit_v2_fn = nvmlInit_v2;
const _: nvmlErrorString_fn = nvmlErrorString;
const _: nvmlDeviceGetCount_v2_fn = nvmlDeviceGetCount_v2;
const _: nvmlDeviceGetHandleByIndex_v2_fn = nvmlDeviceGetHandleByIndex_v2;
const _: nvmlDeviceGetHandleByUUID_fn = nvmlDeviceGetHandleByUUID;
