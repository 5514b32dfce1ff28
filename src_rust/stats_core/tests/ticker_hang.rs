//! The engine's clock over a GPU whose every call blocks: the clock keeps
//! answering at its interval (the first collection waits the deadline for
//! the stuck GPU, later ones skip it), `track()` never waits, and once its
//! engine is closed the clock says so and stops.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stats_core::{SharedEngine, Ticker};

/// The stuck GPU blocks far longer than this test waits for anything.
const HANG_S: f64 = 60.0;
/// A bounded wait, only catching a clock that waits on the stuck GPU.
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_gpu_stuck_for_good_does_not_stop_the_clock() {
    let machine = common::h100s("ticker-hang", 4, "");
    let (dir, nvml, ids) = common::open_without_enumerating(
        "ticker-hang",
        &machine,
        &(machine.clone() + &format!("[[faults]]\nkind = \"hang\"\ngpu = 1\nuntil_s = {HANG_S}\n")),
    );
    let engine = common::hang_engine(&nvml, &ids, 4);
    let shared = Arc::new(Mutex::new(Some(engine)));
    let ticker = Ticker::start(SharedEngine(Arc::clone(&shared))).unwrap();
    ticker.set_intervals(&[Duration::from_millis(50)]);

    let give_up = Instant::now() + WAIT;
    let mut answers = Vec::new();
    while answers.len() < 10 {
        assert!(
            Instant::now() < give_up,
            "{} answers in {WAIT:?}: the clock waits on the stuck GPU",
            answers.len()
        );
        answers.extend(ticker.drain());
        // A new fingerprint while the GPU is stuck: handed over, never waited for.
        let t = Instant::now();
        ticker.track(common::tracked(&ids, "H100"));
        assert!(
            t.elapsed() < common::TIMEOUT,
            "track() took {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Every answer names every GPU, the stuck one with its values N/A.
    for (_, data) in &answers {
        for id in &ids {
            assert!(
                data.windows(id.len()).any(|w| w == id.as_bytes()),
                "{id} missing"
            );
        }
        assert!(data.windows(3).any(|w| w == b"N/A"));
    }
    assert!(ticker.collections() >= 10);
    assert!(!ticker.closed());

    // The owner closes the engine (the watch does, when the driver goes
    // away): the clock finds it gone, says so and stops.
    if let Some(engine) = shared.lock().unwrap().take() {
        engine.close();
    }
    let give_up = Instant::now() + WAIT;
    while !ticker.closed() {
        assert!(
            Instant::now() < give_up,
            "the clock did not notice the engine closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    ticker.close();
    assert!(
        t.elapsed() < common::TIMEOUT + common::SLACK,
        "close() took {:?}",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
