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
        // Garbage and misaligned handles, null outputs, bad enums, bad event sets.
        let mut p = 0;
        let bogus = 0x1234usize as nvmlDevice_t;
        let skewed = (h as usize + 1) as nvmlDevice_t;
        let mut data: nvmlEventData_t = std::mem::zeroed();
        let no_set = 0x40 as nvmlEventSet_t;
        let answers = [
            nvmlDeviceGetPowerUsage(bogus, &mut p),
            nvmlDeviceGetPowerUsage(skewed, &mut p),
            nvmlDeviceGetPowerUsage(h, std::ptr::null_mut()),
            nvmlDeviceGetClockInfo(h, 99, &mut p),
            nvmlEventSetFree(no_set),
            nvmlEventSetWait_v2(no_set, &mut data, 0),
            nvmlDeviceGetFieldValues(h, -1, std::ptr::null_mut()),
        ];
        assert_eq!(answers, [NVML_ERROR_INVALID_ARGUMENT; 7]);
        // A short buffer, a struct without its version, a query the GH200 lacks.
        let mut small = [0 as c_char; 4];
        let mut mem = nvmlMemory_v2_t::default();
        let mut bar1 = nvmlBAR1Memory_t::default();
        let answers = [
            nvmlDeviceGetName(h, small.as_mut_ptr(), 4),
            nvmlDeviceGetMemoryInfo_v2(h, &mut mem),
            nvmlDeviceGetBAR1MemoryInfo(h, &mut bar1),
        ];
        let want = [
            NVML_ERROR_INSUFFICIENT_SIZE,
            NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
            NVML_ERROR_NOT_SUPPORTED,
        ];
        assert_eq!(answers, want);
        let msg = std::ffi::CStr::from_ptr(nvmlErrorString(NVML_ERROR_GPU_IS_LOST));
        assert_eq!(msg.to_str().unwrap(), "GPU is lost");
        assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    }
}
