//! Closing with a read still hung: the engine says so, and its log outlives
//! it (the read's return is logged after close).

mod common;

use std::sync::Arc;
use std::time::Duration;

use stats_core::{Engine, EngineConfig, Level, Reading};

#[test]
fn closing_during_a_hang_keeps_the_log() {
    let (dir, nvml, ids) = common::open(
        "close",
        r#"name = "stats-core-close"
[[gpus]]
model = "h100-sxm5-80gb"
count = 2
[[faults]]
kind = "hang"
gpu = 0
function = "nvmlDeviceGetTemperature"
duration_ms = 5000
calls = 1
"#,
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

    // The hung read returns after 5 s and logs so into the engine's log
    // (a bounded wait, not a timing assertion).
    let mut answered = false;
    for _ in 0..1200 {
        std::thread::sleep(Duration::from_millis(50));
        if sink
            .take()
            .iter()
            .any(|e| e.message.contains("answers again"))
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "the hung read never returned");
    let _ = std::fs::remove_dir_all(&dir);
}
