//! Shares of a GPU (several device IDs, one UUID) cost the reads of one
//! device: the simulator's counter advances once per read, so every share
//! shows the same value, one step further each tick.

mod common;

use std::sync::Arc;

use stats_core::{Engine, EngineConfig, Reading, TrackedDevice};

#[test]
fn shares_of_a_gpu_are_read_once_per_tick() {
    let (dir, nvml, ids) = common::open_h100s(
        "shares",
        2,
        "stats.temperature_c = { kind = \"counter\", value = 30, step = 1 }\n",
    );
    let mut tracked: Vec<TrackedDevice> = (0..64)
        .map(|k| TrackedDevice {
            device_id: format!("{}-{k}", ids[0]),
            uuid: ids[0].clone(),
            group: "H100".into(),
            gpu: String::new(),
        })
        .collect();
    tracked.extend(common::tracked(&ids[1..], "H100"));
    let mut engine = Engine::new(Arc::clone(&nvml), EngineConfig::default());
    engine.track(tracked.clone());
    assert_eq!(engine.tracked(), 65);
    assert_eq!(engine.read_units(), 2);

    let mut temps = Vec::new();
    for _ in 0..3 {
        let samples = engine.read_all();
        assert_eq!(samples.len(), 2);
        // The unshared GPU, read once per tick, has the same counter.
        assert_eq!(samples[0].temperature_c, samples[1].temperature_c);
        temps.push(samples[0].temperature_c);
    }
    let Reading::Int(t0) = temps[0] else {
        panic!("{temps:?}")
    };
    assert_eq!(
        temps,
        vec![Reading::Int(t0), Reading::Int(t0 + 1), Reading::Int(t0 + 2)]
    );

    let bytes = engine.collect().to_vec();
    for d in &tracked {
        assert!(bytes
            .windows(d.device_id.len())
            .any(|w| w == d.device_id.as_bytes()));
    }
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
