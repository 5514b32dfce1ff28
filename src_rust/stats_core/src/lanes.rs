//! One lane per physical GPU, shared by every NVML caller of the process.
//!
//! An NVML call cannot be cancelled: a GPU that stops answering keeps the
//! thread that called it. So a thread takes the GPU's lane before it calls
//! NVML on that GPU and gives it back after; whoever finds the lane held
//! waits for it (a few microseconds when the GPU answers), and gives up at
//! once when the holder has held it past the deadline (the GPU is stuck).
//! The Python side's executor and the Rust stats engine take lanes from one
//! table, so a stuck GPU holds one thread in the whole process, whichever
//! side entered it first.
//!
//! The table also holds the process's one NVML deadline (`health {
//! call_timeout }`): the Python executor sets it, the stats engine's tick
//! reads it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Who holds a lane, since when, doing what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub key: String,
    pub owner: u64,
    /// How long it has held the lane.
    pub held_for: Duration,
    /// What it is doing there (an NVML call's name, or "the stats engine's read").
    pub what: String,
}

/// The outcome of [`Lanes::hold`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The caller holds the lane now.
    Taken,
    /// Another holder kept it until the caller's `until`, within the deadline.
    Busy,
    /// Its holder has held it past the deadline: the GPU is stuck.
    Stuck(Held),
}

struct Holder {
    owner: u64,
    since: Instant,
    what: Cow<'static, str>,
}

/// A lane of the table, by its index: what a caller that takes the same lane
/// often (a stats slot) keeps, so that taking it hashes no key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneId(usize);

struct Lane {
    key: String,
    holder: Option<Holder>,
}

struct State {
    /// Lanes are never removed: one per GPU the process has seen.
    ids: HashMap<String, usize>,
    lanes: Vec<Lane>,
    deadline: Duration,
    /// Callers waiting in `hold`: a release wakes them only when there are
    /// some (a wake is a system call, on every read of every tick otherwise).
    waiters: usize,
}

impl State {
    fn id(&mut self, key: &str) -> usize {
        if let Some(&i) = self.ids.get(key) {
            return i;
        }
        self.lanes.push(Lane {
            key: key.to_string(),
            holder: None,
        });
        self.ids.insert(key.to_string(), self.lanes.len() - 1);
        self.lanes.len() - 1
    }
}

pub struct Lanes {
    state: Mutex<State>,
    freed: Condvar,
    next_owner: AtomicU64,
}

/// Owners handed out by [`Lanes::new_owner`] start here, above any address
/// the Python side uses as an owner (`id()` of its job).
const FIRST_OWNER: u64 = 1 << 62;

