//! The stats clock: one thread per engine that runs a collection whenever a
//! subscribed interval is due, keeps the answer (latest per interval) and
//! signals a file descriptor once, so that an event loop watching it wakes
//! once per answer and takes the bytes without any other thread hand-off.
//!
//! Intervals due at the same moment share one collection; so do all the
//! streams at one interval (the caller subscribes an interval once). The
//! answers waiting are bounded: one per subscribed interval, a newer one
//! replacing an older one nobody took. `track()` never waits for a
//! collection: the new set is applied by the clock thread before the next one.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::{Engine, TrackedDevice};

/// What the clock collects from: the engine, or a test's stand-in.
pub trait Source: Send + 'static {
    /// Replaces the tracked set; no NVML call. False once the source is closed.
    fn track(&mut self, devices: Vec<TrackedDevice>) -> bool;
    /// One collection into `buf` (cleared first). False once the source is
    /// closed: the clock then stops and says so ([`Ticker::closed`]).
    fn collect_into(&mut self, buf: &mut Vec<u8>) -> bool;
}

/// An engine shared with its owner (the Python object), which may close it
/// (`None`) at any time: the clock then stops.
pub struct SharedEngine(pub Arc<Mutex<Option<Engine>>>);

impl SharedEngine {
    fn lock(&self) -> MutexGuard<'_, Option<Engine>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Source for SharedEngine {
    fn track(&mut self, devices: Vec<TrackedDevice>) -> bool {
        match self.lock().as_mut() {
            Some(e) => {
                e.track(devices);
                true
            }
            None => false,
        }
    }

    fn collect_into(&mut self, buf: &mut Vec<u8>) -> bool {
        match self.lock().as_mut() {
            Some(e) => {
                e.collect_into(buf);
                true
            }
            None => false,
        }
    }
}

struct Schedule {
    next: Instant,
    every: Duration,
}

