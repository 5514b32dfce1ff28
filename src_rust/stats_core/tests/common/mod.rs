//! What the tests against the simulated driver share.

use std::path::PathBuf;
use std::sync::Arc;

use stats_core::{Nvml, TrackedDevice};

/// build/sim/libnvidia-ml.so.1, built by `make sim`.
fn sim_library() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../build/sim/libnvidia-ml.so.1");
    assert!(
        p.is_file(),
        "{} is missing: run `make sim` first",
        p.display()
    );
    p
}

/// Writes a scenario into a fresh temporary directory and points the
/// simulator at it; returns the directory (remove it when done).
fn use_scenario(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stats-core-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("scenario.toml");
    std::fs::write(&scenario, text).unwrap();
    std::env::set_var("NVML_SIM_SCENARIO", &scenario);
    dir
}

/// Opens NVML on the simulator with `text` as the scenario; returns the
/// scenario's directory (remove it when done), NVML and the GPUs' UUIDs.
pub fn open(test: &str, text: &str) -> (PathBuf, Arc<Nvml>, Vec<String>) {
    let dir = use_scenario(test, text);
    let lib = sim_library();
    let nvml = Arc::new(Nvml::open(lib.to_str().unwrap()).expect("NVML on the simulator"));
    let ids = nvml.gpu_uuids().unwrap();
    (dir, nvml, ids)
}

/// As [`open`], for a scenario whose faults would block the enumeration:
/// the GPUs' UUIDs come from `plain` (the same `name`, no faults: the same
/// UUIDs), enumerated and shut down first; then NVML is opened on `text`,
/// whose clock starts then.
#[allow(dead_code)] // not every test binary uses it
pub fn open_without_enumerating(
    test: &str,
    plain: &str,
    text: &str,
) -> (PathBuf, Arc<Nvml>, Vec<String>) {
    let (dir, nvml, ids) = open(&format!("{test}-plain"), plain);
    drop(nvml);
    let _ = std::fs::remove_dir_all(&dir);
    let dir = use_scenario(test, text);
    let lib = sim_library();
    let nvml = Arc::new(Nvml::open(lib.to_str().unwrap()).expect("NVML on the simulator"));
    (dir, nvml, ids)
}

/// Whole GPUs tracked under their UUIDs, in one group.
pub fn tracked(ids: &[String], group: &str) -> Vec<TrackedDevice> {
    ids.iter()
        .map(|u| TrackedDevice {
            device_id: u.clone(),
            uuid: u.clone(),
            group: group.into(),
        })
        .collect()
}
