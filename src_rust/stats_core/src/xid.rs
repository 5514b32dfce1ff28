//! XID critical errors counted per physical GPU (extended stats), from an NVML
//! event set of the engine's own. NVML delivers every event to each set
//! registered for it, so this set does not take events from the health
//! monitor's.
//!
//! XIDs are raised against the physical GPU; a MIG instance reports its
//! parent's count (an XID on the GPU concerns every instance on it). A device
//! whose GPU cannot be registered (no handle, GPU lost, events not supported)
//! reads "N/A"; registration is retried at the next `track`.

use std::collections::HashMap;
use std::sync::Arc;

use nvml_sys::*;

use crate::nvml::{Handle, Nvml, NvmlError};

/// At most this many events are taken per tick, so a flood cannot hold a
/// tick up; the rest wait in the set for the next tick.
const MAX_EVENTS_PER_TICK: usize = 4096;

pub struct XidCounter {
    nvml: Arc<Nvml>,
    set: nvmlEventSet_t,
    /// Physical GPU handle -> XIDs seen. A key is present once the GPU is
    /// registered on the set.
    counts: HashMap<usize, u64>,
}

// SAFETY: the event set handle is an opaque token NVML accepts from any
// thread; the counter is only used by the engine that owns it.
unsafe impl Send for XidCounter {}

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
            counts: HashMap::new(),
        })
    }

    /// Registers the physical GPU of `dev` (itself, or a MIG instance's
    /// parent) for XID events, once, and returns that GPU's handle.
    pub fn watch(&mut self, dev: Handle) -> Result<Handle, NvmlError> {
        let gpu = self.physical(dev)?;
        if self.counts.contains_key(&(gpu.0 as usize)) {
            return Ok(gpu);
        }
        let register = self
            .nvml
            .register_events
            .ok_or_else(|| NvmlError::Load("symbol nvmlDeviceRegisterEvents not found".into()))?;
        // SAFETY: a handle NVML gave us and the set created in new().
        let code = unsafe { register(gpu.0, nvmlEventTypeXidCriticalError, self.set) };
        if code != NVML_SUCCESS {
            return Err(self.nvml.call_error("nvmlDeviceRegisterEvents", code));
        }
        self.counts.insert(gpu.0 as usize, 0);
        Ok(gpu)
    }

    /// The GPU a handle belongs to. NVML answers INVALID_ARGUMENT for a handle
    /// that is not a MIG instance's: then it is the GPU itself.
    fn physical(&self, dev: Handle) -> Result<Handle, NvmlError> {
        let Some(parent_of) = self.nvml.parent_of_mig else {
            return Ok(dev);
        };
        let mut gpu: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: a handle NVML gave us and an out pointer to a live local.
        match unsafe { parent_of(dev.0, &mut gpu) } {
            NVML_SUCCESS => Ok(Handle(gpu)),
            NVML_ERROR_INVALID_ARGUMENT => Ok(dev),
            code => Err(self
                .nvml
                .call_error("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", code)),
        }
    }

    /// Takes every event waiting in the set without blocking (timeout 0).
    pub fn drain(&mut self) {
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
                if let Some(n) = self.counts.get_mut(&(e.device as usize)) {
                    *n += 1;
                }
            }
        }
    }

    /// XIDs seen on a GPU returned by [`XidCounter::watch`].
    pub fn count(&self, gpu: Handle) -> Option<u64> {
        self.counts.get(&(gpu.0 as usize)).copied()
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
