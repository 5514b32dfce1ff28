//! A small, bounded pool of long-lived worker threads. Each tick hands it one
//! batch; the batch hands out its own items, so a worker that hangs inside an
//! NVML call only takes itself out: the others keep draining the batch, and
//! the pool may start a bounded number of stand-ins for hung workers.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

/// Work shared by the workers of one tick. `run` is called by each worker
/// that joins and returns when no items are left.
pub trait Batch: Send + Sync + 'static {
    fn run(&self);
}

struct State {
    generation: u64,
    batch: Option<Arc<dyn Batch>>,
    /// How many workers may join the current generation, and how many did.
    wanted: usize,
    joined: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    spawned: usize,
    /// Hard bound on threads, stand-ins for hung workers included.
    max_threads: usize,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A worker never panics while holding the lock; recover if one did.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub fn new(max_threads: usize) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    generation: 0,
                    batch: None,
                    wanted: 0,
                    joined: 0,
                    shutdown: false,
                }),
                wake: Condvar::new(),
            }),
            spawned: 0,
            max_threads: max_threads.max(1),
        }
    }

    pub fn threads(&self) -> usize {
        self.spawned
    }

    /// Makes sure `n` threads exist (bounded by the pool's maximum).
    pub fn ensure_threads(&mut self, n: usize) {
        while self.spawned < n.min(self.max_threads) {
            let shared = Arc::clone(&self.shared);
            let spawned = thread::Builder::new()
                .name(format!("nvml-stats-{}", self.spawned))
                .spawn(move || worker(shared));
            if spawned.is_err() {
                // Out of threads: run with what we have.
                break;
            }
            self.spawned += 1;
        }
    }

    /// Offers `batch` to up to `wanted` idle workers.
    pub fn start(&self, batch: Arc<dyn Batch>, wanted: usize) {
        let mut st = lock(&self.shared.state);
        st.generation += 1;
        st.batch = Some(batch);
        st.wanted = wanted.max(1);
        st.joined = 0;
        let n = st.wanted;
        drop(st);
        // Wake only as many as may join: waking every idle worker costs a
        // context switch each, which dominates small ticks.
        for _ in 0..n {
            self.shared.wake.notify_one();
        }
    }

    /// Lets more workers join the current batch (when progress stalls).
    pub fn widen(&self, wanted: usize) {
        let mut st = lock(&self.shared.state);
        if wanted > st.wanted {
            let more = wanted - st.wanted;
            st.wanted = wanted;
            drop(st);
            for _ in 0..more {
                self.shared.wake.notify_one();
            }
        }
    }

    /// The batch is over: no one else joins it.
    pub fn finish(&self) {
        let mut st = lock(&self.shared.state);
        st.batch = None;
        st.wanted = 0;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        st.shutdown = true;
        st.batch = None;
        drop(st);
        self.shared.wake.notify_all();
        // Not joined: a worker stuck in a hung driver call must not hang the
        // caller; idle ones exit at once, a stuck one when its call returns.
    }
}

fn worker(shared: Arc<Shared>) {
    let mut seen = 0u64;
    loop {
        let batch = {
            let mut st = lock(&shared.state);
            loop {
                if st.shutdown {
                    return;
                }
                if st.generation != seen && st.joined < st.wanted {
                    if let Some(b) = st.batch.clone() {
                        seen = st.generation;
                        st.joined += 1;
                        break b;
                    }
                }
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        batch.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    /// Items 0..n; item 0 blocks until released.
    struct Blocking {
        n: usize,
        next: AtomicUsize,
        done: AtomicUsize,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Batch for Blocking {
        fn run(&self) {
            loop {
                let i = self.next.fetch_add(1, Ordering::SeqCst);
                if i >= self.n {
                    return;
                }
                if i == 0 {
                    let _ = self.release.lock().unwrap().recv();
                }
                self.done.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// A batch of `n` items whose item 0 blocks until the sender sends.
    fn blocking(n: usize) -> (Arc<Blocking>, mpsc::Sender<()>) {
        let (tx, rx) = mpsc::channel();
        let b = Arc::new(Blocking {
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            release: Mutex::new(rx),
        });
        (b, tx)
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        for _ in 0..2000 {
            if what() {
                return true;
            }
            thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn a_blocked_item_does_not_stop_the_others() {
        let mut pool = Pool::new(4);
        pool.ensure_threads(4);
        let (b, tx) = blocking(100);
        pool.start(b.clone(), 4);
        assert!(wait_for(|| b.done.load(Ordering::SeqCst) == 99));
        assert_eq!(b.done.load(Ordering::SeqCst), 99, "item 0 is still blocked");
        tx.send(()).unwrap();
        assert!(wait_for(|| b.done.load(Ordering::SeqCst) == 100));
        pool.finish();
    }

    #[test]
    fn only_wanted_workers_join_until_widened() {
        let mut pool = Pool::new(3);
        pool.ensure_threads(3);
        // One worker joins and blocks on item 0; nobody else takes item 1.
        let (b, tx) = blocking(2);
        pool.start(b.clone(), 1);
        thread::sleep(Duration::from_millis(30));
        assert_eq!(b.done.load(Ordering::SeqCst), 0);
        pool.widen(3);
        assert!(wait_for(|| b.done.load(Ordering::SeqCst) == 1));
        tx.send(()).unwrap();
        assert!(wait_for(|| b.done.load(Ordering::SeqCst) == 2));
    }

    #[test]
    fn threads_are_bounded() {
        let mut pool = Pool::new(2);
        pool.ensure_threads(10);
        assert_eq!(pool.threads(), 2);
    }
}
