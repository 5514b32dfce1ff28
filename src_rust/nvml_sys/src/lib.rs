//! The NVML C ABI as plain Rust: handle types, `#[repr(C)]` structs, enum values,
//! return codes, event types and field ids, matching `nvml.h` (NVIDIA/go-nvml,
//! gen/nvml/nvml.h). Shared by the simulated driver (`nvml-sim`) and the stats poller,
//! so both agree on every layout. No dependencies; names follow the C header so a
//! reader can grep one against the other.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

use std::os::raw::{c_char, c_int, c_uint, c_ulong, c_ulonglong};

pub mod fields;
pub use fields::*;

// ---------------------------------------------------------------- handles

/// Opaque targets of the handle pointers; never dereferenced by callers.
#[repr(C)]
pub struct nvmlDevice_st {
    _private: [u8; 0],
}
#[repr(C)]
pub struct nvmlGpuInstance_st {
    _private: [u8; 0],
}
#[repr(C)]
pub struct nvmlComputeInstance_st {
    _private: [u8; 0],
}
#[repr(C)]
pub struct nvmlEventSet_st {
    _private: [u8; 0],
}

pub type nvmlDevice_t = *mut nvmlDevice_st;
pub type nvmlGpuInstance_t = *mut nvmlGpuInstance_st;
pub type nvmlComputeInstance_t = *mut nvmlComputeInstance_st;
pub type nvmlEventSet_t = *mut nvmlEventSet_st;

// C enums are `int`-sized; NVML passes them as unsigned values.
pub type nvmlReturn_t = c_uint;
pub type nvmlEnableState_t = c_uint;
pub type nvmlClockType_t = c_uint;
pub type nvmlClockId_t = c_uint;
pub type nvmlTemperatureSensors_t = c_uint;
pub type nvmlTemperatureThresholds_t = c_uint;
pub type nvmlMemoryErrorType_t = c_uint;
pub type nvmlEccCounterType_t = c_uint;
pub type nvmlMemoryLocation_t = c_uint;
pub type nvmlBrandType_t = c_uint;
pub type nvmlValueType_t = c_uint;
pub type nvmlComputeMode_t = c_uint;
pub type nvmlPstates_t = c_uint;
pub type nvmlPcieUtilCounter_t = c_uint;
pub type nvmlGpuVirtualizationMode_t = c_uint;
pub type nvmlDeviceArchitecture_t = c_uint;
pub type nvmlAffinityScope_t = c_uint;
pub type nvmlPageRetirementCause_t = c_uint;

// ---------------------------------------------------------------- return codes

pub const NVML_SUCCESS: nvmlReturn_t = 0;
pub const NVML_ERROR_UNINITIALIZED: nvmlReturn_t = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: nvmlReturn_t = 2;
pub const NVML_ERROR_NOT_SUPPORTED: nvmlReturn_t = 3;
pub const NVML_ERROR_NO_PERMISSION: nvmlReturn_t = 4;
pub const NVML_ERROR_ALREADY_INITIALIZED: nvmlReturn_t = 5;
pub const NVML_ERROR_NOT_FOUND: nvmlReturn_t = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: nvmlReturn_t = 7;
pub const NVML_ERROR_INSUFFICIENT_POWER: nvmlReturn_t = 8;
pub const NVML_ERROR_DRIVER_NOT_LOADED: nvmlReturn_t = 9;
pub const NVML_ERROR_TIMEOUT: nvmlReturn_t = 10;
pub const NVML_ERROR_IRQ_ISSUE: nvmlReturn_t = 11;
pub const NVML_ERROR_LIBRARY_NOT_FOUND: nvmlReturn_t = 12;
pub const NVML_ERROR_FUNCTION_NOT_FOUND: nvmlReturn_t = 13;
pub const NVML_ERROR_CORRUPTED_INFOROM: nvmlReturn_t = 14;
pub const NVML_ERROR_GPU_IS_LOST: nvmlReturn_t = 15;
pub const NVML_ERROR_RESET_REQUIRED: nvmlReturn_t = 16;
pub const NVML_ERROR_OPERATING_SYSTEM: nvmlReturn_t = 17;
pub const NVML_ERROR_LIB_RM_VERSION_MISMATCH: nvmlReturn_t = 18;
pub const NVML_ERROR_IN_USE: nvmlReturn_t = 19;
pub const NVML_ERROR_MEMORY: nvmlReturn_t = 20;
pub const NVML_ERROR_NO_DATA: nvmlReturn_t = 21;
pub const NVML_ERROR_VGPU_ECC_NOT_SUPPORTED: nvmlReturn_t = 22;
pub const NVML_ERROR_INSUFFICIENT_RESOURCES: nvmlReturn_t = 23;
pub const NVML_ERROR_FREQ_NOT_SUPPORTED: nvmlReturn_t = 24;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: nvmlReturn_t = 25;
pub const NVML_ERROR_DEPRECATED: nvmlReturn_t = 26;
pub const NVML_ERROR_NOT_READY: nvmlReturn_t = 27;
pub const NVML_ERROR_GPU_NOT_FOUND: nvmlReturn_t = 28;
pub const NVML_ERROR_INVALID_STATE: nvmlReturn_t = 29;
pub const NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: nvmlReturn_t = 30;
pub const NVML_ERROR_UNKNOWN: nvmlReturn_t = 999;

/// `[(CODE, "CODE"), ...]`: each code with its C name, written once.
macro_rules! with_names {
    ($($code:ident),* $(,)?) => {
        &[$(($code, stringify!($code))),*]
    };
}

/// Every return code with its C name, for error-name parsing and messages.
pub const RETURN_CODE_NAMES: &[(nvmlReturn_t, &str)] = with_names![
    NVML_SUCCESS,
    NVML_ERROR_UNINITIALIZED,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_ALREADY_INITIALIZED,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_INSUFFICIENT_SIZE,
    NVML_ERROR_INSUFFICIENT_POWER,
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_TIMEOUT,
    NVML_ERROR_IRQ_ISSUE,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_CORRUPTED_INFOROM,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_RESET_REQUIRED,
    NVML_ERROR_OPERATING_SYSTEM,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    NVML_ERROR_IN_USE,
    NVML_ERROR_MEMORY,
    NVML_ERROR_NO_DATA,
    NVML_ERROR_VGPU_ECC_NOT_SUPPORTED,
    NVML_ERROR_INSUFFICIENT_RESOURCES,
    NVML_ERROR_FREQ_NOT_SUPPORTED,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
    NVML_ERROR_DEPRECATED,
    NVML_ERROR_NOT_READY,
    NVML_ERROR_GPU_NOT_FOUND,
    NVML_ERROR_INVALID_STATE,
    NVML_ERROR_RESET_TYPE_NOT_SUPPORTED,
    NVML_ERROR_UNKNOWN,
];

