//! Ids of the per-device entry points, so faults and latency can be set per function
//! by name (`"nvmlDeviceGetPowerUsage"`) and checked with one array index per call.

macro_rules! device_functions {
    ($($name:ident),* $(,)?) => {
        #[allow(non_camel_case_types, clippy::enum_variant_names)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Fn { $($name),* }

        /// Base names (no `_v2`/`_v3` suffix), indexed by `Fn as usize`.
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

device_functions!(
    nvmlDeviceGetUUID,
    nvmlDeviceGetName,
    nvmlDeviceGetBrand,
    nvmlDeviceGetIndex,
    nvmlDeviceGetMinorNumber,
    nvmlDeviceGetSerial,
    nvmlDeviceGetVbiosVersion,
    nvmlDeviceGetBoardId,
    nvmlDeviceGetMemoryInfo,
    nvmlDeviceGetBAR1MemoryInfo,
    nvmlDeviceGetPowerUsage,
    nvmlDeviceGetPowerManagementLimit,
    nvmlDeviceGetPowerManagementDefaultLimit,
    nvmlDeviceGetPowerManagementLimitConstraints,
    nvmlDeviceGetEnforcedPowerLimit,
    nvmlDeviceGetTotalEnergyConsumption,
    nvmlDeviceGetTemperature,
    nvmlDeviceGetTemperatureThreshold,
    nvmlDeviceGetUtilizationRates,
    nvmlDeviceGetEncoderUtilization,
    nvmlDeviceGetDecoderUtilization,
    nvmlDeviceGetTotalEccErrors,
    nvmlDeviceGetDetailedEccErrors,
    nvmlDeviceGetMemoryErrorCounter,
    nvmlDeviceGetEccMode,
    nvmlDeviceGetClockInfo,
    nvmlDeviceGetMaxClockInfo,
    nvmlDeviceGetClock,
    nvmlDeviceGetPciInfo,
    nvmlDeviceGetMaxPcieLinkGeneration,
    nvmlDeviceGetMaxPcieLinkWidth,
    nvmlDeviceGetCurrPcieLinkGeneration,
    nvmlDeviceGetCurrPcieLinkWidth,
    nvmlDeviceGetPcieThroughput,
    nvmlDeviceGetDisplayMode,
    nvmlDeviceGetDisplayActive,
    nvmlDeviceGetPersistenceMode,
    nvmlDeviceGetComputeMode,
    nvmlDeviceGetPerformanceState,
    nvmlDeviceGetFanSpeed,
    nvmlDeviceGetCudaComputeCapability,
    nvmlDeviceGetArchitecture,
    nvmlDeviceGetNumaNodeId,
    nvmlDeviceGetCpuAffinity,
    nvmlDeviceGetMemoryAffinity,
    nvmlDeviceGetMigMode,
    nvmlDeviceGetMaxMigDeviceCount,
    nvmlDeviceGetMigDeviceHandleByIndex,
    nvmlDeviceGetDeviceHandleFromMigDeviceHandle,
    nvmlDeviceIsMigDeviceHandle,
    nvmlDeviceGetGpuInstanceId,
    nvmlDeviceGetComputeInstanceId,
    nvmlDeviceGetGpuInstanceProfileInfo,
    nvmlDeviceGetGpuInstances,
    nvmlDeviceGetGpuInstanceById,
    nvmlDeviceGetAttributes,
    nvmlDeviceGetFieldValues,
    nvmlDeviceGetSupportedEventTypes,
    nvmlDeviceRegisterEvents,
    nvmlDeviceGetCurrentClocksEventReasons,
    nvmlDeviceGetComputeRunningProcesses,
    nvmlDeviceGetGraphicsRunningProcesses,
    nvmlDeviceGetVirtualizationMode,
    nvmlDeviceGetRetiredPages,
    nvmlDeviceGetRetiredPagesPendingStatus,
    nvmlDeviceGetRemappedRows,
    nvmlDeviceGetNvLinkState,
    nvmlDeviceGetNvLinkVersion,
    nvmlDeviceGetNvLinkCapability,
    nvmlDeviceGetGpuFabricInfo,
    nvmlGpmQueryDeviceSupport,
    nvmlGpmSampleGet,
    nvmlGpmMigSampleGet,
    nvmlGpmMetricsGet,
    // Handle lookups: they name one GPU, so latency and hangs apply to them, but
    // they are not "calls on the GPU" (lost / not_supported / after_calls ignore them).
    nvmlDeviceGetHandleByIndex,
    nvmlDeviceGetHandleByUUID,
    nvmlDeviceGetHandleByPciBusId,
);

/// Bits of the handle-lookup functions in a function mask.
pub const LOOKUPS: u128 = (1 << Fn::nvmlDeviceGetHandleByIndex as u128)
    | (1 << Fn::nvmlDeviceGetHandleByUUID as u128)
    | (1 << Fn::nvmlDeviceGetHandleByPciBusId as u128);

/// Calls that belong to no GPU, which hang faults may name.
#[allow(non_camel_case_types, clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SysFn {
    nvmlDeviceGetCount,
    nvmlSystemGetDriverVersion,
    nvmlEventSetWait,
}

pub const SYSTEM_NAMES: &[&str] = &[
    "nvmlDeviceGetCount",
    "nvmlSystemGetDriverVersion",
    "nvmlEventSetWait",
];

pub const COUNT: usize = NAMES.len();
// Fault masks are u128 bitsets indexed by function id.
const _: () = assert!(COUNT < 128);

/// The id of a function named in a scenario; a version suffix is ignored
/// (`nvmlDeviceGetMemoryInfo_v2` is `nvmlDeviceGetMemoryInfo`).
pub fn lookup(name: &str) -> Option<usize> {
    let base = base_name(name);
    let base = base
        .strip_suffix("ThrottleReasons")
        .map(|_| "nvmlDeviceGetCurrentClocksEventReasons")
        .unwrap_or(base);
    // The versioned-struct form ("...InfoV") is the same query.
    let base = match base {
        "nvmlDeviceGetGpuFabricInfoV" => "nvmlDeviceGetGpuFabricInfo",
        other => other,
    };
    NAMES.iter().position(|n| *n == base)
}

/// The id of a system-level function named in a scenario (version suffix ignored).
pub fn lookup_system(name: &str) -> Option<usize> {
    let base = base_name(name);
    SYSTEM_NAMES.iter().position(|n| *n == base)
}

fn base_name(name: &str) -> &str {
    match name.rfind("_v") {
        Some(i) if name[i + 2..].chars().all(|c| c.is_ascii_digit()) && i + 2 < name.len() => {
            &name[..i]
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_strips_versions() {
        let id = |f: Fn| Some(f as usize);
        for (name, want) in [
            (
                "nvmlDeviceGetMemoryInfo_v2",
                id(Fn::nvmlDeviceGetMemoryInfo),
            ),
            ("nvmlDeviceGetPciInfo_v3", id(Fn::nvmlDeviceGetPciInfo)),
            ("nvmlDeviceGetUUID", Some(0)),
            ("nvmlDeviceFrobnicate", None),
            (
                "nvmlDeviceGetHandleByIndex_v2",
                id(Fn::nvmlDeviceGetHandleByIndex),
            ),
            (
                "nvmlDeviceGetGpuFabricInfoV",
                id(Fn::nvmlDeviceGetGpuFabricInfo),
            ),
        ] {
            assert_eq!(lookup(name), want, "{name}");
        }
        let sys = |f: SysFn| Some(f as usize);
        for (name, want) in [
            ("nvmlEventSetWait_v2", sys(SysFn::nvmlEventSetWait)),
            ("nvmlDeviceGetCount_v2", sys(SysFn::nvmlDeviceGetCount)),
            ("nvmlDeviceGetPowerUsage", None),
        ] {
            assert_eq!(lookup_system(name), want, "{name}");
        }
    }
}
