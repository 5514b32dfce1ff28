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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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

struct LaneState {
    holder: Option<Holder>,
    /// Callers waiting in `hold`: a release wakes them only when there are
    /// some (a wake is a system call, on every read of every tick otherwise).
    waiters: usize,
}

/// One GPU's lane, with a lock of its own: the reads of different GPUs
/// never wait for each other's bookkeeping.
struct Lane {
    key: String,
    state: Mutex<LaneState>,
    freed: Condvar,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        // Nothing panics while holding it; recover if something did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A lane of the table, as a caller that takes the same lane often (a
/// stats slot) keeps it: taking it then hashes no key.
#[derive(Clone)]
pub struct LaneId(Arc<Lane>);

impl LaneId {
    /// Which lane it is: equal for two ids of one lane.
    pub fn addr(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

pub struct Lanes {
    /// Lanes are never removed: one per GPU the process has seen.
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    /// The deadline, in nanoseconds.
    deadline_ns: AtomicU64,
    next_owner: AtomicU64,
}

/// Owners handed out by [`Lanes::new_owner`] start here, above any address
/// the Python side uses as an owner (`id()` of its job).
const FIRST_OWNER: u64 = 1 << 62;

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl Lanes {
    pub fn new(deadline: Duration) -> Lanes {
        Lanes {
            lanes: Mutex::new(HashMap::new()),
            deadline_ns: AtomicU64::new(nanos(deadline)),
            next_owner: AtomicU64::new(FIRST_OWNER),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Lane>>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The NVML deadline: a lane held longer is stuck; a stats tick waits this long.
    pub fn deadline(&self) -> Duration {
        Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire))
    }

    pub fn set_deadline(&self, deadline: Duration) {
        self.deadline_ns.store(nanos(deadline), Ordering::Release);
        // Waiters recompute when their holder turns stuck.
        for lane in self.map().values() {
            let _g = lane.lock();
            lane.freed.notify_all();
        }
    }

    /// A fresh owner id, for holders that have none of their own.
    pub fn new_owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// The lane of `key`, to take by id from then on.
    pub fn id(&self, key: &str) -> LaneId {
        let mut map = self.map();
        if let Some(lane) = map.get(key) {
            return LaneId(Arc::clone(lane));
        }
        let lane = Arc::new(Lane {
            key: key.to_string(),
            state: Mutex::new(LaneState {
                holder: None,
                waiters: 0,
            }),
            freed: Condvar::new(),
        });
        map.insert(key.to_string(), Arc::clone(&lane));
        LaneId(lane)
    }

    fn find(&self, key: &str) -> Option<Arc<Lane>> {
        self.map().get(key).cloned()
    }

    /// Takes `key` now if it is free (or already `owner`'s); else who holds it.
    pub fn try_hold(
        &self,
        key: &str,
        owner: u64,
        what: impl Into<Cow<'static, str>>,
    ) -> Result<(), Held> {
        let lane = self.id(key).0;
        let mut st = lane.lock();
        let now = Instant::now();
        match &st.holder {
            Some(h) if h.owner != owner => Err(held(&lane.key, h, now)),
            Some(_) => Ok(()),
            None => {
                st.holder = Some(Holder {
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
        self.hold_id(&id, owner, what, until)
    }

    /// [`Lanes::hold`] by the lane's id.
    pub fn hold_id(
        &self,
        id: &LaneId,
        owner: u64,
        what: impl Into<Cow<'static, str>>,
        until: Instant,
    ) -> Hold {
        let lane = &id.0;
        let mut st = lane.lock();
        let mut what = Some(what);
        loop {
            let now = Instant::now();
            let stuck_at = match &st.holder {
                None => {
                    st.holder = Some(Holder {
                        owner,
                        since: now,
                        what: what.take().map_or(Cow::Borrowed(""), Into::into),
                    });
                    return Hold::Taken;
                }
                Some(h) if h.owner == owner => return Hold::Taken,
                Some(h) => {
                    let stuck_at = h.since + self.deadline();
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
            st = lane
                .freed
                .wait_timeout(st, wake - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.waiters -= 1;
        }
    }

    /// Gives `key` back; false when `owner` does not hold it.
    pub fn release(&self, key: &str, owner: u64) -> bool {
        match self.find(key) {
            Some(lane) => self.release_id(&LaneId(lane), owner),
            None => false,
        }
    }

    /// [`Lanes::release`] by the lane's id.
    pub fn release_id(&self, id: &LaneId, owner: u64) -> bool {
        let lane = &id.0;
        let mut st = lane.lock();
        if st.holder.as_ref().is_some_and(|h| h.owner == owner) {
            st.holder = None;
            if st.waiters > 0 {
                lane.freed.notify_all();
            }
            true
        } else {
            false
        }
    }

    /// Who holds `key`, if anyone.
    pub fn holder(&self, key: &str) -> Option<Held> {
        let lane = self.find(key)?;
        let st = lane.lock();
        st.holder.as_ref().map(|h| held(key, h, Instant::now()))
    }

    /// Every lane held now.
    pub fn held(&self) -> Vec<Held> {
        let lanes: Vec<Arc<Lane>> = self.map().values().cloned().collect();
        let now = Instant::now();
        lanes
            .iter()
            .filter_map(|l| l.lock().holder.as_ref().map(|h| held(&l.key, h, now)))
            .collect()
    }

    /// The lanes held past the deadline: the stuck GPUs, and what holds each.
    pub fn stuck(&self) -> Vec<Held> {
        let deadline = self.deadline();
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
