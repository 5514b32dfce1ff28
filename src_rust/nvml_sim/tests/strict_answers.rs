//! The simulated driver answers as nvml.h documents where an easier answer
//! would hide bugs in its callers, and the scenario's `[choices]` pick the
//! answer where the header allows two. Each test here failed on the simulator
//! before it was made strict.

use std::os::raw::c_uint;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use nvml_sim::api::*;
use nvml_sim::gpm::*;
use nvml_sys::*;

mod common;
use common::{handle, new_set, xid_set};

/// NVML is one per process: the tests take turns, each in a session of its own.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn session<T>(name: &str, scenario: &str, body: impl FnOnce() -> T) -> T {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("nvml-sim-strict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("name = \"strict-{name}\"\n{scenario}")).unwrap();
    std::env::set_var("NVML_SIM_SCENARIO", &path);
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS, "scenario {name}");
    // Shut down even when the body fails, so the next test gets its own machine.
    struct Shutdown;
    impl Drop for Shutdown {
        fn drop(&mut self) {
            let code = nvmlShutdown();
            if !std::thread::panicking() {
                assert_eq!(code, NVML_SUCCESS);
            }
        }
    }
    let _shutdown = Shutdown;
    body()
}

fn wait(set: nvmlEventSet_t, timeout_ms: c_uint) -> Result<(u64, u64), nvmlReturn_t> {
    let mut e: nvmlEventData_t = unsafe { std::mem::zeroed() };
    match unsafe { nvmlEventSetWait_v2(set, &mut e, timeout_ms) } {
        NVML_SUCCESS => Ok((e.eventType, e.eventData)),
        code => Err(code),
    }
}

const XID: u64 = nvmlEventTypeXidCriticalError;

#[test]
fn utilization_is_not_supported_on_a_mig_enabled_gpu() {
    let scenario = "[[gpus]]\nmodel = \"h100-sxm5-80gb\"\nmig = [\"3g.40gb\"]\n\
                    [[gpus]]\nmodel = \"h100-sxm5-80gb\"\n";
    session("mig-util", scenario, || unsafe {
        let (parent, plain) = (handle(0), handle(1));
        // Utilization, encoder and decoder utilization.
        let answers = |h| {
            let mut u: nvmlUtilization_t = std::mem::zeroed();
            let (mut v, mut period) = (0, 0);
            [
                nvmlDeviceGetUtilizationRates(h, &mut u),
                nvmlDeviceGetEncoderUtilization(h, &mut v, &mut period),
                nvmlDeviceGetDecoderUtilization(h, &mut v, &mut period),
            ]
        };
        assert_eq!(answers(parent), [NVML_ERROR_NOT_SUPPORTED; 3]);
        // A GPU not in MIG mode answers.
        assert_eq!(answers(plain), [NVML_SUCCESS; 3]);
    });
}

#[test]
fn events_before_the_registration_are_not_recorded() {
    // The first XID is due at init, before anyone registers; the second after.
    let scenario = "[[gpus]]\nmodel = \"h100-sxm5-80gb\"\n\
                    [[events]]\ngpu = 0\nat_s = 0.0\nxid = 79\n\
                    [[events]]\ngpu = 0\nat_s = 1.0\nxid = 48\n";
    session("before-register", scenario, || unsafe {
        let set = xid_set(&[handle(0)]);
        assert_eq!(wait(set, 30_000), Ok((XID, 48)));
        assert_eq!(wait(set, 0), Err(NVML_ERROR_TIMEOUT));
        assert_eq!(nvmlEventSetFree(set), NVML_SUCCESS);
    });
}

