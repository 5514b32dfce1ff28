//! NVML loaded at run time with dlopen: the poller runs against whichever
//! libnvidia-ml.so.1 the process has (the real driver or the simulated one),
//! and a missing optional symbol only turns its stats into "N/A".

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::c_char;

use libloading::Library;
use nvml_sys::*;

/// The library name the dynamic linker resolves; when the process already
/// loaded a libnvidia-ml.so.1 (real or simulated), dlopen returns that one.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlError {
    /// dlopen failed or a required symbol is missing.
    Load(String),
    /// An NVML call returned an error code.
    Call {
        call: &'static str,
        code: nvmlReturn_t,
        message: String,
    },
}

impl fmt::Display for NvmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NvmlError::Load(why) => write!(f, "cannot load NVML: {why}"),
            NvmlError::Call {
                call,
                code,
                message,
            } => write!(f, "{call} failed: {message} (NVML error {code})"),
        }
    }
}

impl std::error::Error for NvmlError {}

/// The NVML entry points the poller calls. Optional ones are None when the
/// library does not export them (an older driver, or the simulator).
pub struct Nvml {
    shutdown: nvmlShutdown_fn,
    error_string: Option<nvmlErrorString_fn>,
    handle_by_uuid: nvmlDeviceGetHandleByUUID_fn,
    pub(crate) memory_info: Option<nvmlDeviceGetMemoryInfo_fn>,
    pub(crate) bar1_memory_info: Option<nvmlDeviceGetBAR1MemoryInfo_fn>,
    pub(crate) utilization_rates: Option<nvmlDeviceGetUtilizationRates_fn>,
    pub(crate) encoder_utilization: Option<nvmlDeviceGetCodecUtilization_fn>,
    pub(crate) decoder_utilization: Option<nvmlDeviceGetCodecUtilization_fn>,
    pub(crate) temperature: Option<nvmlDeviceGetTemperature_fn>,
    pub(crate) power_usage: Option<nvmlDeviceGetUint_fn>,
    pub(crate) power_limit: Option<nvmlDeviceGetUint_fn>,
    pub(crate) detailed_ecc: Option<nvmlDeviceGetDetailedEccErrors_fn>,
    pub(crate) field_values: Option<nvmlDeviceGetFieldValues_fn>,
    pub(crate) clock_info: Option<nvmlDeviceGetClockInfo_fn>,
    pub(crate) total_energy: Option<nvmlDeviceGetUlonglong_fn>,
    pub(crate) pcie_throughput: Option<nvmlDeviceGetPcieThroughput_fn>,
    pub(crate) clocks_event_reasons: Option<nvmlDeviceGetUlonglong_fn>,
    // XID counting (extended stats): see xid.rs.
    pub(crate) parent_of_mig: Option<nvmlDeviceGetDeviceHandleFromMigDeviceHandle_fn>,
    pub(crate) event_set_create: Option<nvmlEventSetCreate_fn>,
    pub(crate) register_events: Option<nvmlDeviceRegisterEvents_fn>,
    pub(crate) event_set_wait: Option<nvmlEventSetWait_v2_fn>,
    pub(crate) event_set_free: Option<nvmlEventSetFree_fn>,
    // GPM (extended stats): see gpm.rs.
    pub(crate) gpm_query_device_support: Option<nvmlGpmQueryDeviceSupport_fn>,
    pub(crate) gpm_sample_alloc: Option<nvmlGpmSampleAlloc_fn>,
    pub(crate) gpm_sample_free: Option<nvmlGpmSampleFree_fn>,
    pub(crate) gpm_sample_get: Option<nvmlGpmSampleGet_fn>,
    pub(crate) gpm_mig_sample_get: Option<nvmlGpmMigSampleGet_fn>,
    pub(crate) gpm_metrics_get: Option<nvmlGpmMetricsGet_fn>,
    pub(crate) gpu_instance_id: Option<nvmlDeviceGetGpuInstanceId_fn>,
    // Enumeration, for tools and tests (the engine itself never enumerates).
    device_count: Option<nvmlDeviceGetCount_v2_fn>,
    handle_by_index: Option<nvmlDeviceGetHandleByIndex_v2_fn>,
    uuid: Option<nvmlDeviceGetString_fn>,
    // Kept last so it is dropped after the calls above can no longer run.
    _lib: Library,
}

