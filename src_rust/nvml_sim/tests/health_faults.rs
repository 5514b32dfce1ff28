//! The faults the plugin's health monitoring must survive, through the exported C
//! API: memory repair state (and its persistence), integrated GPUs, event waits that
//! fail, a driver that goes away and comes back, hangs anywhere, every GPU lost, and
//! MIG-attributed events. NVML state is per process and the tests of one binary run
//! on threads, so each test holds LOCK while it uses the library.

use std::ffi::CStr;
use std::os::raw::c_char;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nvml_sim::api::*;
use nvml_sim::sim::Sim;
use nvml_sim::state;
use nvml_sys::*;

mod common;
use common::{handle, xid_set};

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nvml-sim-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One test's hold on the library (LOCK) and its scratch folder, fresh at the
/// start and removed at the end.
struct Held {
    dir: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

impl Held {
    fn new(tag: &str) -> Held {
        let _lock = lock();
        Held {
            dir: tmp_dir(tag),
            _lock,
        }
    }

    /// Writes the scenario as `file`, points NVML_SIM_SCENARIO at it and inits.
    fn init(&self, file: &str, text: &str) -> nvmlReturn_t {
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        std::env::set_var("NVML_SIM_SCENARIO", &path);
        nvmlInit_v2()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn machine() -> &'static Sim {
    state::last().expect("a scenario was loaded")
}

fn count() -> Result<u32, nvmlReturn_t> {
    let mut c = 0;
    match unsafe { nvmlDeviceGetCount_v2(&mut c) } {
        NVML_SUCCESS => Ok(c),
        e => Err(e),
    }
}

fn power(h: nvmlDevice_t) -> nvmlReturn_t {
    let mut p = 0;
    unsafe { nvmlDeviceGetPowerUsage(h, &mut p) }
}

/// Polls `cond` every 5 ms until it holds; panics after 10 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_until_machine_time(s: &Sim, secs: f64) {
    wait_for("the machine clock", || s.elapsed_ns() as f64 >= secs * 1e9);
}

fn remapped_rows(h: nvmlDevice_t) -> Result<[u32; 4], nvmlReturn_t> {
    let mut v = [0u32; 4];
    let [a, b, c, d] = &mut v;
    match unsafe { nvmlDeviceGetRemappedRows(h, a, b, c, d) } {
        NVML_SUCCESS => Ok(v),
        e => Err(e),
    }
}

fn retirement_pending(h: nvmlDevice_t) -> Result<u32, nvmlReturn_t> {
    let mut p = 99;
    match unsafe { nvmlDeviceGetRetiredPagesPendingStatus(h, &mut p) } {
        NVML_SUCCESS => Ok(p),
        e => Err(e),
    }
}

fn field(h: nvmlDevice_t, id: u32) -> Result<i64, nvmlReturn_t> {
    let mut v = [nvmlFieldValue_t::request(id)];
    assert_eq!(
        unsafe { nvmlDeviceGetFieldValues(h, 1, v.as_mut_ptr()) },
        NVML_SUCCESS
    );
    v[0].as_i64().ok_or(v[0].nvmlReturn)
}

const REPAIR: &str = r#"name = "repair"
[[gpus]]
model = "v100-sxm2-32gb"
[[gpus]]
model = "a100-sxm4-80gb"
count = 3
[[gpus]]
model = "h100-sxm5-80gb"
mig = ["7g.80gb"]
[[faults]]
kind = "page_retirement_pending"
gpu = 0
pages = 2
[[faults]]
kind = "row_remap_pending"
gpu = 1
correctable_rows = 3
[[faults]]
kind = "row_remap_failed"
gpu = 2
uncorrectable_rows = 7
"#;

#[test]
fn memory_repair_state_and_support() {
    let held = Held::new("repair");
    std::env::remove_var("NVML_SIM_PERSIST_DIR");
    assert_eq!(held.init("repair.toml", REPAIR), NVML_SUCCESS);
    let (v100, pending, failed, healthy, mig_gpu) =
        (handle(0), handle(1), handle(2), handle(3), handle(4));

    // Volta retires pages and has no row remapper; Ampere and later the reverse.
    assert_eq!(retirement_pending(v100), Ok(NVML_FEATURE_ENABLED));
    assert_eq!(remapped_rows(v100), Err(NVML_ERROR_NOT_SUPPORTED));
    for h in [pending, failed, healthy] {
        assert_eq!(retirement_pending(h), Err(NVML_ERROR_NOT_SUPPORTED));
    }
    assert_eq!(remapped_rows(pending), Ok([3, 1, 1, 0]));
    assert_eq!(remapped_rows(failed), Ok([0, 7, 0, 1]));
    assert_eq!(remapped_rows(healthy), Ok([0, 0, 0, 0]));
    // nvml.h: not reported while MIG mode is on.
    assert_eq!(remapped_rows(mig_gpu), Err(NVML_ERROR_NOT_SUPPORTED));
    let mut info = nvmlRemappedRowsInfo_v2_t::default();
    assert_eq!(
        unsafe { nvmlDeviceGetRemappedRows_v2(failed, &mut info) },
        NVML_SUCCESS
    );
    assert_eq!((info.uncActiveRemaps, info.bFailureOccurred), (7, 1));

    // Retired pages: size query, short buffer, then the pages (DBE only).
    unsafe {
        let mut n = 0;
        let dbe = NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR;
        assert_eq!(
            nvmlDeviceGetRetiredPages(v100, dbe, &mut n, std::ptr::null_mut()),
            NVML_ERROR_INSUFFICIENT_SIZE
        );
        assert_eq!(n, 2);
        let mut one = [0u64; 1];
        n = 1;
        assert_eq!(
            nvmlDeviceGetRetiredPages(v100, dbe, &mut n, one.as_mut_ptr()),
            NVML_ERROR_INSUFFICIENT_SIZE
        );
        let (mut pages, mut times) = ([0u64; 4], [0u64; 4]);
        n = 4;
        assert_eq!(
            nvmlDeviceGetRetiredPages_v2(v100, dbe, &mut n, pages.as_mut_ptr(), times.as_mut_ptr()),
            NVML_SUCCESS
        );
        assert_eq!(n, 2);
        assert!(pages[..2].iter().all(|p| *p != 0 && p % 4096 == 0));
        assert!(times[..2].iter().all(|t| *t > 1_600_000_000));
        n = 0;
        let sbe = NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS;
        assert_eq!(
            nvmlDeviceGetRetiredPages(v100, sbe, &mut n, std::ptr::null_mut()),
            NVML_SUCCESS
        );
        assert_eq!(n, 0);
        assert_eq!(
            nvmlDeviceGetRetiredPages(v100, 7, &mut n, std::ptr::null_mut()),
            NVML_ERROR_INVALID_ARGUMENT
        );
        n = 0;
        assert_eq!(
            nvmlDeviceGetRetiredPages(pending, dbe, &mut n, std::ptr::null_mut()),
            NVML_ERROR_NOT_SUPPORTED
        );
    }

    // The field values say the same.
    assert_eq!(field(v100, NVML_FI_DEV_RETIRED_PENDING), Ok(1));
    assert_eq!(field(v100, NVML_FI_DEV_RETIRED_DBE), Ok(2));
    assert_eq!(
        field(v100, NVML_FI_DEV_REMAPPED_PENDING),
        Err(NVML_ERROR_NOT_SUPPORTED)
    );
    assert_eq!(field(pending, NVML_FI_DEV_REMAPPED_PENDING), Ok(1));
    assert_eq!(field(pending, NVML_FI_DEV_REMAPPED_COR), Ok(3));
    assert_eq!(field(failed, NVML_FI_DEV_REMAPPED_FAILURE), Ok(1));
    assert_eq!(field(healthy, NVML_FI_DEV_REMAPPED_FAILURE), Ok(0));
    assert_eq!(
        field(healthy, NVML_FI_DEV_RETIRED_PENDING),
        Err(NVML_ERROR_NOT_SUPPORTED)
    );
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
}

#[test]
fn memory_repair_state_persists_in_the_persist_dir() {
    let held = Held::new("persist");
    let store = held.dir.join("inforom");
    let scenario = |after_s: f64| {
        format!(
            "name = \"persist me\"\n[[gpus]]\nmodel = \"a100-sxm4-80gb\"\ncount = 2\n\
             [[faults]]\nkind = \"row_remap_failed\"\ngpu = 1\nafter_s = {after_s}\n\
             [[faults]]\nkind = \"row_remap_pending\"\ngpu = 1\nafter_s = 3600\n"
        )
    };
    // Without the variable nothing is written.
    std::env::remove_var("NVML_SIM_PERSIST_DIR");
    assert_eq!(held.init("a.toml", &scenario(0.0)), NVML_SUCCESS);
    assert_eq!(remapped_rows(handle(1)), Ok([0, 0, 0, 1]));
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    assert!(!store.exists());

    // With it, the failure is recorded once it has happened...
    std::env::set_var("NVML_SIM_PERSIST_DIR", &store);
    assert_eq!(held.init("b.toml", &scenario(0.5)), NVML_SUCCESS);
    let gpu1 = handle(1);
    assert_eq!(remapped_rows(gpu1), Ok([0, 0, 0, 0]));
    let marker = store.join("persist_me.gpu1.row_remap_failed");
    assert!(!marker.exists());
    wait_for("the failure", || remapped_rows(gpu1) == Ok([0, 0, 0, 1]));
    assert!(marker.is_file());
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    let names: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![marker.file_name().unwrap().to_owned()]);

