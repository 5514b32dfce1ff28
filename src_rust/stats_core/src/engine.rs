//! The stats engine: the tracked devices, one tick of parallel reads with a
//! deadline, and the encoded StatsResponse.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nvml_sys::nvmlDevice_st;

use crate::encode::{encode_stats_response, GroupView, Timestamp};
use crate::nvml::{Handle, Nvml, NvmlError};
use crate::pool::{Batch, Pool};
use crate::sample::{DeviceSample, ReadOptions, Reading};
use crate::xid::XidCounter;

/// A device Nomad knows, as the fingerprint reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedDevice {
    /// The ID Nomad knows: GPU UUID or MIG instance UUID.
    pub device_id: String,
    /// The NVML UUID to get the handle with.
    pub uuid: String,
    /// The device group (DeviceGroup.name) it belongs to.
    pub group: String,
}

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    pub extended: bool,
    pub batched: bool,
    /// How long one tick waits for a device before its values read "N/A".
    pub timeout: Duration,
    /// Workers reading devices at once.
    pub max_workers: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            extended: false,
            batched: false,
            timeout: Duration::from_secs(1),
            max_workers: 32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
}

/// Something the engine wants logged; the Python side drains these into its
/// logger (so Rust never writes to stdout/stderr itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEvent {
    pub level: Level,
    pub message: String,
}

/// Where the engine's log events wait to be taken. It outlives the engine:
/// a read still hung at close logs when it returns, and those events must
/// not be lost with the engine.
#[derive(Clone, Default)]
pub struct LogSink(Arc<Mutex<Vec<LogEvent>>>);

impl LogSink {
    fn push(&self, level: Level, message: String) {
        self.lock().push(LogEvent { level, message });
    }

    /// Events since the last call.
    pub fn take(&self) -> Vec<LogEvent> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LogEvent>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn log(sink: &LogSink, level: Level, message: String) {
    sink.push(level, message);
}

/// Per-GPU state that outlives ticks (a hung read may finish ticks later).
/// One per distinct NVML UUID: the shares of a GPU (several device IDs, one
/// UUID) are read once per tick.
struct Slot {
    uuid: String,
    /// The first tracked device ID reading this UUID, to name it in logs.
    label: Mutex<String>,
    handle: AtomicPtr<nvmlDevice_st>,
    /// The physical GPU registered for XID events (null: not registered).
    xid_gpu: AtomicPtr<nvmlDevice_st>,
    /// The XID registration failure was reported.
    xid_reported: AtomicBool,
    /// A read is in progress (set by the worker for the duration of the read).
    busy: AtomicBool,
    /// A hang was reported and the device has not answered since.
    hung_reported: AtomicBool,
    /// The handle lookup failure was reported.
    handle_reported: AtomicBool,
}

impl Slot {
    fn new(uuid: String, label: String) -> Slot {
        Slot {
            uuid,
            label: Mutex::new(label),
            handle: AtomicPtr::new(std::ptr::null_mut()),
            xid_gpu: AtomicPtr::new(std::ptr::null_mut()),
            xid_reported: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            hung_reported: AtomicBool::new(false),
            handle_reported: AtomicBool::new(false),
        }
    }