/// The C name of a return code (`"NVML_ERROR_GPU_IS_LOST"`), if it is one.
pub fn return_code_name(code: nvmlReturn_t) -> Option<&'static str> {
    RETURN_CODE_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
}

// ---------------------------------------------------------------- enum values

pub const NVML_FEATURE_DISABLED: nvmlEnableState_t = 0;
pub const NVML_FEATURE_ENABLED: nvmlEnableState_t = 1;

pub const NVML_CLOCK_GRAPHICS: nvmlClockType_t = 0;
pub const NVML_CLOCK_SM: nvmlClockType_t = 1;
pub const NVML_CLOCK_MEM: nvmlClockType_t = 2;
pub const NVML_CLOCK_VIDEO: nvmlClockType_t = 3;
pub const NVML_CLOCK_COUNT: nvmlClockType_t = 4;

pub const NVML_CLOCK_ID_CURRENT: nvmlClockId_t = 0;
pub const NVML_CLOCK_ID_APP_CLOCK_TARGET: nvmlClockId_t = 1;
pub const NVML_CLOCK_ID_APP_CLOCK_DEFAULT: nvmlClockId_t = 2;
pub const NVML_CLOCK_ID_CUSTOMER_BOOST_MAX: nvmlClockId_t = 3;

pub const NVML_TEMPERATURE_GPU: nvmlTemperatureSensors_t = 0;

pub const NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: nvmlTemperatureThresholds_t = 0;
pub const NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: nvmlTemperatureThresholds_t = 1;
pub const NVML_TEMPERATURE_THRESHOLD_MEM_MAX: nvmlTemperatureThresholds_t = 2;
pub const NVML_TEMPERATURE_THRESHOLD_GPU_MAX: nvmlTemperatureThresholds_t = 3;

pub const NVML_MEMORY_ERROR_TYPE_CORRECTED: nvmlMemoryErrorType_t = 0;
pub const NVML_MEMORY_ERROR_TYPE_UNCORRECTED: nvmlMemoryErrorType_t = 1;

pub const NVML_VOLATILE_ECC: nvmlEccCounterType_t = 0;
pub const NVML_AGGREGATE_ECC: nvmlEccCounterType_t = 1;

pub const NVML_MEMORY_LOCATION_L1_CACHE: nvmlMemoryLocation_t = 0;
pub const NVML_MEMORY_LOCATION_L2_CACHE: nvmlMemoryLocation_t = 1;
pub const NVML_MEMORY_LOCATION_DRAM: nvmlMemoryLocation_t = 2;
pub const NVML_MEMORY_LOCATION_DEVICE_MEMORY: nvmlMemoryLocation_t = 2;
pub const NVML_MEMORY_LOCATION_REGISTER_FILE: nvmlMemoryLocation_t = 3;
pub const NVML_MEMORY_LOCATION_TEXTURE_MEMORY: nvmlMemoryLocation_t = 4;
pub const NVML_MEMORY_LOCATION_TEXTURE_SHM: nvmlMemoryLocation_t = 5;
pub const NVML_MEMORY_LOCATION_CBU: nvmlMemoryLocation_t = 6;
pub const NVML_MEMORY_LOCATION_SRAM: nvmlMemoryLocation_t = 7;

pub const NVML_BRAND_UNKNOWN: nvmlBrandType_t = 0;
pub const NVML_BRAND_QUADRO: nvmlBrandType_t = 1;
pub const NVML_BRAND_TESLA: nvmlBrandType_t = 2;
pub const NVML_BRAND_GEFORCE: nvmlBrandType_t = 5;
pub const NVML_BRAND_NVIDIA: nvmlBrandType_t = 14;

pub const NVML_VALUE_TYPE_DOUBLE: nvmlValueType_t = 0;
pub const NVML_VALUE_TYPE_UNSIGNED_INT: nvmlValueType_t = 1;
pub const NVML_VALUE_TYPE_UNSIGNED_LONG: nvmlValueType_t = 2;
pub const NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: nvmlValueType_t = 3;
pub const NVML_VALUE_TYPE_SIGNED_LONG_LONG: nvmlValueType_t = 4;
pub const NVML_VALUE_TYPE_SIGNED_INT: nvmlValueType_t = 5;
pub const NVML_VALUE_TYPE_UNSIGNED_SHORT: nvmlValueType_t = 6;

pub const NVML_COMPUTEMODE_DEFAULT: nvmlComputeMode_t = 0;
pub const NVML_COMPUTEMODE_EXCLUSIVE_THREAD: nvmlComputeMode_t = 1;
pub const NVML_COMPUTEMODE_PROHIBITED: nvmlComputeMode_t = 2;
pub const NVML_COMPUTEMODE_EXCLUSIVE_PROCESS: nvmlComputeMode_t = 3;

pub const NVML_PSTATE_0: nvmlPstates_t = 0;
pub const NVML_PSTATE_15: nvmlPstates_t = 15;
pub const NVML_PSTATE_UNKNOWN: nvmlPstates_t = 32;

pub const NVML_PCIE_UTIL_TX_BYTES: nvmlPcieUtilCounter_t = 0;
pub const NVML_PCIE_UTIL_RX_BYTES: nvmlPcieUtilCounter_t = 1;

pub const NVML_GPU_VIRTUALIZATION_MODE_NONE: nvmlGpuVirtualizationMode_t = 0;

pub const NVML_DEVICE_ARCH_KEPLER: nvmlDeviceArchitecture_t = 2;
pub const NVML_DEVICE_ARCH_MAXWELL: nvmlDeviceArchitecture_t = 3;
pub const NVML_DEVICE_ARCH_PASCAL: nvmlDeviceArchitecture_t = 4;
pub const NVML_DEVICE_ARCH_VOLTA: nvmlDeviceArchitecture_t = 5;
pub const NVML_DEVICE_ARCH_TURING: nvmlDeviceArchitecture_t = 6;
pub const NVML_DEVICE_ARCH_AMPERE: nvmlDeviceArchitecture_t = 7;
pub const NVML_DEVICE_ARCH_ADA: nvmlDeviceArchitecture_t = 8;
pub const NVML_DEVICE_ARCH_HOPPER: nvmlDeviceArchitecture_t = 9;
pub const NVML_DEVICE_ARCH_BLACKWELL: nvmlDeviceArchitecture_t = 10;
pub const NVML_DEVICE_ARCH_RUBIN: nvmlDeviceArchitecture_t = 13;
pub const NVML_DEVICE_ARCH_UNKNOWN: nvmlDeviceArchitecture_t = 0xffff_ffff;

