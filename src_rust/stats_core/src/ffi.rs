//! The few NVML C types and constants the poller needs, with the layouts of
//! NVIDIA's nvml.h. Kept local so the poller builds on its own; the values are
//! fixed by the NVML ABI.

use std::os::raw::{c_char, c_int, c_uint, c_ulonglong};

pub type NvmlReturn = c_int;
pub type NvmlDevice = *mut std::ffi::c_void;

pub const NVML_SUCCESS: NvmlReturn = 0;
pub const NVML_ERROR_NOT_SUPPORTED: NvmlReturn = 3;
pub const NVML_ERROR_FUNCTION_NOT_FOUND: NvmlReturn = 13;

pub const NVML_TEMPERATURE_GPU: c_uint = 0;
pub const NVML_CLOCK_SM: c_uint = 1;
pub const NVML_CLOCK_MEM: c_uint = 2;
pub const NVML_PCIE_UTIL_TX_BYTES: c_uint = 0;
pub const NVML_PCIE_UTIL_RX_BYTES: c_uint = 1;
pub const NVML_MEMORY_ERROR_TYPE_CORRECTED: c_uint = 0;
pub const NVML_VOLATILE_ECC: c_uint = 0;

// Field IDs (NVML_FI_DEV_*) read in one nvmlDeviceGetFieldValues call.
pub const NVML_FI_DEV_ECC_SBE_VOL_L1: c_uint = 7;
pub const NVML_FI_DEV_ECC_SBE_VOL_L2: c_uint = 9;
pub const NVML_FI_DEV_ECC_SBE_VOL_DEV: c_uint = 11;

pub const NVML_VALUE_TYPE_DOUBLE: c_uint = 0;
pub const NVML_VALUE_TYPE_UNSIGNED_INT: c_uint = 1;
pub const NVML_VALUE_TYPE_UNSIGNED_LONG: c_uint = 2;
pub const NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: c_uint = 3;
pub const NVML_VALUE_TYPE_SIGNED_LONG_LONG: c_uint = 4;
pub const NVML_VALUE_TYPE_SIGNED_INT: c_uint = 5;
pub const NVML_VALUE_TYPE_UNSIGNED_SHORT: c_uint = 6;

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct NvmlMemory {
    pub total: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct NvmlBar1Memory {
    pub bar1_total: c_ulonglong,
    pub bar1_free: c_ulonglong,
    pub bar1_used: c_ulonglong,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct NvmlUtilization {
    pub gpu: c_uint,
    pub memory: c_uint,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct NvmlEccErrorCounts {
    pub l1_cache: c_ulonglong,
    pub l2_cache: c_ulonglong,
    pub device_memory: c_ulonglong,
    pub register_file: c_ulonglong,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union NvmlValue {
    pub d_val: f64,
    pub si_val: c_int,
    pub ui_val: c_uint,
    pub ul_val: std::os::raw::c_ulong,
    pub ull_val: c_ulonglong,
    pub sll_val: i64,
    pub us_val: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct NvmlFieldValue {
    pub field_id: c_uint,
    pub scope_id: c_uint,
    pub timestamp: i64,
    pub latency_usec: i64,
    pub value_type: c_uint,
    pub nvml_return: NvmlReturn,
    pub value: NvmlValue,
}

impl NvmlFieldValue {
    pub fn request(field_id: c_uint) -> Self {
        NvmlFieldValue {
            field_id,
            scope_id: 0,
            timestamp: 0,
            latency_usec: 0,
            value_type: 0,
            nvml_return: NVML_SUCCESS,
            value: NvmlValue { ull_val: 0 },
        }
    }

    /// The value as an integer, or None when NVML could not read it.
    pub fn as_i64(&self) -> Option<i64> {
        if self.nvml_return != NVML_SUCCESS {
            return None;
        }
        // SAFETY: value_type says which union member NVML wrote.
        unsafe {
            match self.value_type {
                NVML_VALUE_TYPE_DOUBLE => Some(self.value.d_val as i64),
                NVML_VALUE_TYPE_UNSIGNED_INT => Some(i64::from(self.value.ui_val)),
                NVML_VALUE_TYPE_UNSIGNED_LONG => Some(self.value.ul_val as i64),
                NVML_VALUE_TYPE_UNSIGNED_LONG_LONG => Some(self.value.ull_val as i64),
                NVML_VALUE_TYPE_SIGNED_LONG_LONG => Some(self.value.sll_val),
                NVML_VALUE_TYPE_SIGNED_INT => Some(i64::from(self.value.si_val)),
                NVML_VALUE_TYPE_UNSIGNED_SHORT => Some(i64::from(self.value.us_val)),
                _ => None,
            }
        }
    }
}

pub type CStrPtr = *const c_char;
