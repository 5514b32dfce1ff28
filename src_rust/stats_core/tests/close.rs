//! Closing with a read still hung: the engine says so, and its log outlives
//! it (the read's return is logged after close).

mod common;

use std::sync::Arc;
use std::time::Duration;

use stats_core::{Engine, EngineConfig, Level, Reading};

#[test]
fn closing_during_a_hang_keeps_the_log() {
    let (dir, nvml, ids) = common::open_h100s(
        "close",
        2,
        &common::hang_once(0, "nvmlDeviceGetTemperature", 5000),
    );
    let mut engine = Engine::new(
        Arc::clone(&nvml),
        EngineConfig {
            timeout: Duration::from_millis(500),
            ..EngineConfig::default()
        },
    );
    engine.track(common::tracked(&ids[..1], "H100"));
    assert_eq!(engine.read_all()[0].memory_mib, Reading::NotAvailable);
    let sink = engine.close();
    let events = sink.take();
    assert_eq!(events.len(), 2, "{events:?}"); // the hang, then the close
    assert!(events.iter().all(|e| e.level == Level::Warning));
    assert!(events[1].message.contains("closing while"));
    assert!(events[1].message.contains(&ids[0]));

    // The hung read returns after 5 s and logs so into the engine's log.
    common::eventually(|| {
        let events = sink.take();
        events
            .iter()
            .any(|e| e.message.contains("answers again"))
            .then_some(())
    })
    .expect("the hung read never returned");
    let _ = std::fs::remove_dir_all(&dir);
}
