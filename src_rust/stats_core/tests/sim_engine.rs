//! The engine against the simulated driver (build/sim, `make sim`): values
//! read, a hung GPU bounded by the timeout and reported once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use stats_core::{Engine, EngineConfig, Level, Reading};

#[test]
fn reads_devices_and_bounds_a_hung_one() {
    let (dir, nvml, ids) = common::open_h100s(
        "hang",
        3,
        &common::hang_once(1, "nvmlDeviceGetTemperature", 10_000),
    );
    assert_eq!(ids.len(), 3);
    // The hang far outlasts the timeout, and the timeout is far beyond a
    // healthy read on a loaded machine: which devices read N/A does not
    // depend on scheduling.
    let mut engine = Engine::new(
        Arc::clone(&nvml),
        EngineConfig {
            timeout: Duration::from_secs(2),
            max_workers: 2,
            ..EngineConfig::default()
        },
    );
    engine.track(common::tracked(&ids, "H100"));
    // Tracked order is by device ID; find the hung GPU's place.
    let hung = common::places(&ids)(1);

    for _ in 0..2 {
        let samples = engine.read_all();
        for (i, s) in samples.iter().enumerate() {
            if i == hung {
                assert_eq!(s.memory_mib, Reading::NotAvailable);
            } else {
                assert!(matches!(s.memory_mib, Reading::Ratio(_, 81559)), "{s:?}");
                assert!(matches!(s.temperature_c, Reading::Int(_)));
            }
        }
    }
    let log = engine.take_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].level, Level::Warning);
    assert!(log[0].message.contains(&ids[1]));

    // The call returns after 10 s; the device then answers again.
    common::eventually(|| {
        (engine.read_all()[hung].memory_mib != Reading::NotAvailable).then_some(())
    })
    .expect("the hung GPU never answered again");
    assert!(engine.take_log().iter().any(|e| e.level == Level::Info));
    let bytes = engine.collect().to_vec();
    for u in &ids {
        assert!(bytes.windows(u.len()).any(|w| w == u.as_bytes()));
    }
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