    fn label(&self) -> String {
        self.label.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_label(&self, label: &str) {
        let mut l = self.label.lock().unwrap_or_else(|p| p.into_inner());
        if *l != label {
            *l = label.to_string();
        }
    }

    fn handle(&self, nvml: &Nvml, log_sink: &LogSink) -> Option<Handle> {
        let p = self.handle.load(Ordering::Acquire);
        if !p.is_null() {
            return Some(Handle(p));
        }
        match nvml.handle_by_uuid(&self.uuid) {
            Ok(h) => {
                self.handle.store(h.0, Ordering::Release);
                self.handle_reported.store(false, Ordering::Relaxed);
                Some(h)
            }
            Err(e) => {
                if !self.handle_reported.swap(true, Ordering::Relaxed) {
                    log(
                        log_sink,
                        Level::Warning,
                        format!(
                            "device {}: no NVML handle for UUID {} ({e}); its stats read N/A",
                            self.label(),
                            self.uuid
                        ),
                    );
                }
                None
            }
        }
    }

    fn read(&self, nvml: &Nvml, opts: ReadOptions, log_sink: &LogSink) -> DeviceSample {
        match self.handle(nvml, log_sink) {
            Some(h) => nvml.read_device(h, opts),
            None => DeviceSample::unavailable(opts.extended),
        }
    }
}

/// One tick's reads, shared with the workers.
struct Tick {
    nvml: Arc<Nvml>,
    opts: ReadOptions,
    log: LogSink,
    slots: Vec<Arc<Slot>>,
    results: Vec<OnceLock<DeviceSample>>,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Summed read time (ns), to size the next tick's worker count.
    read_ns: AtomicU64,
    finished: Mutex<()>,
    all_done: Condvar,
}

impl Batch for Tick {
    fn run(&self) {
        let n = self.slots.len();
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return;
            }
            let slot = &self.slots[i];
            if slot.busy.swap(true, Ordering::AcqRel) {
                // Still stuck in an earlier tick's read: leave it N/A.
                self.complete();
                continue;
            }
            let start = Instant::now();
            let sample = slot.read(&self.nvml, self.opts, &self.log);
            self.read_ns
                .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let _ = self.results[i].set(sample);
            slot.busy.store(false, Ordering::Release);
            if slot.hung_reported.swap(false, Ordering::AcqRel) {
                log(
                    &self.log,
                    Level::Info,
                    format!("device {} answers again", slot.label()),
                );
            }
            self.complete();
        }
    }
}

impl Tick {
    fn complete(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.slots.len() {
            let _g = self.finished.lock().unwrap_or_else(|p| p.into_inner());
            self.all_done.notify_all();
        }
    }
}

// Size each tick's worker count so that one worker gets about this much
// serial read time; a stall (a hung device) widens to every worker.
const SLICE_NS: u64 = 500_000;
const STALL: Duration = Duration::from_millis(2);
// Stand-in threads for workers stuck in hung calls, at most this many.
const MAX_STAND_INS: usize = 64;

pub struct Engine {
    nvml: Arc<Nvml>,
    config: EngineConfig,
    log: LogSink,
    /// One per distinct UUID, in the order of first appearance in `groups`.
    slots: Vec<Arc<Slot>>,
    /// Group name -> (device ID, index into `slots`), sorted by name then
    /// device ID. Shares of one GPU point at the same slot.
    groups: Vec<(String, Vec<(String, usize)>)>,
    pool: Pool,
    per_device_ns: u64,
    buf: Vec<u8>,
    /// Extended stats only.
    xid: Option<XidCounter>,
}

impl Engine {
    pub fn new(nvml: Arc<Nvml>, config: EngineConfig) -> Engine {
        let workers = config.max_workers.max(1);
        let log_sink = LogSink::default();
        let xid = if config.extended {
            XidCounter::new(Arc::clone(&nvml))
                .map_err(|e| {
                    log(
                        &log_sink,
                        Level::Warning,
                        format!("XID events unavailable ({e}); XID counts read N/A"),
                    )
                })
                .ok()
        } else {
            None
        };
        Engine {
            nvml,
            config: EngineConfig {
                max_workers: workers,
                ..config
            },
            log: log_sink,
            slots: Vec::new(),
            groups: Vec::new(),
            pool: Pool::new(workers + MAX_STAND_INS),
            per_device_ns: 0,
            buf: Vec::new(),
            xid,
        }
    }

    /// Opens NVML from `library` and builds an engine on it.
    pub fn open(library: &str, config: EngineConfig) -> Result<Engine, NvmlError> {
        Ok(Engine::new(Arc::new(Nvml::open(library)?), config))
    }

    pub fn config(&self) -> EngineConfig {
        self.config
    }

    pub fn worker_threads(&self) -> usize {
        self.pool.threads()
    }