#[derive(Default)]
struct State {
    /// Subscribed intervals in nanoseconds, with their next due time.
    intervals: BTreeMap<u64, Schedule>,
    pending_track: Option<Vec<TrackedDevice>>,
    /// Answers not taken yet: at most one per interval.
    ready: BTreeMap<u64, Arc<Vec<u8>>>,
    /// The loop was told of the answers (or the close) not taken yet.
    signalled: bool,
    stop: bool,
    closed: bool,
    collections: u64,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// The clock's end of the socket pair: one byte per batch of answers.
    tx: UnixStream,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks answers as waiting; true when the loop must be told (the
    /// caller writes the byte once it has let go of the lock, so that the
    /// loop it wakes does not find the lock taken and sleep again on it).
    fn mark(st: &mut State) -> bool {
        !std::mem::replace(&mut st.signalled, true)
    }

    fn write_byte(&self) {
        // Non-blocking; at most two bytes are ever in the socket (one per
        // mark between two drains, each of which reads them all).
        let _ = (&self.tx).write(&[1]);
    }
}

/// The clock thread and what the loop takes from it.
pub struct Ticker {
    shared: Arc<Shared>,
    /// The loop's end: readable when answers wait.
    rx: UnixStream,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Ticker {
    /// Starts the clock thread (`nvml-stats-clock`) over `source`. No
    /// interval is subscribed yet, so it sleeps until one is.
    pub fn start<S: Source>(source: S) -> std::io::Result<Ticker> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            tx,
        });
        let clock = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("nvml-stats-clock".to_string())
            .spawn(move || run(&clock, source))?;
        Ok(Ticker {
            shared,
            rx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The descriptor that turns readable when answers (or the close) wait.
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Subscribes exactly these intervals. One not subscribed before is due
    /// at once; one dropped loses its answer not taken yet.
    pub fn set_intervals(&self, intervals: &[Duration]) {
        let now = Instant::now();
        let mut st = self.shared.lock();
        let wanted: BTreeMap<u64, Duration> = intervals
            .iter()
            .filter(|d| !d.is_zero())
            .map(|d| (nanos(*d), *d))
            .collect();
        st.intervals.retain(|k, _| wanted.contains_key(k));
        st.ready.retain(|k, _| wanted.contains_key(k));
        for (k, every) in wanted {
            st.intervals
                .entry(k)
                .or_insert(Schedule { next: now, every });
        }
        self.shared.wake.notify_all();
    }

    /// The tracked set for the next collection (a newer call replaces one
    /// not applied yet). Never waits for a collection in progress.
    pub fn track(&self, devices: Vec<TrackedDevice>) {
        self.shared.lock().pending_track = Some(devices);
    }

    /// The answers waiting, as (interval in ns, bytes), oldest interval
    /// first; empties the socket.
    pub fn drain(&self) -> Vec<(u64, Arc<Vec<u8>>)> {
        let mut st = self.shared.lock();
        // Always one read: the byte of a mark may come after an earlier drain
        // took its answers; that wake then finds none, and reads the byte.
        let mut sink = [0u8; 8];
        let _ = (&self.rx).read(&mut sink);
        st.signalled = false;
        std::mem::take(&mut st.ready).into_iter().collect()
    }

    /// The source was found closed: no more answers will come.
    pub fn closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Collections run so far (one per due moment, however many intervals
    /// and streams it served).
    pub fn collections(&self) -> u64 {
        self.shared.lock().collections
    }

    /// Stops the clock and waits for it: at most one collection in progress
    /// (which the engine bounds by its deadline). Idempotent.
    pub fn close(&self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            self.shared.wake.notify_all();
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // Not joined here: a drop may come from any thread; the clock ends
        // after the collection it may be in.
        let mut st = self.shared.lock();
        st.stop = true;
        self.shared.wake.notify_all();
    }
}

fn run<S: Source>(shared: &Shared, mut source: S) {
    let mut buf = Vec::new();
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let now = Instant::now();
        let next = st.intervals.values().map(|s| s.next).min();
        match next {
            None => {
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            Some(t) if t > now => {
                st = shared
                    .wake
                    .wait_timeout(st, t - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            Some(_) => {}
        }
        let due: Vec<u64> = st
            .intervals
            .iter()
            .filter(|(_, s)| s.next <= now)
            .map(|(k, _)| *k)
            .collect();
        let pending = st.pending_track.take();
        drop(st);
        let mut open = pending.is_none_or(|d| source.track(d));
        open = open && source.collect_into(&mut buf);
        let after = Instant::now();
        let answer = Arc::new(if open { buf.clone() } else { Vec::new() });
        st = shared.lock();
        st.collections += 1;
        if !open {
            st.closed = true;
            let tell = Shared::mark(&mut st);
            drop(st);
            if tell {
                shared.write_byte();
            }
            return;
        }
        let mut any = false;
        for k in due {
            // Dropped meanwhile: nobody wants this answer.
            let Some(s) = st.intervals.get_mut(&k) else {
                continue;
            };
            // A fixed rate; after a collection that overran (a GPU that
            // stopped answering), the next is one interval later, not a burst.
            s.next += s.every;
            if s.next <= after {
                s.next = after + s.every;
            }
            st.ready.insert(k, Arc::clone(&answer));
            any = true;
        }
        let tell = any && Shared::mark(&mut st);
        drop(st);
        if tell {
            shared.write_byte();
        }
        st = shared.lock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;

    /// Counts its collections; each answer is the count as text.
    struct Counting {
        n: Arc<AtomicU64>,
        tracked: Arc<Mutex<Vec<usize>>>,
        close_after: u64,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Source for Counting {
        fn track(&mut self, devices: Vec<TrackedDevice>) -> bool {
            self.tracked.lock().unwrap().push(devices.len());
            true
        }
        fn collect_into(&mut self, buf: &mut Vec<u8>) -> bool {
            if let Some(g) = &self.gate {
                let _ = g.recv();
            }
            let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
            buf.clear();
            buf.extend_from_slice(n.to_string().as_bytes());
            n <= self.close_after
        }
    }

    fn counting(close_after: u64) -> (Counting, Arc<AtomicU64>, Arc<Mutex<Vec<usize>>>) {
        let n = Arc::new(AtomicU64::new(0));
        let tracked = Arc::new(Mutex::new(Vec::new()));
        let src = Counting {
            n: Arc::clone(&n),
            tracked: Arc::clone(&tracked),
            close_after,
            gate: None,
        };
        (src, n, tracked)
    }

    /// Waits until the ticker's descriptor is readable (bounded: only a hang fails).
    fn wait_readable(t: &Ticker) {
        let give_up = Instant::now() + Duration::from_secs(20);
        let mut b = [0u8; 1];
        // Reads the byte: drain() finds the answers without it.
        while !matches!((&t.rx).read(&mut b), Ok(1)) {
            assert!(Instant::now() < give_up, "no answer signalled");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn track_one() -> Vec<TrackedDevice> {
        vec![TrackedDevice {
            device_id: "GPU-1".into(),
            uuid: "GPU-1".into(),
            group: "g".into(),
            gpu: String::new(),
        }]
    }

    #[test]
    fn a_new_interval_is_due_at_once_and_signalled_once() {
        let (src, n, _) = counting(u64::MAX);
        let t = Ticker::start(src).unwrap();
        t.set_intervals(&[Duration::from_secs(3600)]);
        wait_readable(&t);
        let answers = t.drain();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0, 3_600_000_000_000);
        assert_eq!(&answers[0].1[..], b"1");
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // Drained: the descriptor is no longer readable.
        let mut b = [0u8; 1];
        let err = (&t.rx).read(&mut b).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(t.collections(), 1);
        t.close();
    }

    #[test]
    fn intervals_due_together_share_one_collection() {
        let (mut src, n, _) = counting(u64::MAX);
        let (go, gate) = mpsc::channel();
        src.gate = Some(gate);
        let t = Ticker::start(src).unwrap();
        // Both new, so both due at the same moment.
        t.set_intervals(&[Duration::from_secs(3600), Duration::from_secs(7200)]);
        go.send(()).unwrap();
        wait_readable(&t);
        let answers = t.drain();
        assert_eq!(answers.len(), 2);
        assert!(Arc::ptr_eq(&answers[0].1, &answers[1].1));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        drop(go);
        t.close();
    }

    #[test]
    fn an_answer_not_taken_is_replaced_not_queued() {
        let (src, n, _) = counting(u64::MAX);
        let t = Ticker::start(src).unwrap();
        t.set_intervals(&[Duration::from_millis(1)]);
        while n.load(Ordering::SeqCst) < 50 {
            std::thread::yield_now();
        }
        let answers = t.drain();
        // Fifty collections, one answer waiting: the latest.
        assert_eq!(answers.len(), 1);
        let latest: u64 = std::str::from_utf8(&answers[0].1).unwrap().parse().unwrap();
        assert!(latest > 1);
        t.close();
    }

    #[test]
    fn track_is_applied_before_the_next_collection() {
        let (src, _, tracked) = counting(u64::MAX);
        let t = Ticker::start(src).unwrap();
        t.track(track_one());
        t.set_intervals(&[Duration::from_secs(3600)]);
        wait_readable(&t);
        t.drain();
        assert_eq!(*tracked.lock().unwrap(), vec![1]);
        t.close();
    }

    #[test]
    fn a_closed_source_stops_the_clock_and_says_so() {
        let (src, n, _) = counting(0);
        let t = Ticker::start(src).unwrap();
        t.set_intervals(&[Duration::from_millis(1)]);
        wait_readable(&t);
        assert!(t.drain().is_empty());
        assert!(t.closed());
        assert_eq!(n.load(Ordering::SeqCst), 1);
        t.close();
    }

    #[test]
    fn a_dropped_interval_loses_its_waiting_answer() {
        let (src, _, _) = counting(u64::MAX);
        let t = Ticker::start(src).unwrap();
        t.set_intervals(&[Duration::from_secs(3600)]);
        wait_readable(&t);
        t.set_intervals(&[]);
        assert!(t.drain().is_empty());
        t.close();
    }

    #[test]
    fn close_joins_an_idle_clock() {
        let (src, n, _) = counting(u64::MAX);
        let t = Ticker::start(src).unwrap();
        t.close();
        t.close();
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }
}
