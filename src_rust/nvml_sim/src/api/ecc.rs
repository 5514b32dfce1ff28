//! ECC error counts and memory repair: page retirement (before Ampere) and row
//! remapping (Ampere and later).

use std::os::raw::{c_uint, c_ulonglong};

use nvml_sys::*;

use super::{clamp_u64, gpu_only, on_device, put, supported_if, R};
use crate::fns::Fn;
use crate::sim::{Device, Metric, Sim};

/// Total errors of a type and its split over L1, L2, device memory, register file.
pub(super) fn ecc_counts(
    s: &Sim,
    d: &Device,
    error_type: c_uint,
) -> Result<nvmlEccErrorCounts_t, nvmlReturn_t> {
    gpu_only(d)?;
    supported_if(d.ecc)?;
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

/// The count at one location; None (every location) is the total. Locations
/// without a count of their own (texture memory and later) hold no errors.
pub(super) fn ecc_at(c: &nvmlEccErrorCounts_t, location: Option<c_uint>) -> c_ulonglong {
    match location {
        None => c.l1Cache + c.l2Cache + c.deviceMemory + c.registerFile,
        Some(NVML_MEMORY_LOCATION_L1_CACHE) => c.l1Cache,
        Some(NVML_MEMORY_LOCATION_L2_CACHE) => c.l2Cache,
        Some(NVML_MEMORY_LOCATION_DEVICE_MEMORY) => c.deviceMemory,
        Some(NVML_MEMORY_LOCATION_REGISTER_FILE) => c.registerFile,
        Some(_) => 0,
    }
}

fn check_counter(counter: c_uint) -> R {
    match counter {
        NVML_VOLATILE_ECC | NVML_AGGREGATE_ECC => Ok(()),
        _ => Err(NVML_ERROR_INVALID_ARGUMENT),
    }
}

/// Page retirement answers on GPUs that have it (before Ampere) with ECC on.
pub(super) fn page_retirement(s: &Sim, d: &Device) -> R {
    gpu_only(d)?;
    supported_if(s.model_of(d).page_retirement && d.ecc)
}

/// Row remapping answers on GPUs that have it (Ampere and later) with ECC on, and,
/// as nvml.h says, not while MIG mode is on.
pub(super) fn row_remapping(s: &Sim, d: &Device) -> R {
    gpu_only(d)?;
    supported_if(s.model_of(d).row_remapping && d.ecc && !d.mig_enabled)
}

device_queries! {
    nvmlDeviceGetTotalEccErrors(error_type: c_uint, counter: c_uint, count: *mut c_ulonglong)
        |s, _, d| {
        check_counter(counter)?;
        put(count, ecc_at(&ecc_counts(s, d, error_type)?, None))
    };
    nvmlDeviceGetDetailedEccErrors(
        error_type: c_uint, counter: c_uint, counts: *mut nvmlEccErrorCounts_t) |s, _, d| {
        check_counter(counter)?;
        put(counts, ecc_counts(s, d, error_type)?)
    };
    nvmlDeviceGetMemoryErrorCounter(
        error_type: c_uint, counter: c_uint, location: c_uint, count: *mut c_ulonglong) |s, _, d| {
        check_counter(counter)?;
        let c = ecc_counts(s, d, error_type)?;
        if location > NVML_MEMORY_LOCATION_SRAM {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        put(count, ecc_at(&c, Some(location)))
    };
    nvmlDeviceGetRetiredPagesPendingStatus(is_pending: *mut nvmlEnableState_t) |s, i, d| {
        page_retirement(s, d)?;
        let pending = if s.memory_state(i).retirement_pending {
            NVML_FEATURE_ENABLED
        } else {
            NVML_FEATURE_DISABLED
        };
        put(is_pending, pending)
    };
    nvmlDeviceGetRemappedRows(
        corr_rows: *mut c_uint, unc_rows: *mut c_uint, is_pending: *mut c_uint,
        failure_occurred: *mut c_uint) |s, i, d| {
        row_remapping(s, d)?;
        let outs = [corr_rows, unc_rows, is_pending, failure_occurred];
        if outs.iter().any(|p| p.is_null()) {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let st = s.memory_state(i);
        put(corr_rows, st.correctable_rows)?;
        put(unc_rows, st.uncorrectable_rows)?;
        put(is_pending, st.remap_pending as c_uint)?;
        put(failure_occurred, st.remap_failed as c_uint)
    };
    nvmlDeviceGetRemappedRows_v2 as nvmlDeviceGetRemappedRows(
        info: *mut nvmlRemappedRowsInfo_v2_t) |s, i, d| {
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
    };
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

// Compile-time check that the exports match the shared signatures in nvml_sys.
const _: nvmlDeviceGetTotalEccErrors_fn = nvmlDeviceGetTotalEccErrors;
const _: nvmlDeviceGetDetailedEccErrors_fn = nvmlDeviceGetDetailedEccErrors;
const _: nvmlDeviceGetMemoryErrorCounter_fn = nvmlDeviceGetMemoryErrorCounter;
const _: nvmlDeviceGetRetiredPagesPendingStatus_fn = nvmlDeviceGetRetiredPagesPendingStatus;
const _: nvmlDeviceGetRetiredPages_fn = nvmlDeviceGetRetiredPages;
const _: nvmlDeviceGetRetiredPages_v2_fn = nvmlDeviceGetRetiredPages_v2;
const _: nvmlDeviceGetRemappedRows_fn = nvmlDeviceGetRemappedRows;
const _: nvmlDeviceGetRemappedRows_v2_fn = nvmlDeviceGetRemappedRows_v2;
