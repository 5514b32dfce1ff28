//! Extended stats count XID critical errors per GPU from the simulator's
//! scenario events; each engine has its own event set and sees every XID.

mod common;

use std::sync::Arc;

use stats_core::{Engine, EngineConfig, Reading, TrackedDevice};

#[test]
fn extended_stats_count_xids_per_gpu() {
    // Events due at 0 s are waiting by the first tick, so the counts do not
    // depend on timing.
    let (dir, nvml, ids) = common::open(
        "xid",
        r#"name = "stats-core-xid"
[[gpus]]
model = "a100-sxm4-80gb"
count = 3
[[events]]
gpu = 0
at_s = 0.0
xid = 79
[[events]]
gpu = 0
at_s = 0.0
xid = 48
[[events]]
gpu = 0
at_s = 0.0
type = "pstate"
[[events]]
gpu = 2
at_s = 0.0
xid = 13
"#,
    );
    let mut tracked = common::tracked(&ids, "A100");
    tracked.push(TrackedDevice {
        device_id: "GPU-ghost".into(),
        uuid: "GPU-ghost".into(),
        group: "Ghost".into(),
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

    let (mut first, mut second, mut plain) = (engine(true), engine(true), engine(false));
    for e in [&mut first, &mut second] {
        for _ in 0..2 {
            let counts: Vec<Reading> = e
                .read_all()
                .iter()
                .map(|s| s.extended.expect("extended").xid_count)
                .collect();
            // The same XIDs in both engines' sets, each counted once.
            assert_eq!(counts, expected);
        }
    }
    assert!(plain.read_all().iter().all(|s| s.extended.is_none()));
    let bytes = first.collect().to_vec();
    assert!(bytes.windows(9).any(|w| w == b"XID count"));
    drop((first, second, plain));
    let _ = std::fs::remove_dir_all(&dir);
}
