//! GPUs whose handle lookup (nvmlDeviceGetHandleByUUID), or every call,
//! blocks: track() makes no NVML call, so it returns at once; each tick
//! returns within its deadline with the other GPUs' values, the stuck GPUs
//! read N/A, and they are read (and registered for XIDs) once they answer.

mod common;

use std::time::Instant;

use stats_core::{DeviceSample, Level, LogEvent, Reading};

#[test]
fn gpus_stuck_in_handle_lookups_delay_nothing() {
    let machine = common::h100s("hang-handle", 4, "");
    // GPU 2's hang would block the enumeration too.
    let (dir, nvml, ids) = common::open_without_enumerating(
        "hang-handle",
        &machine,
        // GPU 1: its first handle lookup blocks for 8 s.
        &(machine.clone()
            + &common::hang_once(1, "nvmlDeviceGetHandleByUUID", 8000)
            + r#"# GPU 2: every call blocks until 8 s after init.
[[faults]]
kind = "hang"
gpu = 2
until_s = 8.0
"# + common::XID_ON_GPU0),
    );
    // More workers than stuck GPUs: a tick's stuck workers get stand-ins
    // from the next tick on, not within it.
    let mut engine = common::hang_engine(&nvml, &ids, 4);
    let place = common::places(&ids);
    let stuck = [place(1), place(2)];
    let xids = |s: &[DeviceSample], gpu: usize| common::xid_count(&ids, s, gpu);
    // Each stuck GPU (1 and 2) has an event of `level` saying `text`.
    let logged_for_stuck = |log: &[LogEvent], level: Level, text: &str| {
        for gpu in [1, 2] {
            let named = |e: &&LogEvent| e.message.contains(&ids[gpu]) && e.message.contains(text);
            assert!(
                log.iter().filter(named).any(|e| e.level == level),
                "{log:?}"
            );
        }
    };

    let mut ticks = Vec::new();
    for _ in 0..3 {
        ticks.push(common::bounded_tick(&mut engine));
        // A tracked set given again while the calls are stuck: no NVML call.
        let t = Instant::now();
        engine.track(common::tracked(&ids, "H100"));
        assert!(
            t.elapsed() < common::TIMEOUT,
            "track() took {:?}",
            t.elapsed()
        );
    }
    common::stuck_read_na(&ticks, &stuck);
    // The first tick's drain waits for that tick's registrations, two of
    // which are stuck (behind the handle lookups): the counts are current
    // from the next tick on.
    common::healthy_gpus_count_xids(&ids, &ticks[2], 3);
    let log = engine.take_log();
    assert_eq!(log.len(), 2, "{log:?}");
    logged_for_stuck(&log, Level::Warning, "did not answer");

    // Both return after 8 s: the GPUs then read values and their XID counts.
    let s = common::eventually(|| {
        let s = engine.read_all();
        let answered = stuck
            .iter()
            .all(|&i| s[i].memory_mib != Reading::NotAvailable);
        answered.then_some(s)
    })
    .expect("the stuck GPUs never answered again");
    for gpu in [1, 2, 3] {
        assert_eq!(xids(&s, gpu), Reading::Int(0));
    }
    assert_eq!(xids(&s, 0), Reading::Int(1));
    // A worker that was stuck logs it after handing over its values, so the
    // lines can come a moment after the values do: gather them until both are in.
    let mut log = engine.take_log();
    let _ = common::eventually(|| {
        let both = [1, 2].iter().all(|&gpu| {
            log.iter().any(|e| {
                e.level == Level::Info
                    && e.message.contains(&ids[gpu])
                    && e.message.contains("answers again")
            })
        });
        log.extend(engine.take_log());
        both.then_some(())
    });
    logged_for_stuck(&log, Level::Info, "answers again");
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