// SAFETY: NVML is thread-safe by contract (every entry point may be called
// from any thread); the struct only holds function pointers and the library.
unsafe impl Send for Nvml {}
unsafe impl Sync for Nvml {}

/// Copies a symbol's address out of the library, or None when it is absent.
///
/// # Safety
/// `T` must be the C signature the NVML header gives for `name`.
unsafe fn optional<T: Copy>(lib: &Library, name: &[u8]) -> Option<T> {
    lib.get::<T>(name).ok().map(|s| *s)
}

unsafe fn required<T: Copy>(lib: &Library, name: &[u8]) -> Result<T, NvmlError> {
    optional(lib, name).ok_or_else(|| {
        let printable = String::from_utf8_lossy(&name[..name.len() - 1]).into_owned();
        NvmlError::Load(format!("symbol {printable} not found"))
    })
}

impl Nvml {
    /// dlopens `path` (a file path or a library name) and calls nvmlInit_v2.
    /// NVML counts initialisations, so this is safe beside another user
    /// (nvidia-ml-py) in the same process; Drop calls nvmlShutdown once.
    pub fn open(path: &str) -> Result<Nvml, NvmlError> {
        // SAFETY: loading NVML runs no initialisers beyond its own; every
        // symbol is read with the signature of NVIDIA's header.
        unsafe {
            let lib = Library::new(path).map_err(|e| {
                // libloading keeps dlerror()'s text (which names the file) in the source.
                let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                NvmlError::Load(why)
            })?;
            let init: nvmlInit_v2_fn = required(&lib, b"nvmlInit_v2\0")?;
            let nvml = Nvml {
                shutdown: required(&lib, b"nvmlShutdown\0")?,
                error_string: optional(&lib, b"nvmlErrorString\0"),
                handle_by_uuid: required(&lib, b"nvmlDeviceGetHandleByUUID\0")?,
                memory_info: optional(&lib, b"nvmlDeviceGetMemoryInfo\0"),
                bar1_memory_info: optional(&lib, b"nvmlDeviceGetBAR1MemoryInfo\0"),
                utilization_rates: optional(&lib, b"nvmlDeviceGetUtilizationRates\0"),
                encoder_utilization: optional(&lib, b"nvmlDeviceGetEncoderUtilization\0"),
                decoder_utilization: optional(&lib, b"nvmlDeviceGetDecoderUtilization\0"),
                temperature: optional(&lib, b"nvmlDeviceGetTemperature\0"),
                power_usage: optional(&lib, b"nvmlDeviceGetPowerUsage\0"),
                power_limit: optional(&lib, b"nvmlDeviceGetPowerManagementLimit\0"),
                detailed_ecc: optional(&lib, b"nvmlDeviceGetDetailedEccErrors\0"),
                field_values: optional(&lib, b"nvmlDeviceGetFieldValues\0"),
                clock_info: optional(&lib, b"nvmlDeviceGetClockInfo\0"),
                total_energy: optional(&lib, b"nvmlDeviceGetTotalEnergyConsumption\0"),
                pcie_throughput: optional(&lib, b"nvmlDeviceGetPcieThroughput\0"),
                clocks_event_reasons: optional(&lib, b"nvmlDeviceGetCurrentClocksEventReasons\0")
                    .or_else(|| optional(&lib, b"nvmlDeviceGetCurrentClocksThrottleReasons\0")),
                parent_of_mig: optional(&lib, b"nvmlDeviceGetDeviceHandleFromMigDeviceHandle\0"),
                event_set_create: optional(&lib, b"nvmlEventSetCreate\0"),
                register_events: optional(&lib, b"nvmlDeviceRegisterEvents\0"),
                event_set_wait: optional(&lib, b"nvmlEventSetWait_v2\0"),
                event_set_free: optional(&lib, b"nvmlEventSetFree\0"),
                gpm_query_device_support: optional(&lib, b"nvmlGpmQueryDeviceSupport\0"),
                gpm_sample_alloc: optional(&lib, b"nvmlGpmSampleAlloc\0"),
                gpm_sample_free: optional(&lib, b"nvmlGpmSampleFree\0"),
                gpm_sample_get: optional(&lib, b"nvmlGpmSampleGet\0"),
                gpm_mig_sample_get: optional(&lib, b"nvmlGpmMigSampleGet\0"),
                gpm_metrics_get: optional(&lib, b"nvmlGpmMetricsGet\0"),
                gpu_instance_id: optional(&lib, b"nvmlDeviceGetGpuInstanceId\0"),
                device_count: optional(&lib, b"nvmlDeviceGetCount_v2\0"),
                handle_by_index: optional(&lib, b"nvmlDeviceGetHandleByIndex_v2\0"),
                uuid: optional(&lib, b"nvmlDeviceGetUUID\0"),
                _lib: lib,
            };
            let code = init();
            if code != NVML_SUCCESS {
                // Not initialised: Drop must not shut down someone else's count.
                let err = nvml.call_error("nvmlInit_v2", code);
                std::mem::forget(nvml);
                return Err(err);
            }
            Ok(nvml)
        }
    }

