//! The exported NVML entry points, one module per NVML area (GPM and NVLink/fabric
//! live in crate::gpm and crate::fabric). Every one runs its body under
//! `catch_unwind` (a panic becomes NVML_ERROR_UNKNOWN, never an unwind into C),
//! checks that NVML is initialized and that handles point into the current machine,
//! and checks every output pointer for null before writing.
#![allow(non_snake_case, non_upper_case_globals, clippy::missing_safety_doc)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_uint, c_ulonglong};
use std::panic::{catch_unwind, AssertUnwindSafe};

use nvml_sys::*;

use crate::fns::Fn;
use crate::sim::{ComputeInstance, Device, GpuInstance, Sim};
use crate::state;

/// An exported per-device query: `on_device` under the function's own id, or under
/// the id named after `as` (a versioned export shares its base name's faults). The
/// closure gets the machine, the device's index and the device.
macro_rules! device_queries {
    ($(
        $(#[$attr:meta])*
        $name:ident $(as $id:ident)? ($($arg:ident: $ty:ty),* $(,)?)
            |$s:pat_param, $i:pat_param, $d:pat_param| $body:expr;
    )*) => {$(
        $(#[$attr])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(device: nvmlDevice_t, $($arg: $ty),*) -> nvmlReturn_t {
            $crate::api::on_device(device, fn_id!($name $(, $id)?), |$s, $i, $d| $body)
        }
    )*};
}

macro_rules! fn_id {
    ($name:ident) => {
        Fn::$name
    };
    ($name:ident, $id:ident) => {
        Fn::$id
    };
}

/// Exports that answer exactly as another export does (older versions of a call
/// whose arguments did not change).
macro_rules! aliases {
    ($($name:ident($($arg:ident: $ty:ty),* $(,)?) = $target:ident;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> nvmlReturn_t {
            $target($($arg),*)
        }
    )*};
}

pub mod device;
pub mod ecc;
pub mod events;
pub mod fields;
pub mod mig;
pub mod system;

pub use device::*;
pub use ecc::*;
pub use events::*;
pub use fields::*;
pub use mig::*;
pub use system::*;

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

/// The element of `items` a handle points at: handles are addresses into the machine.
#[inline]
fn resolve<T>(items: &'static [T], h: usize) -> Result<(usize, &'static T), nvmlReturn_t> {
    let i = index_in(items, h).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    Ok((i, &items[i]))
}

#[inline]
pub(crate) fn device(
    s: &'static Sim,
    h: nvmlDevice_t,
) -> Result<(usize, &'static Device), nvmlReturn_t> {
    resolve(&s.devices, h as usize)
}

fn gpu_instance(
    s: &'static Sim,
    h: nvmlGpuInstance_t,
) -> Result<&'static GpuInstance, nvmlReturn_t> {
    Ok(resolve(&s.gpu_instances, h as usize)?.1)
}

fn compute_instance(
    s: &'static Sim,
    h: nvmlComputeInstance_t,
) -> Result<&'static ComputeInstance, nvmlReturn_t> {
    Ok(resolve(&s.compute_instances, h as usize)?.1)
}

/// The handle of `items[i]`: its address.
#[inline]
fn handle_of<T, H>(items: &[T], i: usize) -> *mut H {
    &items[i] as *const T as *mut H
}

#[inline]
pub(crate) fn device_handle(s: &Sim, i: usize) -> nvmlDevice_t {
    handle_of(&s.devices, i)
}

fn gpu_instance_handle(s: &Sim, i: usize) -> nvmlGpuInstance_t {
    handle_of(&s.gpu_instances, i)
}

fn compute_instance_handle(s: &Sim, i: usize) -> nvmlComputeInstance_t {
    handle_of(&s.compute_instances, i)
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
    put_with(p, || v)
}

/// Writes what `make` makes, made only when there is somewhere to put it (a new
/// event set or sample buffer is not created for a null pointer).
#[inline]
pub(crate) unsafe fn put_with<T>(p: *mut T, make: impl FnOnce() -> T) -> R {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    p.write(make());
    Ok(())
}

/// Writes the same value to two outputs (current and pending modes); neither is
/// written unless both pointers are set.
unsafe fn put_pair<T: Copy>(a: *mut T, b: *mut T, v: T) -> R {
    if a.is_null() || b.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    put(a, v)?;
    put(b, v)
}

/// The version a versioned struct carries in its first field: INVALID_ARGUMENT for a
/// null pointer, ARGUMENT_VERSION_MISMATCH for a version not in `known`.
pub(crate) unsafe fn struct_version<T>(
    p: *const T,
    known: &[c_uint],
) -> Result<c_uint, nvmlReturn_t> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let version = *(p as *const c_uint);
    if known.contains(&version) {
        Ok(version)
    } else {
        Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    }
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

/// Ok when `supported`, else NOT_SUPPORTED.
#[inline]
fn supported_if(supported: bool) -> R {
    if supported {
        Ok(())
    } else {
        Err(NVML_ERROR_NOT_SUPPORTED)
    }
}

/// Queries a MIG device cannot answer (they belong to the whole GPU).
#[inline]
pub(crate) fn gpu_only(d: &Device) -> R {
    supported_if(d.mig.is_none())
}

/// Queries nvml.h says are not supported on MIG-enabled GPUs (utilization, encoder
/// and decoder utilization): neither a MIG device nor a GPU in MIG mode answers.
#[inline]
fn not_in_mig_mode(d: &Device) -> R {
    gpu_only(d)?;
    supported_if(!d.mig_enabled)
}

fn clamp_u32(v: f64) -> c_uint {
    v.clamp(0.0, u32::MAX as f64) as c_uint
}

fn clamp_u64(v: f64) -> c_ulonglong {
    v.clamp(0.0, u64::MAX as f64) as c_ulonglong
}
