//! What the tests against the simulated driver share.

// Each test binary compiles its own copy and uses only some of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stats_core::{DeviceSample, Engine, EngineConfig, Nvml, Reading, TrackedDevice};

/// The tick deadline of the hang tests.
pub const TIMEOUT: Duration = Duration::from_millis(800);
/// Far beyond a healthy tick on a loaded machine, far below the hangs.
pub const SLACK: Duration = Duration::from_millis(1500);

/// An XID 79 on GPU 0, waiting by the first tick.
/// Due at 2 s: after the first tick registered the GPUs (nvml.h records no
/// event from before the registration), before the 8 s the hang tests' faults end.
pub const XID_ON_GPU0: &str = "[[events]]\ngpu = 0\nat_s = 2.0\nxid = 79\n";

/// A fault: GPU `gpu`'s next call of `function` blocks for `ms` milliseconds.
pub fn hang_once(gpu: usize, function: &str, ms: u64) -> String {
    format!(
        "[[faults]]\nkind = \"hang\"\ngpu = {gpu}\nfunction = \"{function}\"\nduration_ms = {ms}\ncalls = 1\n"
    )
}

/// A scenario named after the test with `count` H100 GPUs; `extra` follows
/// (more keys of those GPUs, faults, events).
pub fn h100s(test: &str, count: usize, extra: &str) -> String {
    format!(
        "name = \"stats-core-{test}\"\n[[gpus]]\nmodel = \"h100-sxm5-80gb\"\ncount = {count}\n{extra}"
    )
}

/// build/sim/libnvidia-ml.so.1, built by `make sim`.
fn sim_library() -> PathBuf {
    sim_library_at(None)
}

/// The simulated library playing driver `branch` (build/sim/<branch>/, exporting only
/// that branch's functions), or with every function (None); built by `make sim`.
pub fn sim_library_at(branch: Option<u32>) -> PathBuf {
    let sub = branch.map_or(String::new(), |b| format!("{b}/"));
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../build/sim/{sub}libnvidia-ml.so.1"));
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

/// As [`open`], on the library of driver `branch` (the scenario must name it).
pub fn open_at(test: &str, text: &str, branch: Option<u32>) -> (PathBuf, Arc<Nvml>, Vec<String>) {
    let dir = use_scenario(test, text);
    let lib = sim_library_at(branch);
    let nvml = Arc::new(Nvml::open(lib.to_str().unwrap()).expect("NVML on the simulator"));
    let ids = nvml.gpu_uuids().unwrap();
    (dir, nvml, ids)
}

/// The branches the simulator can play (src_rust/nvml_sim/branches/<branch>.txt), in order.
pub fn branches() -> Vec<u32> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nvml_sim/branches");
    let mut out: Vec<u32> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().path().file_stem()?.to_str()?.parse().ok())
        .collect();
    out.sort();
    out
}

/// [`open`] on [`h100s`]`(test, count, extra)`.
pub fn open_h100s(test: &str, count: usize, extra: &str) -> (PathBuf, Arc<Nvml>, Vec<String>) {
    open(test, &h100s(test, count, extra))
}

/// As [`open`], for a scenario whose faults would block the enumeration:
/// the GPUs' UUIDs come from `plain` (the same `name`, no faults: the same
/// UUIDs), enumerated and shut down first; then NVML is opened on `text`,
/// whose clock starts then.
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
            gpu: String::new(),
        })
        .collect()
}

/// The hang tests' engine: extended stats, [`TIMEOUT`], `max_workers`, the
/// GPUs of `ids` tracked in group "H100" (checked to make no NVML call: it
/// returns within the deadline whatever the GPUs do).
pub fn hang_engine(nvml: &Arc<Nvml>, ids: &[String], max_workers: usize) -> Engine {
    let mut engine = Engine::new(
        Arc::clone(nvml),
        EngineConfig {
            extended: true,
            timeout: TIMEOUT,
            max_workers,
            ..EngineConfig::default()
        },
    );
    let t = Instant::now();
    engine.track(tracked(ids, "H100"));
    assert!(t.elapsed() < TIMEOUT, "track() took {:?}", t.elapsed());
    engine
}

/// Where the GPU at `gpu` in `ids` (scenario order) is in `read_all()`'s
/// samples, which go by UUID.
pub fn places(ids: &[String]) -> impl Fn(usize) -> usize + '_ {
    let mut sorted = ids.to_vec();
    sorted.sort();
    move |gpu| sorted.iter().position(|u| *u == ids[gpu]).unwrap()
}

/// One tick, checked to end within the deadline (plus [`SLACK`]).
pub fn bounded_tick(engine: &mut Engine) -> Vec<DeviceSample> {
    let t = Instant::now();
    let samples = engine.read_all();
    assert!(
        t.elapsed() < TIMEOUT + SLACK,
        "a tick took {:?}",
        t.elapsed()
    );
    samples
}

/// A bounded wait, not a timing assertion: `f` every 50 ms until it gives
/// a value, for at most a minute.
pub fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..1200 {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(v) = f() {
            return Some(v);
        }
    }
    None
}

/// The hang tests' check of each tick: the devices at `stuck` (places in the
/// samples) read N/A, memory and XID count alike; the others an H100's memory.
pub fn stuck_read_na(ticks: &[Vec<DeviceSample>], stuck: &[usize]) {
    for samples in ticks {
        for (i, s) in samples.iter().enumerate() {
            if stuck.contains(&i) {
                assert_eq!(s.memory_mib, Reading::NotAvailable);
                assert_eq!(s.extended.unwrap().xid_count, Reading::NotAvailable);
            } else {
                assert!(matches!(s.memory_mib, Reading::Ratio(_, 81559)), "{s:?}");
            }
        }
    }
}

/// The XID count of the GPU at `gpu` in `ids` (scenario order), from samples
/// that go by UUID.
pub fn xid_count(ids: &[String], samples: &[DeviceSample], gpu: usize) -> Reading {
    samples[places(ids)(gpu)].extended.unwrap().xid_count
}

/// A tick after the registrations of the healthy GPUs: GPU 0 counts its XID
/// (due at 2 s, [`XID_ON_GPU0`]) or none yet, GPU `other` none.
pub fn healthy_gpus_count_xids(ids: &[String], tick: &[DeviceSample], other: usize) {
    let gpu0 = xid_count(ids, tick, 0);
    assert!(
        matches!(gpu0, Reading::Int(0) | Reading::Int(1)),
        "{gpu0:?}"
    );
    assert_eq!(xid_count(ids, tick, other), Reading::Int(0));
}