pub const NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: nvmlPageRetirementCause_t = 0;
pub const NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: nvmlPageRetirementCause_t = 1;
pub const NVML_PAGE_RETIREMENT_CAUSE_COUNT: nvmlPageRetirementCause_t = 2;

pub const NVML_AFFINITY_SCOPE_NODE: nvmlAffinityScope_t = 0;
pub const NVML_AFFINITY_SCOPE_SOCKET: nvmlAffinityScope_t = 1;

pub const NVML_INIT_FLAG_NO_GPUS: c_uint = 1;
pub const NVML_INIT_FLAG_NO_ATTACH: c_uint = 2;
pub const NVML_INIT_FLAG_FORCE_INIT: c_uint = 4;

pub const NVML_DEVICE_MIG_DISABLE: c_uint = 0;
pub const NVML_DEVICE_MIG_ENABLE: c_uint = 1;

/// Profile indexes passed to nvmlDeviceGetGpuInstanceProfileInfo (not the profile ids it returns).
pub const NVML_GPU_INSTANCE_PROFILE_1_SLICE: c_uint = 0x0;
pub const NVML_GPU_INSTANCE_PROFILE_2_SLICE: c_uint = 0x1;
pub const NVML_GPU_INSTANCE_PROFILE_3_SLICE: c_uint = 0x2;
pub const NVML_GPU_INSTANCE_PROFILE_4_SLICE: c_uint = 0x3;
pub const NVML_GPU_INSTANCE_PROFILE_7_SLICE: c_uint = 0x4;
pub const NVML_GPU_INSTANCE_PROFILE_8_SLICE: c_uint = 0x5;
pub const NVML_GPU_INSTANCE_PROFILE_6_SLICE: c_uint = 0x6;
pub const NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1: c_uint = 0x7;
pub const NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1: c_uint = 0x8;
pub const NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2: c_uint = 0x9;
pub const NVML_GPU_INSTANCE_PROFILE_COUNT: c_uint = 0x12;
pub const NVML_GPU_INSTANCE_PROFILE_CAPS_P2P: c_uint = 0x1;
pub const NVML_GPU_INSTANCE_PROFILE_CAPS_GFX: c_uint = 0x2;

pub const NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE: c_uint = 0x0;
pub const NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE: c_uint = 0x1;
pub const NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE: c_uint = 0x2;
pub const NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE: c_uint = 0x3;
pub const NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE: c_uint = 0x4;
pub const NVML_COMPUTE_INSTANCE_PROFILE_8_SLICE: c_uint = 0x5;
pub const NVML_COMPUTE_INSTANCE_PROFILE_6_SLICE: c_uint = 0x6;
pub const NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1: c_uint = 0x7;
pub const NVML_COMPUTE_INSTANCE_PROFILE_COUNT: c_uint = 0x9;
pub const NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED: c_uint = 0x0;

// ---------------------------------------------------------------- event types

pub const nvmlEventTypeNone: c_ulonglong = 0x0;
pub const nvmlEventTypeSingleBitEccError: c_ulonglong = 0x1;
pub const nvmlEventTypeDoubleBitEccError: c_ulonglong = 0x2;
pub const nvmlEventTypePState: c_ulonglong = 0x4;
pub const nvmlEventTypeXidCriticalError: c_ulonglong = 0x8;
pub const nvmlEventTypeClock: c_ulonglong = 0x10;
pub const nvmlEventTypePowerSourceChange: c_ulonglong = 0x80;
pub const nvmlEventTypeSingleBitEccErrorStorm: c_ulonglong = 0x200;
pub const nvmlEventTypeDramRetirementEvent: c_ulonglong = 0x400;
pub const nvmlEventTypeDramRetirementFailure: c_ulonglong = 0x800;
pub const nvmlEventTypeNonFatalPoisonError: c_ulonglong = 0x1000;
pub const nvmlEventTypeFatalPoisonError: c_ulonglong = 0x2000;
pub const nvmlEventTypeGpuUnavailableError: c_ulonglong = 0x4000;
pub const nvmlEventTypeGpuRecoveryAction: c_ulonglong = 0x8000;

// ---------------------------------------------------------------- buffer sizes

pub const NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE: usize = 32;
pub const NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE: usize = 16;
pub const NVML_DEVICE_UUID_BUFFER_SIZE: usize = 80;
pub const NVML_DEVICE_UUID_V2_BUFFER_SIZE: usize = 96;
pub const NVML_DEVICE_PART_NUMBER_BUFFER_SIZE: usize = 80;
pub const NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE: usize = 80;
pub const NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE: usize = 80;
pub const NVML_DEVICE_NAME_BUFFER_SIZE: usize = 64;
pub const NVML_DEVICE_NAME_V2_BUFFER_SIZE: usize = 96;
pub const NVML_DEVICE_SERIAL_BUFFER_SIZE: usize = 30;
pub const NVML_DEVICE_VBIOS_VERSION_BUFFER_SIZE: usize = 32;