    /// Replaces the tracked set. GPUs tracked before keep their state
    /// (cached handle, a read still hung), so a re-fingerprint does not
    /// re-report a hang. Device IDs sharing a UUID share one read.
    pub fn track(&mut self, devices: Vec<TrackedDevice>) {
        let mut old: HashMap<String, Arc<Slot>> =
            self.slots.drain(..).map(|s| (s.uuid.clone(), s)).collect();
        let mut by_group: BTreeMap<String, Vec<TrackedDevice>> = BTreeMap::new();
        for d in devices {
            by_group.entry(d.group.clone()).or_default().push(d);
        }
        self.groups.clear();
        let mut by_uuid: HashMap<String, usize> = HashMap::new();
        for (name, mut devs) in by_group {
            devs.sort_by(|a, b| a.device_id.cmp(&b.device_id));
            devs.dedup_by(|a, b| a.device_id == b.device_id);
            let mut members = Vec::with_capacity(devs.len());
            for d in devs {
                let i = match by_uuid.get(&d.uuid) {
                    Some(&i) => i,
                    None => {
                        let slot = match old.remove(&d.uuid) {
                            Some(s) => {
                                s.set_label(&d.device_id);
                                s
                            }
                            None => Arc::new(Slot::new(d.uuid.clone(), d.device_id.clone())),
                        };
                        self.slots.push(slot);
                        by_uuid.insert(d.uuid, self.slots.len() - 1);
                        self.slots.len() - 1
                    }
                };
                members.push((d.device_id, i));
            }
            self.groups.push((name, members));
        }
        self.watch_xids();
    }