    // ...and a later init of that scenario (a fresh machine, as in a new process)
    // has it from time 0, even though this text says it comes in an hour.
    assert_eq!(held.init("c.toml", &scenario(3600.0)), NVML_SUCCESS);
    assert_eq!(remapped_rows(handle(1)), Ok([0, 0, 0, 1]));
    assert_eq!(remapped_rows(handle(0)), Ok([0, 0, 0, 0]));
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    std::env::remove_var("NVML_SIM_PERSIST_DIR");
}

#[test]
fn integrated_gpu_has_no_memory_info() {
    let _g = lock();
    std::env::set_var(
        "NVML_SIM_SCENARIO",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/gb10.toml"),
    );
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
    assert_eq!(count(), Ok(1));
    let h = handle(0);
    unsafe {
        let mut buf = [0 as c_char; 96];
        assert_eq!(nvmlDeviceGetName(h, buf.as_mut_ptr(), 96), NVML_SUCCESS);
        assert_eq!(
            CStr::from_ptr(buf.as_ptr()).to_str().unwrap(),
            "NVIDIA GB10"
        );
        // No dedicated memory: no memory info, no BAR1, no memory clock.
        let mut mem = nvmlMemory_t::default();
        let mut mem2 = nvmlMemory_v2_t {
            version: nvmlMemory_v2,
            ..Default::default()
        };
        let mut bar1 = nvmlBAR1Memory_t::default();
        let mut clock = 0;
        let answers = [
            nvmlDeviceGetMemoryInfo(h, &mut mem),
            nvmlDeviceGetMemoryInfo_v2(h, &mut mem2),
            nvmlDeviceGetBAR1MemoryInfo(h, &mut bar1),
            nvmlDeviceGetMaxClockInfo(h, NVML_CLOCK_MEM, &mut clock),
            nvmlDeviceGetClockInfo(h, NVML_CLOCK_MEM, &mut clock),
        ];
        assert_eq!(answers, [NVML_ERROR_NOT_SUPPORTED; 5]);
        assert_eq!(
            nvmlDeviceGetMaxClockInfo(h, NVML_CLOCK_SM, &mut clock),
            NVML_SUCCESS
        );
        assert!(clock > 0);
        let (mut major, mut minor) = (0, 0);
        assert_eq!(
            nvmlDeviceGetCudaComputeCapability(h, &mut major, &mut minor),
            NVML_SUCCESS
        );
        assert_eq!((major, minor), (12, 1));
        let mut arch = 0;
        assert_eq!(nvmlDeviceGetArchitecture(h, &mut arch), NVML_SUCCESS);
        assert_eq!(arch, NVML_DEVICE_ARCH_BLACKWELL);
        let (mut cur, mut pend) = (0, 0);
        assert_eq!(
            nvmlDeviceGetMigMode(h, &mut cur, &mut pend),
            NVML_ERROR_NOT_SUPPORTED
        );
        let mut limit = 0;
        assert_eq!(
            nvmlDeviceGetPowerManagementLimit(h, &mut limit),
            NVML_SUCCESS
        );
        assert_eq!(limit, 140_000);
        assert_eq!(power(h), NVML_SUCCESS);
    }
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
}

