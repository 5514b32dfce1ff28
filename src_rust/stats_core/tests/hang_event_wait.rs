//! An XID event set whose wait (nvmlEventSetWait_v2) blocks: each tick
//! still returns within its deadline with every GPU's values; the stuck
//! drain holds one thread (later ticks skip it, XID counts keep their last
//! values), is reported once, and its return is logged.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stats_core::{Engine, EngineConfig, Level, Reading};

const TIMEOUT: Duration = Duration::from_millis(800);
// Far beyond a healthy tick on a loaded machine, far below the hang.
const SLACK: Duration = Duration::from_millis(1500);
const WORKERS: usize = 2;

#[test]
fn a_stuck_event_set_wait_delays_no_tick() {
    let (dir, nvml, ids) = common::open(
        "hang-event-wait",
        r#"name = "stats-core-hang-event-wait"
[[gpus]]
model = "h100-sxm5-80gb"
count = 3
# Every event-set wait blocks until 8 s after init.
[[faults]]
kind = "hang"
function = "nvmlEventSetWait_v2"
until_s = 8.0
[[events]]
gpu = 0
at_s = 0.0
xid = 79
"#,
    );
    let mut engine = Engine::new(
        Arc::clone(&nvml),
        EngineConfig {
            extended: true,
            timeout: TIMEOUT,
            max_workers: WORKERS,
            ..EngineConfig::default()
        },
    );
    engine.track(common::tracked(&ids, "H100"));
    let mut sorted = ids.clone();
    sorted.sort();
    let gpu0 = sorted.iter().position(|u| *u == ids[0]).unwrap();

    for _ in 0..5 {
        let t = Instant::now();
        let samples = engine.read_all();
        assert!(
            t.elapsed() < TIMEOUT + SLACK,
            "a tick took {:?}",
            t.elapsed()
        );
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
    // XID waiting since 0 s is counted (a bounded wait, not a timing
    // assertion).
    let mut counted = false;
    let mut log = Vec::new();
    for _ in 0..1200 {
        std::thread::sleep(Duration::from_millis(50));
        let s = engine.read_all();
        log.extend(engine.take_log());
        if s[gpu0].extended.unwrap().xid_count == Reading::Int(1) {
            counted = true;
            break;
        }
    }
    assert!(counted, "the XID was never counted");
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].level, Level::Info);
    assert!(
        log[0].message.contains("XID event drain returned"),
        "{log:?}"
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