    /// Registers the GPUs of tracked devices not yet registered for XIDs, in
    /// tracked order (the python engine makes the same calls in the same order).
    fn watch_xids(&mut self) {
        let Some(xid) = self.xid.as_mut() else {
            return;
        };
        for slot in &self.slots {
            // A device stuck in a hung read is left for the next track().
            if !slot.xid_gpu.load(Ordering::Relaxed).is_null() || slot.busy.load(Ordering::Acquire)
            {
                continue;
            }
            let Some(h) = slot.handle(&self.nvml, &self.log) else {
                continue;
            };
            match xid.watch(h) {
                Ok(gpu) => slot.xid_gpu.store(gpu.0, Ordering::Relaxed),
                Err(e) => {
                    if !slot.xid_reported.swap(true, Ordering::Relaxed) {
                        log(
                            &self.log,
                            Level::Warning,
                            format!(
                                "device {}: cannot watch XID events ({e}); its XID count reads N/A",
                                slot.label()
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Device IDs tracked.
    pub fn tracked(&self) -> usize {
        self.groups.iter().map(|(_, m)| m.len()).sum()
    }

    /// Distinct GPUs (UUIDs) read per tick: [`Engine::read_all`]'s length.
    pub fn read_units(&self) -> usize {
        self.slots.len()
    }

    /// Log events since the last call.
    pub fn take_log(&self) -> Vec<LogEvent> {
        self.log.take()
    }

    /// The engine's log, to keep taking events from after the engine is gone.
    pub fn log_sink(&self) -> LogSink {
        self.log.clone()
    }

    /// Stops the engine and returns its log, which outlives it: a read
    /// still hung keeps NVML initialised until it returns (then
    /// nvmlShutdown), and logs then that the device answers again.
    pub fn close(self) -> LogSink {
        for slot in &self.slots {
            if slot.busy.load(Ordering::Acquire) {
                log(
                    &self.log,
                    Level::Warning,
                    format!(
                        "closing while device {} is still in an NVML call; NVML is shut down once it returns",
                        slot.label()
                    ),
                );
            }
        }
        self.log.clone()
    }

    /// One tick: reads every tracked device and returns the encoded
    /// StatsResponse. Takes at most about `timeout` however devices behave.
    pub fn collect(&mut self) -> &[u8] {
        let mut buf = std::mem::take(&mut self.buf);
        self.collect_into(&mut buf);
        self.buf = buf;
        &self.buf
    }

    /// As [`Engine::collect`], into a caller's buffer (cleared first).
    pub fn collect_into(&mut self, buf: &mut Vec<u8>) {
        let t = Timestamp::now();
        let samples = self.read_all();
        let groups: Vec<GroupView<'_>> = self
            .groups
            .iter()
            .map(|(name, members)| GroupView {
                name,
                devices: members
                    .iter()
                    .map(|(id, i)| (id.as_str(), &samples[*i]))
                    .collect(),
            })
            .collect();
        encode_stats_response(buf, &groups, t);
    }

    /// Reads every tracked GPU once: one sample per distinct UUID, in the
    /// order of first appearance (groups by name, devices by ID). Values of
    /// GPUs that did not answer in time are "N/A".
    pub fn read_all(&mut self) -> Vec<DeviceSample> {
        let n = self.slots.len();
        let opts = ReadOptions {
            extended: self.config.extended,
            batched: self.config.batched,
        };
        if n == 0 {
            return Vec::new();
        }
        if let Some(xid) = self.xid.as_mut() {
            xid.drain();
        }
        let deadline = Instant::now() + self.config.timeout;
        let stuck = self
            .slots
            .iter()
            .filter(|s| s.busy.load(Ordering::Relaxed))
            .count();
        let max = self.config.max_workers;
        self.pool
            .ensure_threads(max.min(n) + stuck.min(MAX_STAND_INS));

        let tick = Arc::new(Tick {
            nvml: Arc::clone(&self.nvml),
            opts,
            log: self.log.clone(),
            slots: self.slots.clone(),
            results: (0..n).map(|_| OnceLock::new()).collect(),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            read_ns: AtomicU64::new(0),
            finished: Mutex::new(()),
            all_done: Condvar::new(),
        });
        let wanted = if self.per_device_ns == 0 {
            max
        } else {
            ((self.per_device_ns * n as u64).div_ceil(SLICE_NS) as usize).clamp(1, max)
        };
        self.pool.start(Arc::clone(&tick) as Arc<dyn Batch>, wanted);
        self.wait(&tick, deadline, wanted);
        // Whatever is not taken yet stays N/A; late workers find nothing.
        tick.next.store(usize::MAX / 2, Ordering::Relaxed);
        self.pool.finish();

        let answered = tick.results.iter().filter(|r| r.get().is_some()).count();
        if answered > 0 {
            self.per_device_ns = tick.read_ns.load(Ordering::Relaxed) / answered as u64;
        }
        let mut out = Vec::with_capacity(n);
        for (slot, r) in tick.slots.iter().zip(&tick.results) {
            match r.get() {
                Some(s) => out.push(*s),
                None => {
                    if slot.busy.load(Ordering::Acquire)
                        && !slot.hung_reported.swap(true, Ordering::AcqRel)
                    {
                        log(
                            &self.log,
                            Level::Warning,
                            format!(
                                "device {} did not answer NVML within {:?}; its stats read N/A until it does",
                                slot.label(),
                                self.config.timeout
                            ),
                        );
                    }
                    out.push(DeviceSample::unavailable(opts.extended));
                }
            }
        }
        if let Some(xid) = &self.xid {
            for (slot, s) in self.slots.iter().zip(out.iter_mut()) {
                let gpu = slot.xid_gpu.load(Ordering::Relaxed);
                if let (Some(x), false) = (s.extended.as_mut(), gpu.is_null()) {
                    x.xid_count = xid
                        .count(Handle(gpu))
                        .map_or(Reading::NotAvailable, |c| Reading::Int(c as i64));
                }
            }
        }
        out
    }

    fn wait(&self, tick: &Tick, deadline: Instant, mut wanted: usize) {
        let n = tick.slots.len();
        let mut g = tick.finished.lock().unwrap_or_else(|p| p.into_inner());
        let mut last_done = usize::MAX;
        loop {
            let done = tick.done.load(Ordering::Acquire);
            if done >= n {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            if done == last_done && wanted < self.config.max_workers {
                // No progress for a stall period: maybe a worker hangs; bring all.
                wanted = self.config.max_workers;
                self.pool.widen(wanted);
            }
            last_done = done;
            let slice = STALL.min(deadline - now);
            g = tick
                .all_done
                .wait_timeout(g, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