/// A wait on its own thread, with a long timeout: whether it came back before
/// `limit` (which only catches a wait that does not return early).
fn returns_early(set: nvmlEventSet_t, limit: Duration) -> Option<Result<(u64, u64), nvmlReturn_t>> {
    let (tx, rx) = mpsc::channel();
    let set = set as usize;
    std::thread::spawn(move || {
        let _ = tx.send(wait(set as nvmlEventSet_t, 3_600_000));
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn waits_can_time_out_early_when_the_scenario_says_so() {
    let scenario = "[choices]\nevent_wait_early_timeout_every = 2\n\
                    [[gpus]]\nmodel = \"h100-sxm5-80gb\"\n\
                    [[events]]\ngpu = 0\nat_s = 1.0\nxid = 79\n";
    session("early-timeout", scenario, || {
        let set = xid_set(&[handle(0)]);
        // The first blocking wait sleeps until the event comes due.
        assert_eq!(wait(set, 30_000), Ok((XID, 79)));
        // A wait that finds something ready, or does not block, is not counted.
        assert_eq!(wait(set, 0), Err(NVML_ERROR_TIMEOUT));
        // The second blocking wait returns TIMEOUT long before its hour is up.
        assert_eq!(
            returns_early(set, Duration::from_secs(30)),
            Some(Err(NVML_ERROR_TIMEOUT))
        );
    });
}

#[test]
fn not_a_mig_device_answers_as_the_scenario_picks() {
    let gpus = "[[gpus]]\nmodel = \"h100-sxm5-80gb\"\nmig = [\"3g.40gb\"]\n";
    for (choice, code) in [
        ("", NVML_ERROR_INVALID_ARGUMENT),
        (
            "[choices]\nnot_a_mig_device = \"INVALID_ARGUMENT\"\n",
            NVML_ERROR_INVALID_ARGUMENT,
        ),
        (
            "[choices]\nnot_a_mig_device = \"NOT_SUPPORTED\"\n",
            NVML_ERROR_NOT_SUPPORTED,
        ),
    ] {
        session("not-mig", &format!("{choice}{gpus}"), || unsafe {
            let gpu = handle(0);
            let mut parent = std::ptr::null_mut();
            assert_eq!(
                nvmlDeviceGetDeviceHandleFromMigDeviceHandle(gpu, &mut parent),
                code,
                "{choice}"
            );
            let mut mig = std::ptr::null_mut();
            assert_eq!(
                nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0, &mut mig),
                NVML_SUCCESS
            );
            assert_eq!(
                nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig, &mut parent),
                NVML_SUCCESS
            );
            assert_eq!(parent, gpu);
        });
    }
}

#[test]
fn an_invalid_event_mask_is_an_invalid_argument() {
    let scenario = "[[gpus]]\nmodel = \"h100-sxm5-80gb\"\n\
                    [[gpus]]\nmodel = \"h100-sxm5-80gb\"\necc = false\n";
    session("event-mask", scenario, || unsafe {
        let set = new_set();
        let (gpu, no_ecc) = (handle(0), handle(1));
        // No type at all, and bits that are no nvmlEventType (0x20, 0x40, 1 << 40).
        for mask in [0, 0x20, 0x40, XID | 0x20, 1 << 40] {
            assert_eq!(
                nvmlDeviceRegisterEvents(gpu, mask, set),
                NVML_ERROR_INVALID_ARGUMENT,
                "mask {mask:#x}"
            );
        }
        // Known types the GPU does not record: NOT_SUPPORTED.
        assert_eq!(
            nvmlDeviceRegisterEvents(gpu, nvmlEventTypePowerSourceChange, set),
            NVML_ERROR_NOT_SUPPORTED
        );
        assert_eq!(
            nvmlDeviceRegisterEvents(no_ecc, XID | nvmlEventTypeDoubleBitEccError, set),
            NVML_ERROR_NOT_SUPPORTED
        );
        assert_eq!(nvmlDeviceRegisterEvents(no_ecc, XID, set), NVML_SUCCESS);
        assert_eq!(nvmlEventSetFree(set), NVML_SUCCESS);
    });
}

fn alloc() -> nvmlGpmSample_t {
    let mut s = std::ptr::null_mut();
    assert_eq!(unsafe { nvmlGpmSampleAlloc(&mut s) }, NVML_SUCCESS);
    s
}

fn sm_util(a: nvmlGpmSample_t, b: nvmlGpmSample_t) -> Result<f64, nvmlReturn_t> {
    let mut get: Box<nvmlGpmMetricsGet_t> = Box::new(unsafe { std::mem::zeroed() });
    get.version = NVML_GPM_METRICS_GET_VERSION;
    get.numMetrics = 1;
    get.sample1 = a;
    get.sample2 = b;
    get.metrics[0] = nvmlGpmMetric_t::request(NVML_GPM_METRIC_SM_UTIL);
    match unsafe { nvmlGpmMetricsGet(&mut *get) } {
        NVML_SUCCESS => {
            assert_eq!(get.metrics[0].nvmlReturn, NVML_SUCCESS);
            Ok(get.metrics[0].value)
        }
        e => Err(e),
    }
}

#[test]
fn gpm_samples_closer_than_the_refresh_give_no_values() {
    let gpus = "[[gpus]]\nmodel = \"h100-sxm5-80gb\"\n[gpus.stats]\ngpm_sm_util = 42\n";
    for (choice, close) in [
        ("", Ok(0.0)),
        ("[choices]\ngpm_close_samples = \"zero\"\n", Ok(0.0)),
        (
            "[choices]\ngpm_close_samples = \"error\"\n",
            Err(NVML_ERROR_INVALID_ARGUMENT),
        ),
    ] {
        session("gpm-close", &format!("{choice}{gpus}"), || unsafe {
            let h = handle(0);
            let (a, b) = (alloc(), alloc());
            assert_eq!(nvmlGpmSampleGet(h, a), NVML_SUCCESS);
            assert_eq!(nvmlGpmSampleGet(h, b), NVML_SUCCESS);
            // Back to back: one snapshot of the counters, read twice.
            assert_eq!(sm_util(a, b), close, "{choice}");
            // nvml.h: more than 100 ms apart. The sleep is at least that long.
            std::thread::sleep(Duration::from_millis(150));
            assert_eq!(nvmlGpmSampleGet(h, a), NVML_SUCCESS);
            assert_eq!(sm_util(b, a), Ok(42.0));
            for s in [a, b] {
                assert_eq!(nvmlGpmSampleFree(s), NVML_SUCCESS);
            }
        });
    }
}

#[test]
fn error_strings_are_nvidias() {
    // As NVIDIA's libnvidia-ml.so.1 550.163.01 answers (src/errors.rs).
    for (code, text) in [
        (NVML_SUCCESS, "Success"),
        (NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument"),
        (NVML_ERROR_IRQ_ISSUE, "Interrupt Request Issue"),
        (NVML_ERROR_RESET_REQUIRED, "GPU requires reset"),
        (
            NVML_ERROR_OPERATING_SYSTEM,
            "GPU access blocked by the operating system",
        ),
        (
            NVML_ERROR_LIB_RM_VERSION_MISMATCH,
            "Driver/library version mismatch",
        ),
        (NVML_ERROR_VGPU_ECC_NOT_SUPPORTED, "vGPU ECC not supported"),
        (NVML_ERROR_INSUFFICIENT_RESOURCES, "Insufficient Resources"),
        (NVML_ERROR_FREQ_NOT_SUPPORTED, "Invalid Frequency"),
        (
            NVML_ERROR_DEPRECATED,
            "Requested functionality has been deprecated",
        ),
        (NVML_ERROR_NOT_READY, "System is not in ready state"),
        (NVML_ERROR_GPU_NOT_FOUND, "No supported GPUs were found"),
        (
            NVML_ERROR_INVALID_STATE,
            "Resource not in correct state to perform requested operation",
        ),
        (NVML_ERROR_RESET_TYPE_NOT_SUPPORTED, "Unknown Error"),
        (NVML_ERROR_UNKNOWN, "Unknown Error"),
        (12345, "Unknown Error"),
    ] {
        let got = unsafe { std::ffi::CStr::from_ptr(nvmlErrorString(code)) };
        assert_eq!(got.to_str().unwrap(), text, "code {code}");
    }
}