#[test]
fn driver_gone_fails_every_call_until_a_new_session_after_recovery() {
    let held = Held::new("gone");
    let text = "name = \"gone\"\n[[gpus]]\nmodel = \"l4\"\ncount = 2\n\
                [[faults]]\nkind = \"driver_gone\"\nerror = \"LIB_RM_VERSION_MISMATCH\"\n\
                after_s = 0.2\nrecover_after_s = 0.3\n";
    assert_eq!(held.init("gone.toml", text), NVML_SUCCESS);
    let s = machine();
    let gpu0 = handle(0);
    let mut set = std::ptr::null_mut();
    assert_eq!(unsafe { nvmlEventSetCreate(&mut set) }, NVML_SUCCESS);
    assert_eq!(count(), Ok(2));

    const GONE: nvmlReturn_t = NVML_ERROR_LIB_RM_VERSION_MISMATCH;
    wait_for("the driver to go", || count() == Err(GONE));
    assert!(s.elapsed_ns() >= 200_000_000);
    unsafe {
        let mut buf = [0 as c_char; 80];
        assert_eq!(nvmlSystemGetDriverVersion(buf.as_mut_ptr(), 80), GONE);
        let mut h = std::ptr::null_mut();
        assert_eq!(nvmlDeviceGetHandleByIndex_v2(1, &mut h), GONE);
        assert_eq!(power(gpu0), GONE);
        let mut data: nvmlEventData_t = std::mem::zeroed();
        assert_eq!(nvmlEventSetWait_v2(set, &mut data, 0), GONE);
        let mut other = std::ptr::null_mut();
        assert_eq!(nvmlEventSetCreate(&mut other), GONE);
        let msg = CStr::from_ptr(nvmlErrorString(GONE));
        assert!(msg.to_str().unwrap().contains("version mismatch"));
    }
    // An init inside the session answers it too and takes no reference.
    assert_eq!(nvmlInit_v2(), GONE);

    // Past the recovery this session still fails: NVML must be shut down first.
    wait_until_machine_time(s, 0.5);
    assert_eq!(count(), Err(GONE));
    assert_eq!(power(gpu0), GONE);
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    assert_eq!(count(), Err(NVML_ERROR_UNINITIALIZED));

    // A new session works, on the same machine and clock: the fault does not fire
    // again after this or later re-inits.
    let before = s.elapsed_ns();
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
    assert!(std::ptr::eq(machine(), s));
    assert!(s.elapsed_ns() >= before, "the clock is not restarted");
    assert_eq!(count(), Ok(2));
    assert_eq!(power(gpu0), NVML_SUCCESS, "old handles stay valid");
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
    assert_eq!(count(), Ok(2));
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
}

