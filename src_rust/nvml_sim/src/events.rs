//! Event sets: the scenario's timed events, delivered once to each set that had the
//! event's GPU registered for its type when the event came due (nvml.h: events that
//! occurred before nvmlDeviceRegisterEvents are not recorded). A set created in a
//! later session (after a shutdown and init) does not see events that came due
//! before that session: a driver reload does not replay old XIDs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvml_sys::*;

use crate::sim::{Sim, SimEvent};

pub struct EventSet {
    pub sim: &'static Sim,
    /// (GPU, event types, machine time of the registration), one per call.
    registrations: Mutex<Vec<(usize, u64, u64)>>,
    /// Waits so far that found nothing ready and would have slept ([choices]
    /// event_wait_early_timeout_every counts them).
    blocking_waits: AtomicUsize,
    /// Index of the next scenario event this set has not yet seen.
    cursor: Mutex<usize>,
}

static SETS: Mutex<Option<HashMap<usize, Arc<EventSet>>>> = Mutex::new(None);
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

fn with_sets<R>(f: impl FnOnce(&mut HashMap<usize, Arc<EventSet>>) -> R) -> R {
    let mut g = SETS.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

/// Handles are small integers in pointer clothing: never dereferenced, looked up.
pub fn create(sim: &'static Sim) -> nvmlEventSet_t {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let from = sim.events_from_ns();
    let set = Arc::new(EventSet {
        sim,
        registrations: Mutex::new(Vec::new()),
        blocking_waits: AtomicUsize::new(0),
        cursor: Mutex::new(sim.events.partition_point(|e| e.at_ns < from)),
    });
    with_sets(|m| m.insert(id, set));
    (id << 4) as nvmlEventSet_t
}

pub fn get(h: nvmlEventSet_t) -> Option<Arc<EventSet>> {
    let id = (h as usize) >> 4;
    with_sets(|m| m.get(&id).cloned())
}

pub fn free(h: nvmlEventSet_t) -> bool {
    let id = (h as usize) >> 4;
    with_sets(|m| m.remove(&id).is_some())
}

impl EventSet {
    /// Records `types` of `gpu` from now on.
    pub fn register(&self, gpu: usize, types: u64) {
        let now = self.sim.elapsed_ns();
        let mut r = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
        r.push((gpu, types, now));
    }

    /// Whether the set was recording the event's GPU and type when it came due.
    fn wants(&self, e: &SimEvent) -> bool {
        let r = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
        r.iter()
            .any(|&(g, t, since)| g == e.gpu && t & e.event_type != 0 && since <= e.at_ns)
    }

    /// The next due event, waiting up to `timeout`; Ok(None) on timeout, which is
    /// early (at once) for every Nth wait that finds nothing ready when the
    /// scenario's `event_wait_early_timeout_every` is N. Err is the
    /// code the wait answers when the driver goes away or an event_wait_error window
    /// opens, before or during the wait; no event is taken then.
    pub fn wait(&self, timeout: Duration) -> Result<Option<SimEvent>, nvmlReturn_t> {
        let deadline = Instant::now() + timeout;
        let mut first = true;
        loop {
            if let Some(code) = self.sim.wait_error() {
                return Err(code);
            }
            let next_due = {
                let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
                let now = self.sim.elapsed_ns();
                let mut next_due = None;
                while let Some(e) = self.sim.events.get(*cursor) {
                    if e.at_ns > now {
                        next_due = Some(e.at_ns - now);
                        break;
                    }
                    *cursor += 1;
                    if self.wants(e) {
                        return Ok(Some(*e));
                    }
                }
                next_due
            };
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if first {
                first = false;
                let every = self.sim.choices.event_wait_early_timeout_every as usize;
                let n = self.blocking_waits.fetch_add(1, Ordering::Relaxed) + 1;
                if every > 0 && n.is_multiple_of(every) {
                    return Ok(None);
                }
            }
            // Asleep until the next thing that can end the wait, as a driver's wait
            // blocks: a registration made meanwhile needs no wake-up, since it only
            // matters for events that come due later, and each of those wakes us.
            let mut nap = deadline - now;
            for ns in next_due.into_iter().chain(self.sim.next_wait_error_in()) {
                nap = nap.min(Duration::from_nanos(ns));
            }
            std::thread::sleep(nap);
        }
    }
}
