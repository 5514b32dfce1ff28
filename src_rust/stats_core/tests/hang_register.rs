//! A GPU whose XID registration (nvmlDeviceRegisterEvents) blocks: track()
//! makes no NVML call, so it returns at once; the tick registers in the
//! workers under its deadline, the stuck GPU reads N/A, the others read
//! values and their XIDs, and the stuck GPU is registered once it answers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stats_core::{Engine, EngineConfig, Level, Reading};

const TIMEOUT: Duration = Duration::from_millis(800);
// Far beyond a healthy tick on a loaded machine, far below the hang.
const SLACK: Duration = Duration::from_millis(1500);

#[test]
fn a_gpu_stuck_in_xid_registration_delays_nothing() {
    let (dir, nvml, ids) = common::open(
        "hang-register",
        r#"name = "stats-core-hang-register"
[[gpus]]
model = "h100-sxm5-80gb"
count = 3
[[faults]]
kind = "hang"
gpu = 1
function = "nvmlDeviceRegisterEvents"
duration_ms = 8000
calls = 1
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
            max_workers: 2,
            ..EngineConfig::default()
        },
    );
    let t = Instant::now();
    engine.track(common::tracked(&ids, "H100"));
    assert!(t.elapsed() < TIMEOUT, "track() took {:?}", t.elapsed());
    let mut sorted = ids.clone();
    sorted.sort();
    let place = |gpu: usize| sorted.iter().position(|u| *u == ids[gpu]).unwrap();
    let hung = place(1);

    let mut ticks = Vec::new();
    for _ in 0..2 {
        let t = Instant::now();
        ticks.push(engine.read_all());
        assert!(
            t.elapsed() < TIMEOUT + SLACK,
            "a tick took {:?}",
            t.elapsed()
        );
    }
    for samples in &ticks {
        for (i, s) in samples.iter().enumerate() {
            if i == hung {
                assert_eq!(s.memory_mib, Reading::NotAvailable);
                assert_eq!(s.extended.unwrap().xid_count, Reading::NotAvailable);
            } else {
                assert!(matches!(s.memory_mib, Reading::Ratio(_, 81559)), "{s:?}");
            }
        }
    }
    // The first tick's drain waits for that tick's registrations, one of
    // which is stuck: the counts are current from the next tick on.
    let xids =
        |s: &[stats_core::DeviceSample], gpu: usize| s[place(gpu)].extended.unwrap().xid_count;
    assert_eq!(xids(&ticks[1], 0), Reading::Int(1));
    assert_eq!(xids(&ticks[1], 2), Reading::Int(0));
    let log = engine.take_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].level, Level::Warning);
    assert!(log[0].message.contains(&ids[1]), "{log:?}");
    assert!(log[0].message.contains("did not answer"), "{log:?}");

    // The registration returns after 8 s: the GPU then reads values and
    // its XID count (a bounded wait, not a timing assertion).
    let mut answered = None;
    for _ in 0..1200 {
        std::thread::sleep(Duration::from_millis(50));
        let s = engine.read_all();
        if s[hung].memory_mib != Reading::NotAvailable {
            answered = Some(s);
            break;
        }
    }
    let s = answered.expect("the stuck GPU never answered again");
    assert_eq!(xids(&s, 1), Reading::Int(0));
    assert_eq!(xids(&s, 0), Reading::Int(1));
    assert!(engine
        .take_log()
        .iter()
        .any(|e| e.level == Level::Info && e.message.contains("answers again")));
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
