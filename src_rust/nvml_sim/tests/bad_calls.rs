//! Misuse answers with an NVML error code, never a crash.

use std::os::raw::c_char;

use nvml_sim::api::*;
use nvml_sys::*;

#[test]
fn misuse_gets_error_codes() {
    unsafe {
        let mut c = 0;
        assert_eq!(nvmlDeviceGetCount_v2(&mut c), NVML_ERROR_UNINITIALIZED);
        std::env::remove_var("NVML_SIM_SCENARIO");
        assert_eq!(nvmlInit_v2(), NVML_ERROR_DRIVER_NOT_LOADED);
        assert_eq!(nvmlShutdown(), NVML_ERROR_UNINITIALIZED);

        std::env::set_var(
            "NVML_SIM_SCENARIO",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/gh200.toml"),
        );
        assert_eq!(nvmlInitWithFlags(0), NVML_SUCCESS);
        let mut h = std::ptr::null_mut();
        assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, &mut h), NVML_SUCCESS);
        // Garbage and misaligned handles, null outputs, short buffers, bad enums.
        let mut p = 0;
        let bogus = 0x1234usize as nvmlDevice_t;
        assert_eq!(
            nvmlDeviceGetPowerUsage(bogus, &mut p),
            NVML_ERROR_INVALID_ARGUMENT
        );
        let skewed = (h as usize + 1) as nvmlDevice_t;
        assert_eq!(
            nvmlDeviceGetPowerUsage(skewed, &mut p),
            NVML_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            nvmlDeviceGetPowerUsage(h, std::ptr::null_mut()),
            NVML_ERROR_INVALID_ARGUMENT
        );
        let mut small = [0 as c_char; 4];
        assert_eq!(
            nvmlDeviceGetName(h, small.as_mut_ptr(), 4),
            NVML_ERROR_INSUFFICIENT_SIZE
        );
        assert_eq!(
            nvmlDeviceGetClockInfo(h, 99, &mut p),
            NVML_ERROR_INVALID_ARGUMENT
        );
        let mut mem = nvmlMemory_v2_t::default();
        assert_eq!(
            nvmlDeviceGetMemoryInfo_v2(h, &mut mem),
            NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        );
        let mut bar1 = nvmlBAR1Memory_t::default();
        assert_eq!(
            nvmlDeviceGetBAR1MemoryInfo(h, &mut bar1),
            NVML_ERROR_NOT_SUPPORTED
        );
        assert_eq!(
            nvmlEventSetFree(0x40 as nvmlEventSet_t),
            NVML_ERROR_INVALID_ARGUMENT
        );
        let mut data: nvmlEventData_t = std::mem::zeroed();
        assert_eq!(
            nvmlEventSetWait_v2(0x40 as nvmlEventSet_t, &mut data, 0),
            NVML_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            nvmlDeviceGetFieldValues(h, -1, std::ptr::null_mut()),
            NVML_ERROR_INVALID_ARGUMENT
        );
        let msg = std::ffi::CStr::from_ptr(nvmlErrorString(NVML_ERROR_GPU_IS_LOST));
        assert_eq!(msg.to_str().unwrap(), "GPU is lost");
        assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    }
}