    pub(crate) fn call_error(&self, call: &'static str, code: nvmlReturn_t) -> NvmlError {
        NvmlError::Call {
            call,
            code,
            message: self.error_string(code),
        }
    }

    /// NVML's own text for a return code.
    pub fn error_string(&self, code: nvmlReturn_t) -> String {
        match self.error_string {
            // SAFETY: nvmlErrorString returns a static NUL-terminated string.
            Some(f) => unsafe {
                let p = f(code);
                if p.is_null() {
                    format!("NVML error {code}")
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            },
            None => format!("NVML error {code}"),
        }
    }

    /// The device handle for a GPU or MIG instance UUID.
    pub fn handle_by_uuid(&self, uuid: &str) -> Result<Handle, NvmlError> {
        let c = CString::new(uuid).map_err(|_| NvmlError::Call {
            call: "nvmlDeviceGetHandleByUUID",
            code: NVML_ERROR_INVALID_ARGUMENT,
            message: format!("UUID {uuid:?} contains a NUL byte"),
        })?;
        let mut dev: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: valid C string and out pointer.
        let code = unsafe { (self.handle_by_uuid)(c.as_ptr(), &mut dev) };
        if code != NVML_SUCCESS {
            return Err(self.call_error("nvmlDeviceGetHandleByUUID", code));
        }
        Ok(Handle(dev))
    }

    /// The UUIDs of the whole GPUs, in index order; GPUs whose UUID cannot be
    /// read are left out. For tools and tests: the engine never enumerates.
    pub fn gpu_uuids(&self) -> Result<Vec<String>, NvmlError> {
        let (Some(count), Some(by_index), Some(uuid)) =
            (self.device_count, self.handle_by_index, self.uuid)
        else {
            return Err(NvmlError::Load("NVML has no device enumeration".into()));
        };
        let mut n = 0;
        // SAFETY: out pointers are live locals; the buffer length is passed.
        unsafe {
            let code = count(&mut n);
            if code != NVML_SUCCESS {
                return Err(self.call_error("nvmlDeviceGetCount_v2", code));
            }
            let mut out = Vec::with_capacity(n as usize);
            for i in 0..n {
                let mut dev: nvmlDevice_t = std::ptr::null_mut();
                let mut buf = [0 as c_char; NVML_DEVICE_UUID_V2_BUFFER_SIZE];
                if by_index(i, &mut dev) == NVML_SUCCESS
                    && uuid(dev, buf.as_mut_ptr(), buf.len() as u32) == NVML_SUCCESS
                {
                    out.push(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned());
                }
            }
            Ok(out)
        }
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: paired with the successful nvmlInit_v2 in open().
        unsafe {
            (self.shutdown)();
        }
    }
}

/// An NVML device handle. Handles stay valid while NVML is initialised and
/// may be used from any thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handle(pub(crate) nvmlDevice_t);

// SAFETY: an NVML handle is an opaque token NVML accepts from any thread.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}
