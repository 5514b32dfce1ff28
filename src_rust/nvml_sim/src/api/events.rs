//! Event sets: the types a GPU records, registration, and the wait.

use std::os::raw::{c_uint, c_ulonglong};
use std::time::Duration;

use nvml_sys::*;

use super::{device_handle, gpu_only, guard, on_device, put, put_with, sim};
use crate::events;
use crate::fns::{Fn, SysFn};
use crate::sim::Device;

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
        put_with(set, || events::create(s))
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

aliases! {
    nvmlEventSetWait(set: nvmlEventSet_t, data: *mut nvmlEventData_t, timeout_ms: c_uint)
        = nvmlEventSetWait_v2;
}

// Compile-time check that the exports match the shared signatures in nvml_sys.
const _: nvmlEventSetCreate_fn = nvmlEventSetCreate;
const _: nvmlDeviceRegisterEvents_fn = nvmlDeviceRegisterEvents;
const _: nvmlEventSetWait_v2_fn = nvmlEventSetWait_v2;
const _: nvmlEventSetFree_fn = nvmlEventSetFree;
