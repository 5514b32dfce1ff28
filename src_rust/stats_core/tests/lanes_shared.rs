//! An engine on the process's lanes: a GPU whose lane someone else holds is
//! not entered. The read waits for the lane until the tick's deadline; once
//! the holder is past the deadline (stuck in its call, as a probe on a GPU
//! that stopped answering) the GPU is skipped at once and said so once; when
//! the lane is given back the GPU is read again. MIG instances of one GPU
//! take that GPU's one lane.

mod common;

use std::sync::Arc;

use stats_core::{Engine, EngineConfig, Lanes, Level, Reading, TrackedDevice};

/// A Python-side owner (an `id()`), below the engine's own owner ids.
const PROBE: u64 = 7;

fn engine_on(nvml: &Arc<stats_core::Nvml>, lanes: &Arc<Lanes>) -> Engine {
    Engine::with_lanes(
        Arc::clone(nvml),
        EngineConfig {
            max_workers: 2,
            ..EngineConfig::default()
        },
        Arc::clone(lanes),
    )
}

fn answered(s: &stats_core::DeviceSample) -> bool {
    matches!(s.memory_mib, Reading::Ratio(_, 81559))
}

#[test]
fn a_gpu_held_elsewhere_is_not_entered_and_mig_instances_take_their_gpus_lane() {
    let (dir, nvml, ids) = common::open_h100s("lanes-shared", 2, "");
    let lanes = Arc::new(Lanes::new(common::TIMEOUT));
    let mut engine = engine_on(&nvml, &lanes);
    engine.track(common::tracked(&ids, "H100"));
    let at = common::places(&ids);

    let samples = engine.read_all();
    assert!(samples.iter().all(answered), "{samples:?}");
    assert!(lanes.held().is_empty(), "a read gives its lane back");

    // A probe holds GPU 0's lane and does not come back.
    lanes.try_hold(&ids[0], PROBE, "a health probe").unwrap();
    let mut skipped = 0;
    while skipped < 3 {
        let samples = engine.read_all();
        assert!(!answered(&samples[at(0)]), "GPU 0 was read under the probe");
        assert!(answered(&samples[at(1)]), "{samples:?}");
        skipped += 1;
    }
    let said: Vec<String> = engine
        .take_log()
        .into_iter()
        .filter(|e| e.level == Level::Warning)
        .map(|e| e.message)
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(&ids[0]) && said[0].contains("a health probe is stuck on its GPU"),
        "{said:?}"
    );
    // The probe's call returns.
    assert!(lanes.release(&ids[0], PROBE));
    let samples = engine.read_all();
    assert!(samples.iter().all(answered), "{samples:?}");
    assert!(engine
        .take_log()
        .iter()
        .any(|e| e.message.contains("answers again")));
    let _ = engine.close();

    // A MIG instance reads through its own UUID under its GPU's lane (here GPU 1
    // stands in for an instance of GPU 0): held, both are N/A; given back, both answer.
    let mut engine = engine_on(&nvml, &lanes);
    engine.track(vec![
        TrackedDevice {
            device_id: ids[0].clone(),
            uuid: ids[0].clone(),
            group: "H100".into(),
            gpu: String::new(),
        },
        TrackedDevice {
            device_id: "MIG-standin".into(),
            uuid: ids[1].clone(),
            group: "MIG".into(),
            gpu: ids[0].clone(),
        },
    ]);
    lanes.try_hold(&ids[0], PROBE, "a scan").unwrap();
    let samples = engine.read_all();
    assert_eq!(samples.len(), 2);
    assert!(!samples.iter().any(answered), "{samples:?}");
    assert!(lanes.release(&ids[0], PROBE));
    assert!(engine.read_all().iter().all(answered));
    let _ = engine.close();
    let _ = std::fs::remove_dir_all(dir);
}
