//! GPUs whose handle lookup (nvmlDeviceGetHandleByUUID), or every call,
//! blocks: track() makes no NVML call, so it returns at once; each tick
//! returns within its deadline with the other GPUs' values, the stuck GPUs
//! read N/A, and they are read (and registered for XIDs) once they answer.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stats_core::{DeviceSample, Engine, EngineConfig, Level, Reading};

const TIMEOUT: Duration = Duration::from_millis(800);
// Far beyond a healthy tick on a loaded machine, far below the hangs.
const SLACK: Duration = Duration::from_millis(1500);

#[test]
fn gpus_stuck_in_handle_lookups_delay_nothing() {
    const MACHINE: &str = r#"name = "stats-core-hang-handle"
[[gpus]]
model = "h100-sxm5-80gb"
count = 4
"#;
    // GPU 2's hang would block the enumeration too.
    let (dir, nvml, ids) = common::open_without_enumerating(
        "hang-handle",
        MACHINE,
        &(MACHINE.to_string()
            + r#"# GPU 1: its first handle lookup blocks for 8 s.
[[faults]]
kind = "hang"
gpu = 1
function = "nvmlDeviceGetHandleByUUID"
duration_ms = 8000
calls = 1
# GPU 2: every call blocks until 8 s after init.
[[faults]]
kind = "hang"
gpu = 2
until_s = 8.0
[[events]]
gpu = 0
at_s = 0.0
xid = 79
"#),
    );
    let mut engine = Engine::new(
        Arc::clone(&nvml),
        EngineConfig {
            extended: true,
            timeout: TIMEOUT,
            // More workers than stuck GPUs: a tick's stuck workers get
            // stand-ins from the next tick on, not within it.
            max_workers: 4,
            ..EngineConfig::default()
        },
    );
    let t = Instant::now();
    engine.track(common::tracked(&ids, "H100"));
    assert!(t.elapsed() < TIMEOUT, "track() took {:?}", t.elapsed());
    let mut sorted = ids.clone();
    sorted.sort();
    let place = |gpu: usize| sorted.iter().position(|u| *u == ids[gpu]).unwrap();
    let stuck = [place(1), place(2)];
    let xids = |s: &[DeviceSample], gpu: usize| s[place(gpu)].extended.unwrap().xid_count;

    let mut ticks = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        ticks.push(engine.read_all());
        assert!(
            t.elapsed() < TIMEOUT + SLACK,
            "a tick took {:?}",
            t.elapsed()
        );
        // A tracked set given again while the calls are stuck: no NVML call.
        let t = Instant::now();
        engine.track(common::tracked(&ids, "H100"));
        assert!(t.elapsed() < TIMEOUT, "track() took {:?}", t.elapsed());
    }
    for samples in &ticks {
        for (i, s) in samples.iter().enumerate() {
            if stuck.contains(&i) {
                assert_eq!(s.memory_mib, Reading::NotAvailable);
                assert_eq!(s.extended.unwrap().xid_count, Reading::NotAvailable);
            } else {
                assert!(matches!(s.memory_mib, Reading::Ratio(_, 81559)), "{s:?}");
            }
        }
    }
    // The first tick's drain waits for that tick's registrations, two of
    // which are stuck (behind the handle lookups): the counts are current
    // from the next tick on.
    assert_eq!(xids(&ticks[2], 0), Reading::Int(1));
    assert_eq!(xids(&ticks[2], 3), Reading::Int(0));
    let log = engine.take_log();
    assert_eq!(log.len(), 2, "{log:?}");
    for gpu in [1, 2] {
        assert!(
            log.iter().any(|e| e.level == Level::Warning
                && e.message.contains(&ids[gpu])
                && e.message.contains("did not answer")),
            "{log:?}"
        );
    }

    // Both return after 8 s: the GPUs then read values and their XID
    // counts (a bounded wait, not a timing assertion).
    let mut answered = None;
    for _ in 0..1200 {
        std::thread::sleep(Duration::from_millis(50));
        let s = engine.read_all();
        if stuck
            .iter()
            .all(|&i| s[i].memory_mib != Reading::NotAvailable)
        {
            answered = Some(s);
            break;
        }
    }
    let s = answered.expect("the stuck GPUs never answered again");
    for gpu in [1, 2, 3] {
        assert_eq!(xids(&s, gpu), Reading::Int(0));
    }
    assert_eq!(xids(&s, 0), Reading::Int(1));
    let log = engine.take_log();
    for gpu in [1, 2] {
        assert!(
            log.iter().any(|e| e.level == Level::Info
                && e.message.contains(&ids[gpu])
                && e.message.contains("answers again")),
            "{log:?}"
        );
    }
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
