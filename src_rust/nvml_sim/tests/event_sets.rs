//! Several event sets in one process, as the plugin has (the health monitor's and
//! the stats engine's): like the real driver, every event reaches each set
//! registered for it, whichever set waits first.

use nvml_sim::api::*;
use nvml_sys::*;

mod common;
use common::{handle, new_set};

fn register(set: nvmlEventSet_t, dev: nvmlDevice_t, types: u64) {
    assert_eq!(
        unsafe { nvmlDeviceRegisterEvents(dev, types, set) },
        NVML_SUCCESS
    );
}

/// Every event waiting in `set`, as (device, type, data), without blocking.
fn drain(set: nvmlEventSet_t) -> Vec<(nvmlDevice_t, u64, u64)> {
    let mut out = Vec::new();
    loop {
        let mut e: nvmlEventData_t = unsafe { std::mem::zeroed() };
        match unsafe { nvmlEventSetWait_v2(set, &mut e, 0) } {
            NVML_SUCCESS => out.push((e.device, e.eventType, e.eventData)),
            code => {
                assert_eq!(code, NVML_ERROR_TIMEOUT);
                return out;
            }
        }
    }
}

/// Waits (with a limit that only catches a hang) for the first event, then drains.
fn first_and_drain(set: nvmlEventSet_t) -> Vec<(nvmlDevice_t, u64, u64)> {
    let mut e: nvmlEventData_t = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { nvmlEventSetWait_v2(set, &mut e, 30_000) },
        NVML_SUCCESS
    );
    let mut out = vec![(e.device, e.eventType, e.eventData)];
    out.extend(drain(set));
    out
}

#[test]
fn each_event_reaches_every_set_registered_for_it() {
    let dir = std::env::temp_dir().join(format!("nvml-sim-event-sets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("sets.toml");
    std::fs::write(
        &scenario,
        r#"name = "event-sets"
[[gpus]]
model = "h100-sxm5-80gb"
count = 2
[[events]]
gpu = 0
at_s = 1.0
xid = 79
[[events]]
gpu = 1
at_s = 1.0
xid = 48
[[events]]
gpu = 0
at_s = 1.0
type = "pstate"
"#,
    )
    .unwrap();
    std::env::set_var("NVML_SIM_SCENARIO", &scenario);
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
    let (gpu0, gpu1) = (handle(0), handle(1));
    let xid = nvmlEventTypeXidCriticalError;

    let health = new_set();
    register(health, gpu0, xid | nvmlEventTypePState);
    register(health, gpu1, xid);
    let stats = new_set();
    register(stats, gpu0, xid);
    register(stats, gpu1, xid);
    let gpu1_only = new_set();
    register(gpu1_only, gpu1, xid);

    // The first set to wait takes nothing away from the others.
    // The events come due after every registration (events before it are not recorded).
    assert_eq!(
        first_and_drain(health),
        vec![
            (gpu0, xid, 79),
            (gpu1, xid, 48),
            (gpu0, nvmlEventTypePState, 0)
        ]
    );
    assert_eq!(
        first_and_drain(stats),
        vec![(gpu0, xid, 79), (gpu1, xid, 48)]
    );
    assert_eq!(first_and_drain(gpu1_only), vec![(gpu1, xid, 48)]);
    // Each set gets each event once.
    for set in [health, stats, gpu1_only] {
        assert!(drain(set).is_empty());
        assert_eq!(unsafe { nvmlEventSetFree(set) }, NVML_SUCCESS);
    }
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    let _ = std::fs::remove_dir_all(&dir);
}
