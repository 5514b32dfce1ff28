//! XID critical errors counted per physical GPU (extended stats), from an NVML
//! event set of the engine's own. NVML delivers every event to each set
//! registered for it, so this set does not take events from the health
//! monitor's.
//!
//! XIDs are raised against the physical GPU; a MIG instance reports its
//! parent's count (an XID on the GPU concerns every instance on it). A device
//! whose GPU cannot be registered (no handle, GPU lost, events not supported)
//! reads "N/A"; registration is retried after the next `track`.
//!
//! The counter is shared by the engine's workers: registrations run in the
//! reads of their devices and the drain runs as pool work, all under the
//! tick's deadline (engine.rs). The counts' lock is never held across an
//! NVML call, so a call stuck in the driver never blocks the others on it.
//! While a drain is stuck, later ticks skip it and the counts keep their
//! last values: a lower bound, as the events wait in the set until then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nvml_sys::*;

use crate::nvml::{Handle, Nvml, NvmlError};

/// At most this many events are taken per tick, so a flood cannot hold a
/// tick up; the rest wait in the set for the next tick.
const MAX_EVENTS_PER_TICK: usize = 4096;

/// A physical GPU's place on the set.
enum Watch {
    /// A worker is in nvmlDeviceRegisterEvents for it.
    Registering,
    /// Registered; XIDs seen since.
    Registered(u64),
}

pub struct XidCounter {
    nvml: Arc<Nvml>,
    set: nvmlEventSet_t,
    /// Physical GPU handle -> its registration. A GPU whose registration
    /// failed has no key (and is tried again when asked to).
    counts: Mutex<HashMap<usize, Watch>>,
}

// SAFETY: the event set handle is an opaque token NVML accepts from any
// thread (NVML is thread-safe); the counts are behind a Mutex.
unsafe impl Send for XidCounter {}
unsafe impl Sync for XidCounter {}

/// The counts, locked (briefly: see [`XidCounter::counts`]).
pub struct Counts<'a>(MutexGuard<'a, HashMap<usize, Watch>>);

impl Counts<'_> {
    /// XIDs seen on a GPU returned by [`XidCounter::watch`]; None while it
    /// is not (yet) registered.
    pub fn get(&self, gpu: Handle) -> Option<u64> {
        match self.0.get(&(gpu.0 as usize)) {
            Some(Watch::Registered(n)) => Some(*n),
            _ => None,
        }
    }
}

impl XidCounter {
    /// Creates the event set.
    pub fn new(nvml: Arc<Nvml>) -> Result<XidCounter, NvmlError> {
        let create = nvml
            .event_set_create
            .ok_or_else(|| NvmlError::Load("symbol nvmlEventSetCreate not found".into()))?;
        let mut set: nvmlEventSet_t = std::ptr::null_mut();
        // SAFETY: out pointer to a live local.
        let code = unsafe { create(&mut set) };
        if code != NVML_SUCCESS {
            return Err(nvml.call_error("nvmlEventSetCreate", code));
        }
        Ok(XidCounter {
            nvml,
            set,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<usize, Watch>> {
        // Nothing panics while holding it; recover if something did.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the physical GPU of `dev` (itself, or a MIG instance's
    /// parent) for XID events, once, and returns that GPU's handle. When
    /// another worker is registering the same GPU (a sibling MIG instance)
    /// this returns at once with that GPU: its count reads None until that
    /// registration succeeds.
    pub fn watch(&self, dev: Handle) -> Result<Handle, NvmlError> {
        let gpu = self.physical(dev)?;
        let key = gpu.0 as usize;
        {
            let mut counts = self.lock();
            if counts.contains_key(&key) {
                return Ok(gpu);
            }
            counts.insert(key, Watch::Registering);
        }
        let result = match self.nvml.register_events {
            // SAFETY: a handle NVML gave us and the set created in new().
            Some(register) => {
                match unsafe { register(gpu.0, nvmlEventTypeXidCriticalError, self.set) } {
                    NVML_SUCCESS => Ok(gpu),
                    code => Err(self.nvml.call_error("nvmlDeviceRegisterEvents", code)),
                }
            }
            None => Err(NvmlError::Load(
                "symbol nvmlDeviceRegisterEvents not found".into(),
            )),
        };
        let mut counts = self.lock();
        match result {
            Ok(_) => counts.insert(key, Watch::Registered(0)),
            Err(_) => counts.remove(&key),
        };
        result
    }

    /// The GPU a handle belongs to. For a handle that is not a MIG instance's
    /// nvml.h lists INVALID_ARGUMENT and NOT_SUPPORTED (drivers answer either):
    /// then it is the GPU itself.
    fn physical(&self, dev: Handle) -> Result<Handle, NvmlError> {
        let Some(parent_of) = self.nvml.parent_of_mig else {
            return Ok(dev);
        };
        let mut gpu: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: a handle NVML gave us and an out pointer to a live local.
        match unsafe { parent_of(dev.0, &mut gpu) } {
            NVML_SUCCESS => Ok(Handle(gpu)),
            NVML_ERROR_INVALID_ARGUMENT | NVML_ERROR_NOT_SUPPORTED => Ok(dev),
            code => Err(self
                .nvml
                .call_error("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", code)),
        }
    }

    /// Takes every event waiting in the set without blocking (timeout 0).
    pub fn drain(&self) {
        let Some(wait) = self.nvml.event_set_wait else {
            return;
        };
        for _ in 0..MAX_EVENTS_PER_TICK {
            let mut e = nvmlEventData_t {
                device: std::ptr::null_mut(),
                eventType: 0,
                eventData: 0,
                gpuInstanceId: 0,
                computeInstanceId: 0,
            };
            // SAFETY: the set from new() and an out pointer to a live local.
            if unsafe { wait(self.set, &mut e, 0) } != NVML_SUCCESS {
                // NVML_ERROR_TIMEOUT: nothing more waiting (or an error: try next tick).
                return;
            }
            if e.eventType & nvmlEventTypeXidCriticalError != 0 {
                if let Some(Watch::Registered(n)) = self.lock().get_mut(&(e.device as usize)) {
                    *n += 1;
                }
            }
        }
    }

    /// The counts, to read several GPUs' under one lock. Hold it only to
    /// read: the drain takes it for each event, a registration twice.
    pub fn counts(&self) -> Counts<'_> {
        Counts(self.lock())
    }

    /// XIDs seen on a GPU returned by [`XidCounter::watch`]; None while it
    /// is not (yet) registered.
    pub fn count(&self, gpu: Handle) -> Option<u64> {
        self.counts().get(gpu)
    }
}

impl Drop for XidCounter {
    fn drop(&mut self) {
        if let Some(free) = self.nvml.event_set_free {
            // SAFETY: the set from new(), freed once; NVML is still initialised
            // (this holds an Arc to it).
            unsafe {
                free(self.set);
            }
        }
    }
}
