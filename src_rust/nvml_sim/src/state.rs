//! Process-wide state: the reference-counted nvmlInit and the machine in use.
//!
//! A built machine is leaked on purpose: handles are addresses into it, and a caller
//! that keeps a handle past nvmlShutdown (or races one) must read stale data, not freed
//! memory. Machines are cached by (path, file text), so init/shutdown cycles on the same
//! scenario reuse one machine and the leak stays bounded by the distinct scenarios used.
//! Reusing the machine also keeps its clock, and with it which faults already fired.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

use nvml_sys::*;

use crate::sim::Sim;

/// Env var naming the scenario file, read at each first nvmlInit.
pub const SCENARIO_ENV: &str = "NVML_SIM_SCENARIO";

#[derive(Default)]
struct Global {
    refcount: u32,
    cache: Vec<(String, String, &'static Sim)>,
    failed_inits: HashMap<String, u64>,
    last: Option<&'static Sim>,
}

static GLOBAL: Mutex<Option<Global>> = Mutex::new(None);
static CURRENT: AtomicPtr<Sim> = AtomicPtr::new(std::ptr::null_mut());

fn lock() -> MutexGuard<'static, Option<Global>> {
    // A panic while holding the lock leaves consistent data (every update is one
    // assignment), so a poisoned lock is still usable.
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The machine while NVML is initialized.
#[inline]
pub fn current() -> Option<&'static Sim> {
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: CURRENT only ever holds null or a leaked, never-freed Sim.
    unsafe { p.as_ref() }
}

/// The last machine loaded, initialized or not (for nvmlSimGetScenario).
pub fn last() -> Option<&'static Sim> {
    lock().as_ref().and_then(|g| g.last)
}

pub fn init(_flags: u32) -> nvmlReturn_t {
    let mut guard = lock();
    let g = guard.get_or_insert_with(Global::default);
    if g.refcount > 0 {
        // While the driver is gone, inits answer what every other call answers.
        if let Some(code) = current().and_then(|s| s.gone()) {
            return code;
        }
        g.refcount += 1;
        return NVML_SUCCESS;
    }
    let path = match std::env::var(SCENARIO_ENV) {
        Ok(p) if !p.trim().is_empty() => p,
        // No scenario: behave like a machine without the NVIDIA driver.
        _ => return NVML_ERROR_DRIVER_NOT_LOADED,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nvml-sim: cannot read scenario {path:?} ({SCENARIO_ENV}): {e}");
            return NVML_ERROR_UNKNOWN;
        }
    };
    let cached = g
        .cache
        .iter()
        .find(|(p, t, _)| *p == path && *t == text)
        .map(|(_, _, s)| *s);
    let sim: &'static Sim = match cached {
        Some(s) => s,
        None => match Sim::from_toml(&path, &text) {
            Ok(s) => {
                let s: &'static Sim = Box::leak(Box::new(s));
                g.cache.push((path.clone(), text, s));
                s
            }
            Err(e) => {
                eprintln!("nvml-sim: bad scenario {path:?}: {e}");
                return NVML_ERROR_UNKNOWN;
            }
        },
    };
    g.last = Some(sim);
    sim.start_clock();
    if let Some((code, fail_count)) = sim.init_error {
        let n = g.failed_inits.entry(path).or_insert(0);
        if fail_count == 0 || *n < fail_count {
            *n += 1;
            return code;
        }
    }
    if let Some(code) = sim.gone_for_new_session() {
        return code;
    }
    sim.begin_session();
    CURRENT.store(sim as *const Sim as *mut Sim, Ordering::Release);
    g.refcount = 1;
    NVML_SUCCESS
}

pub fn shutdown() -> nvmlReturn_t {
    let mut guard = lock();
    let Some(g) = guard.as_mut() else {
        return NVML_ERROR_UNINITIALIZED;
    };
    if g.refcount == 0 {
        return NVML_ERROR_UNINITIALIZED;
    }
    g.refcount -= 1;
    if g.refcount == 0 {
        CURRENT.store(std::ptr::null_mut(), Ordering::Release);
    }
    NVML_SUCCESS
}