impl Lanes {
    pub fn new(deadline: Duration) -> Lanes {
        Lanes {
            state: Mutex::new(State {
                ids: HashMap::new(),
                lanes: Vec::new(),
                deadline,
                waiters: 0,
            }),
            freed: Condvar::new(),
            next_owner: AtomicU64::new(FIRST_OWNER),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; recover if something did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The NVML deadline: a lane held longer is stuck; a stats tick waits this long.
    pub fn deadline(&self) -> Duration {
        self.lock().deadline
    }

    pub fn set_deadline(&self, deadline: Duration) {
        self.lock().deadline = deadline;
        // Waiters recompute when their holder turns stuck.
        self.freed.notify_all();
    }

    /// A fresh owner id, for holders that have none of their own.
    pub fn new_owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// The lane of `key`, to take by id from then on.
    pub fn id(&self, key: &str) -> LaneId {
        LaneId(self.lock().id(key))
    }

    /// Takes `key` now if it is free (or already `owner`'s); else who holds it.
    pub fn try_hold(
        &self,
        key: &str,
        owner: u64,
        what: impl Into<Cow<'static, str>>,
    ) -> Result<(), Held> {
        let mut st = self.lock();
        let i = st.id(key);
        let lane = &mut st.lanes[i];
        let now = Instant::now();
        match &lane.holder {
            Some(h) if h.owner != owner => Err(held(&lane.key, h, now)),
            Some(_) => Ok(()),
            None => {
                lane.holder = Some(Holder {
                    owner,
                    since: now,
                    what: what.into(),
                });
                Ok(())
            }
        }
    }

    /// Takes `key`, waiting for it until `until` at most; gives up at once
    /// when its holder has held it past the deadline.
    pub fn hold(
        &self,
        key: &str,
        owner: u64,
        what: impl Into<Cow<'static, str>>,
        until: Instant,
    ) -> Hold {
        let id = self.id(key);
        self.hold_id(id, owner, what, until)
    }

    /// [`Lanes::hold`] by the lane's id.
    pub fn hold_id(
        &self,
        id: LaneId,
        owner: u64,
        what: impl Into<Cow<'static, str>>,
        until: Instant,
    ) -> Hold {
        let mut st = self.lock();
        let mut what = Some(what);
        loop {
            let now = Instant::now();
            let deadline = st.deadline;
            let lane = &mut st.lanes[id.0];
            let stuck_at = match &lane.holder {
                None => {
                    lane.holder = Some(Holder {
                        owner,
                        since: now,
                        what: what.take().map_or(Cow::Borrowed(""), Into::into),
                    });
                    return Hold::Taken;
                }
                Some(h) if h.owner == owner => return Hold::Taken,
                Some(h) => {
                    let stuck_at = h.since + deadline;
                    if now >= stuck_at {
                        return Hold::Stuck(held(&lane.key, h, now));
                    }
                    stuck_at
                }
            };
            if now >= until {
                return Hold::Busy;
            }
            // Woken by a release; else at whichever comes first of the
            // caller's limit and the holder turning stuck.
            let wake = until.min(stuck_at);
            st.waiters += 1;
            st = self
                .freed
                .wait_timeout(st, wake - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.waiters -= 1;
        }
    }

    /// Gives `key` back; false when `owner` does not hold it.
    pub fn release(&self, key: &str, owner: u64) -> bool {
        let id = {
            let st = self.lock();
            match st.ids.get(key) {
                Some(&i) => LaneId(i),
                None => return false,
            }
        };
        self.release_id(id, owner)
    }

    /// [`Lanes::release`] by the lane's id.
    pub fn release_id(&self, id: LaneId, owner: u64) -> bool {
        let mut st = self.lock();
        let lane = &mut st.lanes[id.0];
        if lane.holder.as_ref().is_some_and(|h| h.owner == owner) {
            lane.holder = None;
            let waiters = st.waiters > 0;
            drop(st);
            if waiters {
                self.freed.notify_all();
            }
            true
        } else {
            false
        }
    }

    /// Who holds `key`, if anyone.
    pub fn holder(&self, key: &str) -> Option<Held> {
        let st = self.lock();
        let lane = &st.lanes[*st.ids.get(key)?];
        lane.holder.as_ref().map(|h| held(key, h, Instant::now()))
    }

    /// Every lane held now.
    pub fn held(&self) -> Vec<Held> {
        let st = self.lock();
        let now = Instant::now();
        st.lanes
            .iter()
            .filter_map(|l| l.holder.as_ref().map(|h| held(&l.key, h, now)))
            .collect()
    }

    /// The lanes held past the deadline: the stuck GPUs, and what holds each.
    pub fn stuck(&self) -> Vec<Held> {
        let deadline = self.lock().deadline;
        self.held()
            .into_iter()
            .filter(|h| h.held_for >= deadline)
            .collect()
    }
}

fn held(key: &str, h: &Holder, now: Instant) -> Held {
    Held {
        key: key.to_string(),
        owner: h.owner,
        held_for: now.duration_since(h.since),
        what: h.what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::thread;

    // Long enough never to pass in a test that does not mean it to.
    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn a_free_lane_is_taken_and_given_back() {
        let lanes = Lanes::new(LONG);
        assert_eq!(lanes.try_hold("GPU-a", 1, "scan"), Ok(()));
        // Its holder may take it again; another may not.
        assert_eq!(lanes.try_hold("GPU-a", 1, "scan"), Ok(()));
        let other = lanes.try_hold("GPU-a", 2, "probe").unwrap_err();
        assert_eq!((other.owner, other.what.as_str()), (1, "scan"));
        // Another GPU's lane is another lane.
        assert_eq!(lanes.try_hold("GPU-b", 2, "probe"), Ok(()));
        assert!(!lanes.release("GPU-a", 2), "only its holder gives it back");
        assert!(lanes.release("GPU-a", 1));
        assert_eq!(lanes.holder("GPU-a"), None);
        assert_eq!(lanes.try_hold("GPU-a", 2, "probe"), Ok(()));
    }

    #[test]
    fn a_busy_lane_is_waited_for_until_it_is_released() {
        let lanes = Arc::new(Lanes::new(LONG));
        lanes.try_hold("GPU-a", 1, "probe").unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let lanes = Arc::clone(&lanes);
            thread::spawn(move || {
                tx.send(()).unwrap();
                lanes.hold("GPU-a", 2, "read", Instant::now() + LONG)
            })
        };
        rx.recv().unwrap();
        assert!(lanes.release("GPU-a", 1));
        assert_eq!(waiter.join().unwrap(), Hold::Taken);
        assert_eq!(lanes.holder("GPU-a").unwrap().owner, 2);
    }

    #[test]
    fn a_busy_lane_not_freed_by_the_limit_is_busy() {
        let lanes = Lanes::new(LONG);
        lanes.try_hold("GPU-a", 1, "probe").unwrap();
        // A limit already passed: no wait at all.
        assert_eq!(lanes.hold("GPU-a", 2, "read", Instant::now()), Hold::Busy);
        assert_eq!(lanes.holder("GPU-a").unwrap().owner, 1);
    }

    #[test]
    fn a_lane_held_past_the_deadline_is_stuck_and_skipped_at_once() {
        let lanes = Lanes::new(LONG);
        lanes
            .try_hold("GPU-a", 1, "nvmlDeviceGetMemoryInfo")
            .unwrap();
        lanes
            .try_hold("GPU-b", 1, "nvmlDeviceGetMemoryInfo")
            .unwrap();
        assert!(lanes.stuck().is_empty());
        // The deadline lowered to nothing: both holders are past it now, and a
        // caller willing to wait an hour gives up at once.
        lanes.set_deadline(Duration::ZERO);
        match lanes.hold("GPU-a", 2, "read", Instant::now() + LONG) {
            Hold::Stuck(h) => {
                assert_eq!((h.owner, h.what.as_str()), (1, "nvmlDeviceGetMemoryInfo"))
            }
            other => panic!("{other:?}"),
        }
        let mut stuck: Vec<String> = lanes.stuck().into_iter().map(|h| h.key).collect();
        stuck.sort();
        assert_eq!(stuck, ["GPU-a", "GPU-b"]);
        // It returns: the lane is free again.
        assert!(lanes.release("GPU-a", 1));
        assert_eq!(lanes.hold("GPU-a", 2, "read", Instant::now()), Hold::Taken);
    }

    #[test]
    fn a_waiter_gives_up_when_its_holder_turns_stuck() {
        let lanes = Arc::new(Lanes::new(LONG));
        lanes
            .try_hold("GPU-a", 1, "nvmlDeviceGetPowerUsage")
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let lanes = Arc::clone(&lanes);
            thread::spawn(move || {
                tx.send(()).unwrap();
                lanes.hold("GPU-a", 2, "read", Instant::now() + LONG)
            })
        };
        rx.recv().unwrap();
        // A lowered deadline wakes the waiter, which finds the holder stuck.
        lanes.set_deadline(Duration::ZERO);
        assert!(matches!(waiter.join().unwrap(), Hold::Stuck(h) if h.owner == 1));
    }

    #[test]
    fn owners_handed_out_are_distinct_and_above_python_ids() {
        let lanes = Lanes::new(LONG);
        let (a, b) = (lanes.new_owner(), lanes.new_owner());
        assert_ne!(a, b);
        assert!(a >= FIRST_OWNER && b >= FIRST_OWNER);
    }
}
