//! An XID event set whose wait (nvmlEventSetWait_v2) blocks: each tick
//! still returns within its deadline with every GPU's values; the stuck
//! drain holds one thread (later ticks skip it, XID counts keep their last
//! values), is reported once, and its return is logged.

mod common;

use stats_core::{Level, Reading};

const WORKERS: usize = 2;

#[test]
fn a_stuck_event_set_wait_delays_no_tick() {
    let faults = r#"# Every event-set wait blocks until 8 s after init.
[[faults]]
kind = "hang"
function = "nvmlEventSetWait_v2"
until_s = 8.0
"#;
    let (dir, nvml, ids) = common::open_h100s(
        "hang-event-wait",
        3,
        &(faults.to_string() + common::XID_ON_GPU0),
    );
    let mut engine = common::hang_engine(&nvml, &ids, WORKERS);
    let gpu0 = common::places(&ids)(0);

    for _ in 0..5 {
        let samples = common::bounded_tick(&mut engine);
        // Every GPU answers (a drain stuck on each tick's worker would
        // leave none for the reads by now), and the counts keep their last
        // values: registered, nothing drained yet.
        for s in &samples {
            assert!(matches!(s.memory_mib, Reading::Ratio(_, 81559)), "{s:?}");
            assert_eq!(s.extended.unwrap().xid_count, Reading::Int(0));
        }
        // The pool and one stand-in for the stuck drain.
        assert!(
            engine.worker_threads() <= WORKERS + 1,
            "{}",
            engine.worker_threads()
        );
    }
    let log = engine.take_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].level, Level::Warning);
    assert!(
        log[0].message.contains("XID event drain")
            && log[0].message.contains("did not return within"),
        "{log:?}"
    );

    // The wait returns at 8 s: the drain finishes, says so once, and the
    // XID waiting since 0 s is counted.
    let mut log = Vec::new();
    common::eventually(|| {
        let s = engine.read_all();
        log.extend(engine.take_log());
        (s[gpu0].extended.unwrap().xid_count == Reading::Int(1)).then_some(())
    })
    .expect("the XID was never counted");
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].level, Level::Info);
    assert!(
        log[0].message.contains("XID event drain returned"),
        "{log:?}"
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
