//! A GPU whose XID registration (nvmlDeviceRegisterEvents) blocks: track()
//! makes no NVML call, so it returns at once; the tick registers in the
//! workers under its deadline, the stuck GPU reads N/A, the others read
//! values and their XIDs, and the stuck GPU is registered once it answers.

mod common;

use stats_core::{DeviceSample, Level, Reading};

#[test]
fn a_gpu_stuck_in_xid_registration_delays_nothing() {
    let faults = common::hang_once(1, "nvmlDeviceRegisterEvents", 8000);
    let (dir, nvml, ids) = common::open_h100s("hang-register", 3, &(faults + common::XID_ON_GPU0));
    let mut engine = common::hang_engine(&nvml, &ids, 2);
    let place = common::places(&ids);
    let hung = place(1);

    let ticks: Vec<_> = (0..2).map(|_| common::bounded_tick(&mut engine)).collect();
    common::stuck_read_na(&ticks, &[hung]);
    // The first tick's drain waits for that tick's registrations, one of
    // which is stuck: the counts are current from the next tick on.
    common::healthy_gpus_count_xids(&ids, &ticks[1], 2);
    let xids = |s: &[DeviceSample], gpu: usize| common::xid_count(&ids, s, gpu);
    let log = engine.take_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].level, Level::Warning);
    assert!(log[0].message.contains(&ids[1]), "{log:?}");
    assert!(log[0].message.contains("did not answer"), "{log:?}");

    // The registration returns after 8 s: the GPU then reads values and
    // its XID count.
    let s = common::eventually(|| {
        let s = engine.read_all();
        (s[hung].memory_mib != Reading::NotAvailable).then_some(s)
    })
    .expect("the stuck GPU never answered again");
    assert_eq!(xids(&s, 1), Reading::Int(0));
    assert_eq!(xids(&s, 0), Reading::Int(1));
    // The worker that was stuck logs it after handing over its values, so the
    // line can come a moment after the values do.
    assert!(
        common::eventually(|| engine
            .take_log()
            .iter()
            .any(|e| e.level == Level::Info && e.message.contains("answers again"))
            .then_some(()))
        .is_some(),
        "the stuck GPU's recovery was never logged"
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
