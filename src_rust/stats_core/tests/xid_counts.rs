//! Extended stats count XID critical errors per GPU from the simulator's
//! scenario events; each engine has its own event set and sees every XID.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stats_core::{Engine, EngineConfig, Reading, TrackedDevice};

#[test]
fn extended_stats_count_xids_per_gpu() {
    // The events come due after the engines' first reads registered the GPUs
    // (nvml.h records no event from before the registration). The driver
    // answers NOT_SUPPORTED (not INVALID_ARGUMENT) when asked for a whole
    // GPU's MIG parent and lets every other blocking wait return early: both
    // allowed by nvml.h (tests/test_sim_strict.py runs every combination).
    let (dir, nvml, ids) = common::open(
        "xid",
        r#"name = "stats-core-xid"
[choices]
not_a_mig_device = "NOT_SUPPORTED"
event_wait_early_timeout_every = 2
[[gpus]]
model = "a100-sxm4-80gb"
count = 3
[[events]]
gpu = 0
at_s = 2.0
xid = 79
[[events]]
gpu = 0
at_s = 2.0
xid = 48
[[events]]
gpu = 0
at_s = 2.0
type = "pstate"
[[events]]
gpu = 2
at_s = 2.0
xid = 13
"#,
    );
    let mut tracked = common::tracked(&ids, "A100");
    tracked.push(TrackedDevice {
        device_id: "GPU-ghost".into(),
        uuid: "GPU-ghost".into(),
        group: "Ghost".into(),
        gpu: String::new(),
    });
    let engine = |extended| {
        let mut e = Engine::new(
            Arc::clone(&nvml),
            EngineConfig {
                extended,
                ..EngineConfig::default()
            },
        );
        e.track(tracked.clone());
        e
    };
    // Groups by name ("A100" < "Ghost"), devices by ID.
    let mut sorted = ids.clone();
    sorted.sort();
    let expected: Vec<Reading> = sorted
        .iter()
        .map(|u| match ids.iter().position(|i| i == u) {
            Some(0) => Reading::Int(2),
            Some(2) => Reading::Int(1),
            _ => Reading::Int(0),
        })
        .chain([Reading::NotAvailable])
        .collect();

    let counts = |e: &mut Engine| -> Vec<Reading> {
        e.read_all()
            .iter()
            .map(|s| s.extended.expect("extended").xid_count)
            .collect()
    };
    let (mut first, mut second, mut plain) = (engine(true), engine(true), engine(false));
    for e in [&mut first, &mut second] {
        counts(e); // registers the GPUs on the engine's set
    }
    // Until the events came due (the limit only catches a hang).
    let limit = Instant::now() + Duration::from_secs(60);
    while Instant::now() < limit && counts(&mut first) != expected {
        std::thread::sleep(Duration::from_millis(100));
    }
    for e in [&mut first, &mut second] {
        for _ in 0..2 {
            // The same XIDs in both engines' sets, each counted once.
            assert_eq!(counts(e), expected);
        }
    }
    assert!(plain.read_all().iter().all(|s| s.extended.is_none()));
    let bytes = first.collect().to_vec();
    assert!(bytes.windows(9).any(|w| w == b"XID count"));
    drop((first, second, plain));
    let _ = std::fs::remove_dir_all(&dir);
}