// ---------------------------------------------------------------- structs

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlPciInfo_t {
    pub busIdLegacy: [c_char; NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pciDeviceId: c_uint,
    pub pciSubSystemId: c_uint,
    pub busId: [c_char; NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlEccErrorCounts_t {
    pub l1Cache: c_ulonglong,
    pub l2Cache: c_ulonglong,
    pub deviceMemory: c_ulonglong,
    pub registerFile: c_ulonglong,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlUtilization_t {
    pub gpu: c_uint,
    pub memory: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlMemory_t {
    pub total: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlMemory_v2_t {
    pub version: c_uint,
    pub total: c_ulonglong,
    pub reserved: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlBAR1Memory_t {
    pub bar1Total: c_ulonglong,
    pub bar1Free: c_ulonglong,
    pub bar1Used: c_ulonglong,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlProcessInfo_t {
    pub pid: c_uint,
    pub usedGpuMemory: c_ulonglong,
    pub gpuInstanceId: c_uint,
    pub computeInstanceId: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlDeviceAttributes_t {
    pub multiprocessorCount: c_uint,
    pub sharedCopyEngineCount: c_uint,
    pub sharedDecoderCount: c_uint,
    pub sharedEncoderCount: c_uint,
    pub sharedJpegCount: c_uint,
    pub sharedOfaCount: c_uint,
    pub gpuInstanceSliceCount: c_uint,
    pub computeInstanceSliceCount: c_uint,
    pub memorySizeMB: c_ulonglong,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union nvmlValue_t {
    pub dVal: f64,
    pub siVal: c_int,
    pub uiVal: c_uint,
    pub ulVal: c_ulong,
    pub ullVal: c_ulonglong,
    pub sllVal: i64,
    pub usVal: u16,
}

impl std::fmt::Debug for nvmlValue_t {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: every bit pattern is a valid u64; the union is 8 bytes.
        write!(f, "nvmlValue_t({:#x})", unsafe { self.ullVal })
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlFieldValue_t {
    pub fieldId: c_uint,
    pub scopeId: c_uint,
    pub timestamp: i64,
    pub latencyUsec: i64,
    pub valueType: nvmlValueType_t,
    pub nvmlReturn: nvmlReturn_t,
    pub value: nvmlValue_t,
}

impl nvmlFieldValue_t {
    /// A request for one field (scope 0), as passed in to nvmlDeviceGetFieldValues.
    pub const fn request(fieldId: c_uint) -> Self {
        nvmlFieldValue_t {
            fieldId,
            scopeId: 0,
            timestamp: 0,
            latencyUsec: 0,
            valueType: 0,
            nvmlReturn: NVML_SUCCESS,
            value: nvmlValue_t { ullVal: 0 },
        }
    }

    /// The answered value as an integer, or None when NVML could not read it or
    /// the value type is unknown.
    pub fn as_i64(&self) -> Option<i64> {
        if self.nvmlReturn != NVML_SUCCESS {
            return None;
        }
        // SAFETY: valueType names the union member NVML wrote; every member is
        // plain data.
        unsafe {
            match self.valueType {
                NVML_VALUE_TYPE_DOUBLE => Some(self.value.dVal as i64),
                NVML_VALUE_TYPE_UNSIGNED_INT => Some(i64::from(self.value.uiVal)),
                NVML_VALUE_TYPE_UNSIGNED_LONG => Some(self.value.ulVal as i64),
                NVML_VALUE_TYPE_UNSIGNED_LONG_LONG => Some(self.value.ullVal as i64),
                NVML_VALUE_TYPE_SIGNED_LONG_LONG => Some(self.value.sllVal),
                NVML_VALUE_TYPE_SIGNED_INT => Some(i64::from(self.value.siVal)),
                NVML_VALUE_TYPE_UNSIGNED_SHORT => Some(i64::from(self.value.usVal)),
                _ => None,
            }
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlEventData_t {
    pub device: nvmlDevice_t,
    pub eventType: c_ulonglong,
    pub eventData: c_ulonglong,
    pub gpuInstanceId: c_uint,
    pub computeInstanceId: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlGpuInstancePlacement_t {
    pub start: c_uint,
    pub size: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlGpuInstanceProfileInfo_t {
    pub id: c_uint,
    pub isP2pSupported: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub copyEngineCount: c_uint,
    pub decoderCount: c_uint,
    pub encoderCount: c_uint,
    pub jpegCount: c_uint,
    pub ofaCount: c_uint,
    pub memorySizeMB: c_ulonglong,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlGpuInstanceProfileInfo_v2_t {
    pub version: c_uint,
    pub id: c_uint,
    pub isP2pSupported: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub copyEngineCount: c_uint,
    pub decoderCount: c_uint,
    pub encoderCount: c_uint,
    pub jpegCount: c_uint,
    pub ofaCount: c_uint,
    pub memorySizeMB: c_ulonglong,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlGpuInstanceProfileInfo_v3_t {
    pub version: c_uint,
    pub id: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub copyEngineCount: c_uint,
    pub decoderCount: c_uint,
    pub encoderCount: c_uint,
    pub jpegCount: c_uint,
    pub ofaCount: c_uint,
    pub memorySizeMB: c_ulonglong,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
    pub capabilities: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlGpuInstanceInfo_t {
    pub device: nvmlDevice_t,
    pub id: c_uint,
    pub profileId: c_uint,
    pub placement: nvmlGpuInstancePlacement_t,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlComputeInstancePlacement_t {
    pub start: c_uint,
    pub size: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlComputeInstanceProfileInfo_t {
    pub id: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub sharedCopyEngineCount: c_uint,
    pub sharedDecoderCount: c_uint,
    pub sharedEncoderCount: c_uint,
    pub sharedJpegCount: c_uint,
    pub sharedOfaCount: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlComputeInstanceProfileInfo_v2_t {
    pub version: c_uint,
    pub id: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub sharedCopyEngineCount: c_uint,
    pub sharedDecoderCount: c_uint,
    pub sharedEncoderCount: c_uint,
    pub sharedJpegCount: c_uint,
    pub sharedOfaCount: c_uint,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlComputeInstanceProfileInfo_v3_t {
    pub version: c_uint,
    pub id: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub sharedCopyEngineCount: c_uint,
    pub sharedDecoderCount: c_uint,
    pub sharedEncoderCount: c_uint,
    pub sharedJpegCount: c_uint,
    pub sharedOfaCount: c_uint,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
    pub capabilities: c_uint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlComputeInstanceInfo_t {
    pub device: nvmlDevice_t,
    pub gpuInstance: nvmlGpuInstance_t,
    pub id: c_uint,
    pub profileId: c_uint,
    pub placement: nvmlComputeInstancePlacement_t,
}

/// nvmlDeviceGetRemappedRows_v2 (driver 580 and later). Unlike most `_v2` structs
/// it carries no version field.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlRemappedRowsInfo_v2_t {
    pub corrActiveRemaps: c_uint,
    pub corrInactiveRemaps: c_uint,
    pub uncActiveRemaps: c_uint,
    pub uncInactiveRemaps: c_uint,
    pub bPending: c_uint,
    pub bFailureOccurred: c_uint,
}

// ---------------------------------------------------------------- NVLink and the fabric

/// Links a GPU can have (nvmlDeviceGetNvLink* take 0 .. this - 1).
pub const NVML_NVLINK_MAX_LINKS: c_uint = 36;

pub type nvmlNvLinkCapability_t = c_uint;
pub const NVML_NVLINK_CAP_P2P_SUPPORTED: nvmlNvLinkCapability_t = 0;
pub const NVML_NVLINK_CAP_SYSMEM_ACCESS: nvmlNvLinkCapability_t = 1;
pub const NVML_NVLINK_CAP_P2P_ATOMICS: nvmlNvLinkCapability_t = 2;
pub const NVML_NVLINK_CAP_SYSMEM_ATOMICS: nvmlNvLinkCapability_t = 3;
pub const NVML_NVLINK_CAP_SLI_BRIDGE: nvmlNvLinkCapability_t = 4;
pub const NVML_NVLINK_CAP_VALID: nvmlNvLinkCapability_t = 5;
pub const NVML_NVLINK_CAP_COUNT: nvmlNvLinkCapability_t = 6;

/// nvmlNvlinkVersion_t
pub const NVML_NVLINK_VERSION_INVALID: c_uint = 0;
pub const NVML_NVLINK_VERSION_1_0: c_uint = 1;
pub const NVML_NVLINK_VERSION_2_0: c_uint = 2;
pub const NVML_NVLINK_VERSION_2_2: c_uint = 3;
pub const NVML_NVLINK_VERSION_3_0: c_uint = 4;
pub const NVML_NVLINK_VERSION_3_1: c_uint = 5;
pub const NVML_NVLINK_VERSION_4_0: c_uint = 6;
pub const NVML_NVLINK_VERSION_5_0: c_uint = 7;
pub const NVML_NVLINK_VERSION_6_0: c_uint = 8;

/// NVML_FI_DEV_NVLINK_GET_STATE values.
pub const NVML_NVLINK_STATE_INACTIVE: c_uint = 0;
pub const NVML_NVLINK_STATE_ACTIVE: c_uint = 1;
pub const NVML_NVLINK_STATE_SLEEP: c_uint = 2;

pub const NVML_GPU_FABRIC_UUID_LEN: usize = 16;

/// nvmlGpuFabricState_t (an unsigned char in the structs).
pub type nvmlGpuFabricState_t = u8;
pub const NVML_GPU_FABRIC_STATE_NOT_SUPPORTED: nvmlGpuFabricState_t = 0;
pub const NVML_GPU_FABRIC_STATE_NOT_STARTED: nvmlGpuFabricState_t = 1;
pub const NVML_GPU_FABRIC_STATE_IN_PROGRESS: nvmlGpuFabricState_t = 2;
pub const NVML_GPU_FABRIC_STATE_COMPLETED: nvmlGpuFabricState_t = 3;

// The fabric health mask: 2-bit fields (4 bits for the configuration) at these shifts.
pub const NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_DEGRADED_BW: c_uint = 0;
pub const NVML_GPU_FABRIC_HEALTH_MASK_WIDTH_DEGRADED_BW: c_uint = 0x3;
pub const NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_NOT_SUPPORTED: c_uint = 0;
pub const NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_TRUE: c_uint = 1;
pub const NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_FALSE: c_uint = 2;
pub const NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_ROUTE_RECOVERY: c_uint = 2;
pub const NVML_GPU_FABRIC_HEALTH_MASK_WIDTH_ROUTE_RECOVERY: c_uint = 0x3;
pub const NVML_GPU_FABRIC_HEALTH_MASK_ROUTE_RECOVERY_TRUE: c_uint = 1;
pub const NVML_GPU_FABRIC_HEALTH_MASK_ROUTE_RECOVERY_FALSE: c_uint = 2;
pub const NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_ROUTE_UNHEALTHY: c_uint = 4;
pub const NVML_GPU_FABRIC_HEALTH_MASK_WIDTH_ROUTE_UNHEALTHY: c_uint = 0x3;
pub const NVML_GPU_FABRIC_HEALTH_MASK_ROUTE_UNHEALTHY_TRUE: c_uint = 1;
pub const NVML_GPU_FABRIC_HEALTH_MASK_ROUTE_UNHEALTHY_FALSE: c_uint = 2;
pub const NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_ACCESS_TIMEOUT_RECOVERY: c_uint = 6;
pub const NVML_GPU_FABRIC_HEALTH_MASK_WIDTH_ACCESS_TIMEOUT_RECOVERY: c_uint = 0x3;
pub const NVML_GPU_FABRIC_HEALTH_MASK_ACCESS_TIMEOUT_RECOVERY_TRUE: c_uint = 1;
pub const NVML_GPU_FABRIC_HEALTH_MASK_ACCESS_TIMEOUT_RECOVERY_FALSE: c_uint = 2;
pub const NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_INCORRECT_CONFIGURATION: c_uint = 8;
pub const NVML_GPU_FABRIC_HEALTH_MASK_WIDTH_INCORRECT_CONFIGURATION: c_uint = 0xf;
pub const NVML_GPU_FABRIC_HEALTH_MASK_INCORRECT_CONFIGURATION_NONE: c_uint = 1;
pub const NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_PARTITION_ASSIGNED: c_uint = 12;
pub const NVML_GPU_FABRIC_HEALTH_MASK_WIDTH_PARTITION_ASSIGNED: c_uint = 0x3;

pub const NVML_GPU_FABRIC_HEALTH_SUMMARY_NOT_SUPPORTED: u8 = 0;
pub const NVML_GPU_FABRIC_HEALTH_SUMMARY_HEALTHY: u8 = 1;
pub const NVML_GPU_FABRIC_HEALTH_SUMMARY_UNHEALTHY: u8 = 2;
pub const NVML_GPU_FABRIC_HEALTH_SUMMARY_LIMITED_CAPACITY: u8 = 3;

/// nvmlDeviceGetGpuFabricInfo (the unversioned call). `state` is one byte; the
/// three bytes after it are padding, written as zeros (some bindings read a
/// 4-byte state).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlGpuFabricInfo_t {
    pub clusterUuid: [u8; NVML_GPU_FABRIC_UUID_LEN],
    pub status: nvmlReturn_t,
    pub cliqueId: c_uint,
    pub state: nvmlGpuFabricState_t,
    pub _pad: [u8; 3],
}

/// nvmlDeviceGetGpuFabricInfoV with version nvmlGpuFabricInfo_v2.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlGpuFabricInfo_v2_t {
    pub version: c_uint,
    pub clusterUuid: [u8; NVML_GPU_FABRIC_UUID_LEN],
    pub status: nvmlReturn_t,
    pub cliqueId: c_uint,
    pub state: nvmlGpuFabricState_t,
    pub _pad: [u8; 3],
    pub healthMask: c_uint,
}

/// nvmlDeviceGetGpuFabricInfoV with version nvmlGpuFabricInfo_v3
/// (nvmlGpuFabricInfoV_t in the current header).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlGpuFabricInfo_v3_t {
    pub version: c_uint,
    pub clusterUuid: [u8; NVML_GPU_FABRIC_UUID_LEN],
    pub status: nvmlReturn_t,
    pub cliqueId: c_uint,
    pub state: nvmlGpuFabricState_t,
    pub _pad: [u8; 3],
    pub healthMask: c_uint,
    pub healthSummary: u8,
    pub _pad2: [u8; 3],
}

// ---------------------------------------------------------------- GPM

/// An opaque sample buffer from nvmlGpmSampleAlloc.
#[repr(C)]
pub struct nvmlGpmSample_st {
    _private: [u8; 0],
}
pub type nvmlGpmSample_t = *mut nvmlGpmSample_st;

// nvmlGpmMetricId_t: the metrics the plugin reads, and the array bound of the
// header these layouts follow.
pub const NVML_GPM_METRIC_GRAPHICS_UTIL: c_uint = 1;
pub const NVML_GPM_METRIC_SM_UTIL: c_uint = 2;
pub const NVML_GPM_METRIC_SM_OCCUPANCY: c_uint = 3;
pub const NVML_GPM_METRIC_INTEGER_UTIL: c_uint = 4;
pub const NVML_GPM_METRIC_ANY_TENSOR_UTIL: c_uint = 5;
pub const NVML_GPM_METRIC_DFMA_TENSOR_UTIL: c_uint = 6;
pub const NVML_GPM_METRIC_HMMA_TENSOR_UTIL: c_uint = 7;
pub const NVML_GPM_METRIC_IMMA_TENSOR_UTIL: c_uint = 9;
pub const NVML_GPM_METRIC_DRAM_BW_UTIL: c_uint = 10;
pub const NVML_GPM_METRIC_FP64_UTIL: c_uint = 11;
pub const NVML_GPM_METRIC_FP32_UTIL: c_uint = 12;
pub const NVML_GPM_METRIC_FP16_UTIL: c_uint = 13;
/// MiB/s
pub const NVML_GPM_METRIC_PCIE_TX_PER_SEC: c_uint = 20;
pub const NVML_GPM_METRIC_PCIE_RX_PER_SEC: c_uint = 21;
pub const NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: c_uint = 60;
pub const NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: c_uint = 61;
pub const NVML_GPM_METRIC_MAX: usize = 477;

pub const NVML_GPM_METRICS_GET_VERSION: c_uint = 1;
pub const NVML_GPM_SUPPORT_VERSION: c_uint = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlGpmMetricInfo_t {
    pub shortName: *mut c_char,
    pub longName: *mut c_char,
    pub unit: *mut c_char,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlGpmMetric_t {
    pub metricId: c_uint,
    pub nvmlReturn: nvmlReturn_t,
    pub value: f64,
    pub metricInfo: nvmlGpmMetricInfo_t,
}

impl nvmlGpmMetric_t {
    pub const fn request(metricId: c_uint) -> Self {
        nvmlGpmMetric_t {
            metricId,
            nvmlReturn: NVML_SUCCESS,
            value: 0.0,
            metricInfo: nvmlGpmMetricInfo_t {
                shortName: std::ptr::null_mut(),
                longName: std::ptr::null_mut(),
                unit: std::ptr::null_mut(),
            },
        }
    }
}

/// The argument of nvmlGpmMetricsGet. NVML reads and writes only the first
/// `numMetrics` entries of `metrics`, so newer headers (a larger array) and
/// this one share a layout for every entry used.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvmlGpmMetricsGet_t {
    pub version: c_uint,
    pub numMetrics: c_uint,
    pub sample1: nvmlGpmSample_t,
    pub sample2: nvmlGpmSample_t,
    pub metrics: [nvmlGpmMetric_t; NVML_GPM_METRIC_MAX],
}

/// The fixed part of nvmlGpmMetricsGet_t, before `metrics`.
pub const NVML_GPM_METRICS_GET_HEADER: usize = 24;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlGpmSupport_t {
    pub version: c_uint,
    pub isSupportedDevice: c_uint,
}

// ---------------------------------------------------------------- struct versions

/// `NVML_STRUCT_VERSION(data, ver)`: the struct size with the version in the top byte.
pub const fn nvml_struct_version(size: usize, ver: u32) -> c_uint {
    (size as c_uint) | (ver << 24)
}

pub const nvmlMemory_v2: c_uint = nvml_struct_version(std::mem::size_of::<nvmlMemory_v2_t>(), 2);
pub const nvmlGpuInstanceProfileInfo_v2: c_uint =
    nvml_struct_version(std::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>(), 2);
pub const nvmlGpuInstanceProfileInfo_v3: c_uint =
    nvml_struct_version(std::mem::size_of::<nvmlGpuInstanceProfileInfo_v3_t>(), 3);
pub const nvmlComputeInstanceProfileInfo_v2: c_uint = nvml_struct_version(
    std::mem::size_of::<nvmlComputeInstanceProfileInfo_v2_t>(),
    2,
);
pub const nvmlComputeInstanceProfileInfo_v3: c_uint = nvml_struct_version(
    std::mem::size_of::<nvmlComputeInstanceProfileInfo_v3_t>(),
    3,
);
pub const nvmlGpuFabricInfo_v2: c_uint =
    nvml_struct_version(std::mem::size_of::<nvmlGpuFabricInfo_v2_t>(), 2);
pub const nvmlGpuFabricInfo_v3: c_uint =
    nvml_struct_version(std::mem::size_of::<nvmlGpuFabricInfo_v3_t>(), 3);

// ---------------------------------------------------------------- function signatures
//
// Pointer types for the entry points the stats poller and the simulator share; a poller
// can `dlsym` a name and transmute to these, and the simulator checks its exports against
// them at compile time.

pub type nvmlInit_v2_fn = unsafe extern "C" fn() -> nvmlReturn_t;
pub type nvmlInitWithFlags_fn = unsafe extern "C" fn(c_uint) -> nvmlReturn_t;
pub type nvmlShutdown_fn = unsafe extern "C" fn() -> nvmlReturn_t;
pub type nvmlErrorString_fn = unsafe extern "C" fn(nvmlReturn_t) -> *const c_char;
pub type nvmlSystemGetDriverVersion_fn = unsafe extern "C" fn(*mut c_char, c_uint) -> nvmlReturn_t;
pub type nvmlSystemGetCudaDriverVersion_fn = unsafe extern "C" fn(*mut c_int) -> nvmlReturn_t;
pub type nvmlDeviceGetCount_v2_fn = unsafe extern "C" fn(*mut c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetHandleByIndex_v2_fn =
    unsafe extern "C" fn(c_uint, *mut nvmlDevice_t) -> nvmlReturn_t;
pub type nvmlDeviceGetHandleByUUID_fn =
    unsafe extern "C" fn(*const c_char, *mut nvmlDevice_t) -> nvmlReturn_t;
pub type nvmlDeviceGetString_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut c_char, c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetUint_fn = unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetUlonglong_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut c_ulonglong) -> nvmlReturn_t;
pub type nvmlDeviceGetMemoryInfo_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_t) -> nvmlReturn_t;
pub type nvmlDeviceGetMemoryInfo_v2_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_v2_t) -> nvmlReturn_t;
pub type nvmlDeviceGetBAR1MemoryInfo_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlBAR1Memory_t) -> nvmlReturn_t;
pub type nvmlDeviceGetUtilizationRates_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlUtilization_t) -> nvmlReturn_t;
pub type nvmlDeviceGetCodecUtilization_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetTemperature_fn =
    unsafe extern "C" fn(nvmlDevice_t, nvmlTemperatureSensors_t, *mut c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetClockInfo_fn =
    unsafe extern "C" fn(nvmlDevice_t, nvmlClockType_t, *mut c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetPcieThroughput_fn =
    unsafe extern "C" fn(nvmlDevice_t, nvmlPcieUtilCounter_t, *mut c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetTotalEccErrors_fn = unsafe extern "C" fn(
    nvmlDevice_t,
    nvmlMemoryErrorType_t,
    nvmlEccCounterType_t,
    *mut c_ulonglong,
) -> nvmlReturn_t;
pub type nvmlDeviceGetDetailedEccErrors_fn = unsafe extern "C" fn(
    nvmlDevice_t,
    nvmlMemoryErrorType_t,
    nvmlEccCounterType_t,
    *mut nvmlEccErrorCounts_t,
) -> nvmlReturn_t;
pub type nvmlDeviceGetMemoryErrorCounter_fn = unsafe extern "C" fn(
    nvmlDevice_t,
    nvmlMemoryErrorType_t,
    nvmlEccCounterType_t,
    nvmlMemoryLocation_t,
    *mut c_ulonglong,
) -> nvmlReturn_t;
pub type nvmlDeviceGetPciInfo_v3_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlPciInfo_t) -> nvmlReturn_t;
pub type nvmlDeviceGetFieldValues_fn =
    unsafe extern "C" fn(nvmlDevice_t, c_int, *mut nvmlFieldValue_t) -> nvmlReturn_t;
pub type nvmlDeviceGetMigMode_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetMigDeviceHandleByIndex_fn =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlDevice_t) -> nvmlReturn_t;
pub type nvmlDeviceGetDeviceHandleFromMigDeviceHandle_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlDevice_t) -> nvmlReturn_t;
pub type nvmlEventSetCreate_fn = unsafe extern "C" fn(*mut nvmlEventSet_t) -> nvmlReturn_t;
pub type nvmlDeviceRegisterEvents_fn =
    unsafe extern "C" fn(nvmlDevice_t, c_ulonglong, nvmlEventSet_t) -> nvmlReturn_t;
pub type nvmlEventSetWait_v2_fn =
    unsafe extern "C" fn(nvmlEventSet_t, *mut nvmlEventData_t, c_uint) -> nvmlReturn_t;
pub type nvmlEventSetFree_fn = unsafe extern "C" fn(nvmlEventSet_t) -> nvmlReturn_t;
pub type nvmlDeviceGetRetiredPagesPendingStatus_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlEnableState_t) -> nvmlReturn_t;
pub type nvmlDeviceGetRetiredPages_fn = unsafe extern "C" fn(
    nvmlDevice_t,
    nvmlPageRetirementCause_t,
    *mut c_uint,
    *mut c_ulonglong,
) -> nvmlReturn_t;
pub type nvmlDeviceGetRetiredPages_v2_fn = unsafe extern "C" fn(
    nvmlDevice_t,
    nvmlPageRetirementCause_t,
    *mut c_uint,
    *mut c_ulonglong,
    *mut c_ulonglong,
) -> nvmlReturn_t;
pub type nvmlDeviceGetRemappedRows_fn = unsafe extern "C" fn(
    nvmlDevice_t,
    *mut c_uint,
    *mut c_uint,
    *mut c_uint,
    *mut c_uint,
) -> nvmlReturn_t;
pub type nvmlDeviceGetRemappedRows_v2_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlRemappedRowsInfo_v2_t) -> nvmlReturn_t;
pub type nvmlDeviceGetGpuInstanceId_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetGpuFabricInfo_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlGpuFabricInfo_t) -> nvmlReturn_t;
pub type nvmlDeviceGetGpuFabricInfoV_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlGpuFabricInfo_v3_t) -> nvmlReturn_t;
pub type nvmlDeviceGetNvLinkState_fn =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlEnableState_t) -> nvmlReturn_t;
pub type nvmlDeviceGetNvLinkVersion_fn =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut c_uint) -> nvmlReturn_t;
pub type nvmlDeviceGetNvLinkCapability_fn =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, nvmlNvLinkCapability_t, *mut c_uint) -> nvmlReturn_t;
pub type nvmlGpmQueryDeviceSupport_fn =
    unsafe extern "C" fn(nvmlDevice_t, *mut nvmlGpmSupport_t) -> nvmlReturn_t;
pub type nvmlGpmSampleAlloc_fn = unsafe extern "C" fn(*mut nvmlGpmSample_t) -> nvmlReturn_t;
pub type nvmlGpmSampleFree_fn = unsafe extern "C" fn(nvmlGpmSample_t) -> nvmlReturn_t;
pub type nvmlGpmSampleGet_fn = unsafe extern "C" fn(nvmlDevice_t, nvmlGpmSample_t) -> nvmlReturn_t;
pub type nvmlGpmMigSampleGet_fn =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, nvmlGpmSample_t) -> nvmlReturn_t;
pub type nvmlGpmMetricsGet_fn = unsafe extern "C" fn(*mut nvmlGpmMetricsGet_t) -> nvmlReturn_t;

#[cfg(test)]
mod layout_tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// Checks a struct against nvml.h: the offsets of the fields listed, then its size.
    macro_rules! layout {
        ($t:ty { $($field:ident: $offset:expr),* $(,)? } size $size:expr) => {
            $(assert_eq!(
                offset_of!($t, $field),
                $offset,
                concat!(stringify!($t), ".", stringify!($field))
            );)*
            assert_eq!(size_of::<$t>(), $size, concat!("size of ", stringify!($t)));
        };
    }

    // Offsets and sizes worked out by hand from nvml.h for LP64 (x86_64, aarch64).
    #[test]
    fn pci_info() {
        layout!(nvmlPciInfo_t {
            busIdLegacy: 0, domain: 16, bus: 20, device: 24, pciDeviceId: 28,
            pciSubSystemId: 32, busId: 36,
        } size 68);
        assert_eq!(align_of::<nvmlPciInfo_t>(), 4);
    }

    #[test]
    fn memory() {
        layout!(nvmlMemory_t { free: 8, used: 16 } size 24);
        layout!(nvmlMemory_v2_t { version: 0, total: 8, reserved: 16, free: 24, used: 32 } size 40);
        assert_eq!(nvmlMemory_v2, 0x0200_0028);
        layout!(nvmlBAR1Memory_t { bar1Used: 16 } size 24);
    }

    #[test]
    fn small_structs() {
        layout!(nvmlUtilization_t {} size 8);
        layout!(nvmlEccErrorCounts_t { deviceMemory: 16, registerFile: 24 } size 32);
        layout!(nvmlProcessInfo_t { usedGpuMemory: 8, gpuInstanceId: 16 } size 24);
        layout!(nvmlDeviceAttributes_t { memorySizeMB: 32 } size 40);
    }

    #[test]
    fn remapped_rows_v2() {
        layout!(nvmlRemappedRowsInfo_v2_t { uncActiveRemaps: 8, bFailureOccurred: 20 } size 24);
    }

    #[test]
    fn fabric_info() {
        layout!(nvmlGpuFabricInfo_t { status: 16, cliqueId: 20, state: 24 } size 28);
        layout!(nvmlGpuFabricInfo_v2_t {
            clusterUuid: 4, status: 20, cliqueId: 24, state: 28, healthMask: 32,
        } size 36);
        assert_eq!(nvmlGpuFabricInfo_v2, 0x0200_0024);
        layout!(nvmlGpuFabricInfo_v3_t { healthSummary: 36 } size 40);
        assert_eq!(nvmlGpuFabricInfo_v3, 0x0300_0028);
    }

    #[test]
    fn gpm() {
        layout!(nvmlGpmMetric_t { value: 8, metricInfo: 16 } size 40);
        // nvml.h 13.5: 477 metric slots, 19,104 bytes.
        layout!(nvmlGpmMetricsGet_t {
            sample1: 8, sample2: 16, metrics: NVML_GPM_METRICS_GET_HEADER,
        } size 19_104);
        layout!(nvmlGpmSupport_t {} size 8);
    }

    #[test]
    fn field_value() {
        assert_eq!(size_of::<nvmlValue_t>(), 8);
        layout!(nvmlFieldValue_t {
            fieldId: 0, scopeId: 4, timestamp: 8, latencyUsec: 16, valueType: 24,
            nvmlReturn: 28, value: 32,
        } size 40);
    }

    #[test]
    fn field_value_reads() {
        let mut v = nvmlFieldValue_t::request(NVML_FI_DEV_ECC_SBE_VOL_L2);
        assert_eq!(v.fieldId, 9);
        v.valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        v.value = nvmlValue_t { ullVal: 42 };
        assert_eq!(v.as_i64(), Some(42));
        v.valueType = NVML_VALUE_TYPE_SIGNED_INT;
        v.value = nvmlValue_t { siVal: -3 };
        assert_eq!(v.as_i64(), Some(-3));
        v.valueType = NVML_VALUE_TYPE_DOUBLE;
        v.value = nvmlValue_t { dVal: 7.9 };
        assert_eq!(v.as_i64(), Some(7));
        v.valueType = 99;
        assert_eq!(v.as_i64(), None);
        v.valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
        v.nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        assert_eq!(v.as_i64(), None);
    }

    #[test]
    fn event_data() {
        layout!(nvmlEventData_t {
            device: 0, eventType: 8, eventData: 16, gpuInstanceId: 24, computeInstanceId: 28,
        } size 32);
    }

    #[test]
    fn mig_structs() {
        layout!(nvmlGpuInstanceProfileInfo_t { memorySizeMB: 40 } size 48);
        layout!(nvmlGpuInstanceProfileInfo_v2_t { memorySizeMB: 48, name: 56 } size 152);
        assert_eq!(nvmlGpuInstanceProfileInfo_v2, 0x0200_0098);
        layout!(nvmlGpuInstanceProfileInfo_v3_t { memorySizeMB: 40, capabilities: 144 } size 152);
        layout!(nvmlComputeInstanceProfileInfo_t {} size 36);
        layout!(nvmlComputeInstanceProfileInfo_v2_t { name: 40 } size 136);
        assert_eq!(nvmlComputeInstanceProfileInfo_v2, 0x0200_0088);
        layout!(nvmlComputeInstanceProfileInfo_v3_t {} size 140);
        layout!(nvmlGpuInstanceInfo_t { id: 8, profileId: 12, placement: 16 } size 24);
        layout!(nvmlComputeInstanceInfo_t { gpuInstance: 8, id: 16, placement: 24 } size 32);
    }

    #[test]
    fn field_ids() {
        assert_eq!(NVML_FI_DEV_ECC_SBE_VOL_TOTAL, 3);
        assert_eq!(NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, 83);
        assert_eq!(NVML_FI_DEV_POWER_INSTANT, 186);
        assert_eq!(NVML_FI_MAX, 310);
    }

    #[test]
    fn return_names() {
        assert_eq!(
            return_code_name(NVML_ERROR_GPU_IS_LOST),
            Some("NVML_ERROR_GPU_IS_LOST")
        );
        assert_eq!(return_code_name(12345), None);
    }
}