#[test]
fn driver_not_there_at_first_then_loaded() {
    let held = Held::new("late");
    // The default error; from time 0 for 0.3 s: inits fail until then.
    let text = "name = \"late\"\n[[gpus]]\nmodel = \"l4\"\n\
                [[faults]]\nkind = \"driver_gone\"\nrecover_after_s = 0.3\n";
    assert_eq!(held.init("late.toml", text), NVML_ERROR_DRIVER_NOT_LOADED);
    assert_eq!(count(), Err(NVML_ERROR_UNINITIALIZED));
    assert_eq!(nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
    let s = machine();
    wait_for("init to work", || match nvmlInit_v2() {
        NVML_SUCCESS => true,
        code => {
            assert_eq!(code, NVML_ERROR_DRIVER_NOT_LOADED);
            false
        }
    });
    assert!(s.elapsed_ns() >= 300_000_000);
    assert_eq!(count(), Ok(1));
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
}

#[test]
fn event_waits_fail_in_their_window_and_take_no_event() {
    let held = Held::new("waits");
    let text = "name = \"waits\"\n[[gpus]]\nmodel = \"a100-sxm4-40gb\"\ncount = 2\n\
                mig = [\"3g.20gb\", \"3g.20gb\"]\n\
                [[faults]]\nkind = \"event_wait_error\"\nerror = \"GPU_IS_LOST\"\n\
                after_s = 1.0\nrecover_after_s = 1.0\n\
                [[events]]\ngpu = 1\nat_s = 0.5\nxid = 94\ngpu_instance = 2\ncompute_instance = 0\n\
                [[events]]\ngpu = 0\nat_s = 1.5\nxid = 79\n";
    assert_eq!(held.init("waits.toml", text), NVML_SUCCESS);
    let s = machine();
    let (gpu0, gpu1) = (handle(0), handle(1));
    let set = xid_set(&[gpu0, gpu1]);
    unsafe {
        let mut e: nvmlEventData_t = std::mem::zeroed();
        // A MIG-attributed XID carries its GPU and compute instance ids (due
        // after the registration: events before it are not recorded).
        assert_eq!(nvmlEventSetWait_v2(set, &mut e, 10_000), NVML_SUCCESS);
        assert_eq!(
            (e.device, e.eventData, e.gpuInstanceId, e.computeInstanceId),
            (gpu1, 94, 2, 0)
        );
        // A wait that began before the window ends in the error when it opens.
        assert!(s.elapsed_ns() < 1_000_000_000, "test machine too slow");
        assert_eq!(
            nvmlEventSetWait_v2(set, &mut e, 10_000),
            NVML_ERROR_GPU_IS_LOST
        );
        assert!(s.elapsed_ns() >= 1_000_000_000);
        // In the window every wait fails, also once the XID at 1.5 s is due...
        wait_until_machine_time(s, 1.6);
        assert_eq!(nvmlEventSetWait_v2(set, &mut e, 0), NVML_ERROR_GPU_IS_LOST);
        // ...which is still there when waits work again.
        wait_until_machine_time(s, 2.0);
        assert_eq!(nvmlEventSetWait_v2(set, &mut e, 0), NVML_SUCCESS);
        assert_eq!((e.device, e.eventData), (gpu0, 79));
        assert_eq!(nvmlEventSetWait_v2(set, &mut e, 0), NVML_ERROR_TIMEOUT);
        // Other calls were never affected.
        assert_eq!(power(gpu0), NVML_SUCCESS);

        // After a shutdown and init, a new set does not see the old events again;
        // the old set keeps its place.
        assert_eq!(nvmlShutdown(), NVML_SUCCESS);
        assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
        let fresh = xid_set(&[gpu1]);
        assert_eq!(nvmlEventSetWait_v2(fresh, &mut e, 0), NVML_ERROR_TIMEOUT);
        assert_eq!(nvmlEventSetWait_v2(set, &mut e, 0), NVML_ERROR_TIMEOUT);
        assert_eq!(nvmlEventSetFree(fresh), NVML_SUCCESS);
        assert_eq!(nvmlEventSetFree(set), NVML_SUCCESS);
    }
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
}

#[test]
fn hangs_on_any_call_until_a_time_or_for_good() {
    let held = Held::new("hangs");
    // GPU 1: every call (lookups too) hangs until 2 s. GPU 2: power hangs for good.
    // nvmlDeviceGetCount hangs 300 ms, once.
    let text = "name = \"hangs\"\n[[gpus]]\nmodel = \"h100-sxm5-80gb\"\ncount = 3\n\
                [[faults]]\nkind = \"hang\"\ngpu = 1\nuntil_s = 2.0\n\
                [[faults]]\nkind = \"hang\"\ngpu = 2\nfunction = \"nvmlDeviceGetPowerUsage\"\n\
                [[faults]]\nkind = \"hang\"\nfunctions = [\"nvmlDeviceGetCount_v2\"]\n\
                duration_ms = 300\ncalls = 1\n";
    let path = held.dir.join("hangs.toml");
    std::fs::write(&path, text).unwrap();
    std::env::set_var("NVML_SIM_SCENARIO", &path);
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
    let s = machine();
    let t = Instant::now();
    assert_eq!(count(), Ok(3));
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(count(), Ok(3), "calls = 1: the second call goes through");

    let (gpu0, gpu2) = (handle(0), handle(2));
    // GPU 1's lookups hang too: its handle is the address of its device.
    let gpu1 = &s.devices[1] as *const _ as usize;
    let stuck_power = std::thread::spawn(move || power(gpu1 as nvmlDevice_t));
    let stuck_lookup = std::thread::spawn(|| {
        let mut h = std::ptr::null_mut();
        unsafe { nvmlDeviceGetHandleByIndex_v2(1, &mut h) }
    });
    let gpu2_addr = gpu2 as usize;
    let forever = std::thread::spawn(move || power(gpu2_addr as nvmlDevice_t));
    // The other GPUs answer while GPU 1's calls are blocked.
    assert_eq!(power(gpu0), NVML_SUCCESS);
    let mut temp = 0;
    assert_eq!(
        unsafe { nvmlDeviceGetTemperature(gpu2, NVML_TEMPERATURE_GPU, &mut temp) },
        NVML_SUCCESS
    );
    assert!(s.elapsed_ns() < 2_000_000_000, "test machine too slow");
    assert!(!stuck_power.is_finished() && !stuck_lookup.is_finished());
    assert_eq!(stuck_power.join().unwrap(), NVML_SUCCESS);
    assert_eq!(stuck_lookup.join().unwrap(), NVML_SUCCESS);
    assert!(s.elapsed_ns() >= 2_000_000_000, "blocked until until_s");
    // From until_s on, GPU 1 answers at once; GPU 2's power call is still blocked.
    assert_eq!(power(handle(1)), NVML_SUCCESS);
    assert!(!forever.is_finished());
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
}

#[test]
fn every_gpu_lost_when_lost_names_none() {
    let held = Held::new("lost");
    let text = "name = \"all-lost\"\n[[gpus]]\nmodel = \"h100-sxm5-80gb\"\ncount = 2\n\
                mig = [\"3g.40gb\"]\n\
                [[faults]]\nkind = \"lost\"\nafter_s = 0\n";
    assert_eq!(held.init("lost.toml", text), NVML_SUCCESS);
    assert_eq!(count(), Ok(2));
    for i in 0..2 {
        let h = handle(i);
        assert_eq!(power(h), NVML_ERROR_GPU_IS_LOST);
        let mut mig = std::ptr::null_mut();
        assert_eq!(
            unsafe { nvmlDeviceGetMigDeviceHandleByIndex(h, 0, &mut mig) },
            NVML_ERROR_GPU_IS_LOST
        );
    }
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
}
