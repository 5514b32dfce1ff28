//! Helpers the simulated driver's integration tests share (each test file is its own crate,
//! so a helper one file does not use is dead code there).

use nvml_sim::api::*;
use nvml_sys::*;

/// GPU `i`'s handle; the call must succeed.
#[allow(dead_code)]
pub fn handle(i: u32) -> nvmlDevice_t {
    let mut h = std::ptr::null_mut();
    assert_eq!(
        unsafe { nvmlDeviceGetHandleByIndex_v2(i, &mut h) },
        NVML_SUCCESS
    );
    h
}

/// A new event set; the call must succeed.
#[allow(dead_code)]
pub fn new_set() -> nvmlEventSet_t {
    let mut set = std::ptr::null_mut();
    assert_eq!(unsafe { nvmlEventSetCreate(&mut set) }, NVML_SUCCESS);
    set
}

/// Asserts that the scenario (after a `name` line) is refused with an error that
/// contains `want`.
#[allow(dead_code)]
pub fn refused(text: &str, want: &str) {
    let e = nvml_sim::sim::Sim::from_toml("x", &format!("name = \"t\"\n{text}")).unwrap_err();
    assert!(e.contains(want), "{text:?}: {e}");
}

/// A new event set with XID events registered on each of `gpus`; the calls must succeed.
#[allow(dead_code)]
pub fn xid_set(gpus: &[nvmlDevice_t]) -> nvmlEventSet_t {
    let set = new_set();
    for &h in gpus {
        assert_eq!(
            unsafe { nvmlDeviceRegisterEvents(h, nvmlEventTypeXidCriticalError, set) },
            NVML_SUCCESS
        );
    }
    set
}
