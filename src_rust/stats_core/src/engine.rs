//! The stats engine: the tracked devices, one tick of parallel reads with a
//! deadline, and the encoded StatsResponse.
//!
//! Every NVML call of a tick (handle lookups, XID registrations, the XID
//! drain and the reads) runs on the pool's workers, never on the caller's
//! thread, so a call stuck in the driver delays neither `track()` (which
//! makes no NVML call) nor `collect()` (which waits at most `timeout`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nvml_sys::nvmlDevice_st;

use crate::encode::{encode_stats_response, GroupView, Timestamp};
use crate::gpm::Gpm;
use crate::lanes::{Hold, LaneId, Lanes};
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
    /// The physical GPU's UUID: the lane its reads take (a MIG instance
    /// shares its GPU's). Empty: `uuid` is the GPU's own.
    pub gpu: String,
}

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    pub extended: bool,
    pub batched: bool,
    /// How long one tick waits for a device before its values read "N/A",
    /// for an engine with lanes of its own; an engine given the process's
    /// lanes ([`Engine::with_lanes`]) takes the deadline from them at each tick.
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
    /// The lane its reads take: the physical GPU's (its UUID's) in the lanes.
    lane: LaneId,
    /// The first tracked device ID reading this UUID, to name it in logs.
    label: Mutex<String>,
    handle: AtomicPtr<nvmlDevice_st>,
    /// The physical GPU registered for XID events (null: not registered).
    xid_gpu: AtomicPtr<nvmlDevice_st>,
    /// XID registration is wanted: set by `track()`, cleared by the worker
    /// that tries it (once it has a handle).
    xid_retry: AtomicBool,
    /// The XID registration failure was reported.
    xid_reported: AtomicBool,
    /// A read is in progress (set by the worker once it holds the GPU's
    /// lane, until the read returns), so a read stuck in the driver is
    /// skipped without a look at the lanes, and named at close.
    busy: AtomicBool,
    /// A hang was reported and the device has not answered since.
    hung_reported: AtomicBool,
    /// The handle lookup failure was reported.
    handle_reported: AtomicBool,
    /// GPM sample buffers and support (extended stats).
    gpm: Gpm,
}

impl Slot {
    fn new(uuid: String, label: String, lane: LaneId) -> Slot {
        Slot {
            uuid,
            lane,
            label: Mutex::new(label),
            handle: AtomicPtr::new(std::ptr::null_mut()),
            xid_gpu: AtomicPtr::new(std::ptr::null_mut()),
            xid_retry: AtomicBool::new(false),
            xid_reported: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            hung_reported: AtomicBool::new(false),
            handle_reported: AtomicBool::new(false),
            gpm: Gpm::default(),
        }
    }

    /// Every value "N/A"; a GPU known to have GPM keeps its GPM stats (as
    /// "N/A"), so they do not come and go with a slow tick.
    fn unavailable(&self, extended: bool) -> DeviceSample {
        let mut s = DeviceSample::unavailable(extended);
        if let Some(x) = s.extended.as_mut() {
            if self.gpm.supported() {
                x.gpm = Some(crate::gpm::NOT_AVAILABLE);
            }
        }
        s
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

    /// Registers the device's GPU for XID events when `track()` asked for it.
    fn watch_xids(&self, xid: &XidCounter, h: Handle, log_sink: &LogSink) {
        if !self.xid_retry.swap(false, Ordering::Relaxed) {
            return;
        }
        match xid.watch(h) {
            Ok(gpu) => self.xid_gpu.store(gpu.0, Ordering::Relaxed),
            Err(e) => {
                if !self.xid_reported.swap(true, Ordering::Relaxed) {
                    log(
                        log_sink,
                        Level::Warning,
                        format!(
                            "device {}: cannot watch XID events ({e}); its XID count reads N/A",
                            self.label()
                        ),
                    );
                }
            }
        }
    }
}

/// The engine's XID counting (extended stats), shared with the workers.
struct Xid {
    counter: XidCounter,
    /// A drain is in progress (set by the worker running it), so that a
    /// drain stuck in the driver holds one thread, however many ticks pass.
    draining: AtomicBool,
    /// A stuck drain was reported and has not returned since.
    stuck_reported: AtomicBool,
}

/// One tick's work, shared with the workers: the XID drain (item 0, when
/// `drain`), then one read per slot.
struct Tick {
    nvml: Arc<Nvml>,
    opts: ReadOptions,
    log: LogSink,
    slots: Vec<Arc<Slot>>,
    /// The order the slots are read in (indexes into `slots`).
    order: Arc<Vec<usize>>,
    results: Vec<OnceLock<DeviceSample>>,
    /// The process's per-GPU lanes; a read takes its GPU's, waiting for it
    /// until `deadline` at most, and skips a GPU stuck in another call.
    lanes: Arc<Lanes>,
    deadline: Instant,
    /// Slots skipped because their GPU's lane is stuck in a call of someone
    /// else's (a probe, a scan): what holds it.
    held_elsewhere: Vec<OnceLock<String>>,
    /// Extended stats: XID registrations in the reads, and the drain.
    xid: Option<Arc<Xid>>,
    /// This tick drains the XID event set.
    drain: bool,
    /// Slots that register for XIDs this tick (those asked to and not stuck
    /// when it started); only when `drain`.
    registers: Vec<bool>,
    /// Those registrations not done yet, plus one held by the drain item:
    /// whoever brings it to zero runs the drain, so that events already
    /// waiting for a GPU registered this tick are counted this tick.
    before_drain: AtomicUsize,
    drained: AtomicBool,
    /// Items: the drain (when `drain`) and the slots.
    items: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Summed read time (ns), to size the next tick's worker count.
    read_ns: AtomicU64,
    finished: Mutex<()>,
    all_done: Condvar,
}

impl Batch for Tick {
    fn run(&self) {
        let first_slot = usize::from(self.drain);
        loop {
            let item = self.next.fetch_add(1, Ordering::Relaxed);
            if item >= self.items {
                return;
            }
            if item < first_slot {
                if self.release_drain() {
                    self.run_drain();
                }
                continue;
            }
            let i = self.order[item - first_slot];
            let slot = &self.slots[i];
            let registers = self.drain && self.registers[i];
            if slot.busy.load(Ordering::Acquire) {
                // Still stuck in an earlier tick's call: leave it N/A.
                self.skip(registers);
                continue;
            }
            // An owner per read: the lane itself keeps two reads of one GPU apart
            // (two MIG instances, or a read that waited past its tick and the next).
            let owner = self.lanes.new_owner();
            match self
                .lanes
                .hold_id(&slot.lane, owner, STATS_READ, self.deadline)
            {
                Hold::Taken => {}
                Hold::Busy => {
                    // Busy with another caller's calls all tick long: N/A this tick.
                    self.skip(registers);
                    continue;
                }
                Hold::Stuck(held) => {
                    // Stuck in another call (a probe's, a scan's, a sibling MIG
                    // instance's read): that is the one thread this GPU holds;
                    // no read follows it in.
                    let _ = self.held_elsewhere[i].set(held.what);
                    self.skip(registers);
                    continue;
                }
            }
            slot.busy.store(true, Ordering::Release);
            let start = Instant::now();
            let handle = slot.handle(&self.nvml, &self.log);
            if let (Some(h), Some(xid)) = (handle, &self.xid) {
                slot.watch_xids(&xid.counter, h, &self.log);
            }
            let run_drain = registers && self.release_drain();
            let sample = match handle {
                Some(h) => {
                    let mut s = self.nvml.read_device(h, self.opts);
                    if let Some(x) = s.extended.as_mut() {
                        x.gpm = slot.gpm.read(&self.nvml, h);
                    }
                    s
                }
                None => slot.unavailable(self.opts.extended),
            };
            self.read_ns
                .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let _ = self.results[i].set(sample);
            self.lanes.release_id(&slot.lane, owner);
            slot.busy.store(false, Ordering::Release);
            if slot.hung_reported.swap(false, Ordering::AcqRel) {
                log(
                    &self.log,
                    Level::Info,
                    format!("device {} answers again", slot.label()),
                );
            }
            self.complete();
            // After this device's read, so that a drain stuck in the driver
            // is not taken for this device hanging.
            if run_drain {
                self.run_drain();
            }
        }
    }
}

impl Tick {
    /// A slot left N/A this tick.
    fn skip(&self, registers: bool) {
        let run_drain = registers && self.release_drain();
        self.complete();
        if run_drain {
            self.run_drain();
        }
    }

    fn complete(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.items {
            let _g = self.finished.lock().unwrap_or_else(|p| p.into_inner());
            self.all_done.notify_all();
        }
    }

    /// One of the drain's preconditions is met; true for the last one.
    fn release_drain(&self) -> bool {
        self.before_drain.fetch_sub(1, Ordering::AcqRel) == 1
    }

    fn run_drain(&self) {
        let Some(xid) = &self.xid else {
            return;
        };
        // A drain of an earlier tick that ran late may still be in the
        // driver: one drain at a time.
        if !xid.draining.swap(true, Ordering::AcqRel) {
            xid.counter.drain();
            xid.draining.store(false, Ordering::Release);
            if xid.stuck_reported.swap(false, Ordering::AcqRel) {
                log(
                    &self.log,
                    Level::Info,
                    "the XID event drain returned; XID counts are current again".to_string(),
                );
            }
            self.drained.store(true, Ordering::Release);
        }
        self.complete();
    }
}

// Size each tick's worker count so that one worker gets about this much
// serial read time; a stall (a hung device) widens to every worker.
const SLICE_NS: u64 = 500_000;
const STALL: Duration = Duration::from_millis(2);
// Stand-in threads for workers stuck in hung calls, at most this many.
const MAX_STAND_INS: usize = 64;
/// What a read holding a GPU's lane is doing, for whoever finds it stuck.
pub const STATS_READ: &str = "the stats engine's read";

/// Slot indexes, the GPUs in turn: the first slot of each lane (in slot
/// order), then the second of each, and so on.
fn interleaved(slots: &[Arc<Slot>]) -> Vec<usize> {
    let mut by_lane: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut at: HashMap<usize, usize> = HashMap::new();
    for (i, slot) in slots.iter().enumerate() {
        let k = *at.entry(slot.lane.addr()).or_insert_with(|| {
            by_lane.push((0, Vec::new()));
            by_lane.len() - 1
        });
        by_lane[k].1.push(i);
    }
    let mut order = Vec::with_capacity(slots.len());
    while order.len() < slots.len() {
        for (next, members) in &mut by_lane {
            if let Some(&i) = members.get(*next) {
                order.push(i);
                *next += 1;
            }
        }
    }
    order
}

pub struct Engine {
    nvml: Arc<Nvml>,
    config: EngineConfig,
    log: LogSink,
    /// One per distinct UUID, in the order of first appearance in `groups`.
    slots: Vec<Arc<Slot>>,
    /// The order a tick reads them in: the GPUs in turn, so that the reads
    /// of one GPU's MIG instances (which take its one lane, one at a time)
    /// are spread over the tick instead of queueing for the lane together.
    order: Arc<Vec<usize>>,
    /// Group name -> (device ID, index into `slots`), sorted by name then
    /// device ID. Shares of one GPU point at the same slot.
    groups: Vec<(String, Vec<(String, usize)>)>,
    pool: Pool,
    per_device_ns: u64,
    buf: Vec<u8>,
    /// Extended stats only.
    xid: Option<Arc<Xid>>,
    /// Per-GPU lanes, the process's when given ([`Engine::with_lanes`]).
    lanes: Arc<Lanes>,
}

impl Engine {
    /// An engine with lanes of its own, and `config.timeout` as its tick deadline.
    pub fn new(nvml: Arc<Nvml>, config: EngineConfig) -> Engine {
        let lanes = Arc::new(Lanes::new(config.timeout));
        Engine::with_lanes(nvml, config, lanes)
    }

    /// An engine whose reads take the GPUs' lanes from `lanes` (shared with
    /// the other NVML callers of the process), and whose tick deadline is
    /// theirs, read at each tick.
    pub fn with_lanes(nvml: Arc<Nvml>, config: EngineConfig, lanes: Arc<Lanes>) -> Engine {
        let workers = config.max_workers.max(1);
        let log_sink = LogSink::default();
        let xid = if config.extended {
            XidCounter::new(Arc::clone(&nvml))
                .map(|counter| {
                    Arc::new(Xid {
                        counter,
                        draining: AtomicBool::new(false),
                        stuck_reported: AtomicBool::new(false),
                    })
                })
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
            order: Arc::new(Vec::new()),
            groups: Vec::new(),
            pool: Pool::new(workers + MAX_STAND_INS),
            per_device_ns: 0,
            buf: Vec::new(),
            xid,
            lanes,
        }
    }

    /// Opens NVML from `library` and builds an engine on it.
    pub fn open(library: &str, config: EngineConfig) -> Result<Engine, NvmlError> {
        Ok(Engine::new(Arc::new(Nvml::open(library)?), config))
    }

    /// As [`Engine::open`], on the process's lanes when given.
    pub fn open_with(
        library: &str,
        config: EngineConfig,
        lanes: Option<Arc<Lanes>>,
    ) -> Result<Engine, NvmlError> {
        let nvml = Arc::new(Nvml::open(library)?);
        Ok(match lanes {
            Some(lanes) => Engine::with_lanes(nvml, config, lanes),
            None => Engine::new(nvml, config),
        })
    }

    /// The lanes its reads take.
    pub fn lanes(&self) -> &Arc<Lanes> {
        &self.lanes
    }

    /// Threads of the worker pool (stand-ins included), for the tests that
    /// bound them (tests/hang_event_wait.rs).
    pub fn worker_threads(&self) -> usize {
        self.pool.threads()
    }

    /// Replaces the tracked set. GPUs tracked before keep their state
    /// (cached handle, a read still hung), so a re-fingerprint does not
    /// re-report a hang. Device IDs sharing a UUID share one read. Makes no
    /// NVML call: handles are looked up, and GPUs registered for XIDs, in
    /// the next ticks' reads.
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
                            None => {
                                let gpu = if d.gpu.is_empty() { &d.uuid } else { &d.gpu };
                                Arc::new(Slot::new(
                                    d.uuid.clone(),
                                    d.device_id.clone(),
                                    self.lanes.id(gpu),
                                ))
                            }
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
        self.order = Arc::new(interleaved(&self.slots));
        self.want_xids();
    }

    /// Asks the next tick's reads to register the GPUs not registered for
    /// XIDs yet (a failed registration is tried again after each track(), as
    /// the python engine does). A device stuck in a call is registered in
    /// the first read after it answers.
    fn want_xids(&mut self) {
        let Some(xid) = &self.xid else {
            return;
        };
        let counts = xid.counter.counts();
        for slot in &self.slots {
            let gpu = slot.xid_gpu.load(Ordering::Relaxed);
            if gpu.is_null() || counts.get(Handle(gpu)).is_none() {
                // Not registered, or linked to a sibling MIG instance's
                // registration that failed.
                slot.xid_gpu.store(std::ptr::null_mut(), Ordering::Relaxed);
                slot.xid_retry.store(true, Ordering::Relaxed);
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
        if let Some(xid) = &self.xid {
            if xid.draining.load(Ordering::Acquire) {
                log(
                    &self.log,
                    Level::Warning,
                    "closing while the XID event drain is still in an NVML call; NVML is shut down once it returns"
                        .to_string(),
                );
            }
        }
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
        // The process's one deadline, as it is now (SetConfig may have changed it).
        let timeout = self.lanes.deadline();
        let deadline = Instant::now() + timeout;
        let stuck = self
            .slots
            .iter()
            .filter(|s| s.busy.load(Ordering::Relaxed))
            .count();
        // A drain still stuck in the driver is left alone (it holds one
        // thread); XID counts keep their last values until it returns.
        let drain_stuck = self
            .xid
            .as_ref()
            .is_some_and(|x| x.draining.load(Ordering::Acquire));
        let drain = self.xid.is_some() && !drain_stuck;
        let registers: Vec<bool> = if drain {
            self.slots
                .iter()
                .map(|s| s.xid_retry.load(Ordering::Relaxed) && !s.busy.load(Ordering::Acquire))
                .collect()
        } else {
            Vec::new()
        };
        let before_drain = 1 + registers.iter().filter(|r| **r).count();
        let max = self.config.max_workers;
        self.pool.ensure_threads(
            max.min(n + usize::from(drain)) + (stuck + usize::from(drain_stuck)).min(MAX_STAND_INS),
        );

        let tick = Arc::new(Tick {
            nvml: Arc::clone(&self.nvml),
            opts,
            log: self.log.clone(),
            slots: self.slots.clone(),
            order: Arc::clone(&self.order),
            results: (0..n).map(|_| OnceLock::new()).collect(),
            lanes: Arc::clone(&self.lanes),
            deadline,
            held_elsewhere: (0..n).map(|_| OnceLock::new()).collect(),
            xid: self.xid.clone(),
            drain,
            registers,
            before_drain: AtomicUsize::new(before_drain),
            drained: AtomicBool::new(false),
            items: n + usize::from(drain),
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
        for ((slot, r), elsewhere) in tick
            .slots
            .iter()
            .zip(&tick.results)
            .zip(&tick.held_elsewhere)
        {
            match r.get() {
                Some(s) => out.push(*s),
                None => {
                    let held = elsewhere.get();
                    if (slot.busy.load(Ordering::Acquire) || held.is_some())
                        && !slot.hung_reported.swap(true, Ordering::AcqRel)
                    {
                        let by =
                            held.map_or(String::new(), |w| format!(" ({w} is stuck on its GPU)"));
                        log(
                            &self.log,
                            Level::Warning,
                            format!(
                                "device {} did not answer NVML within {:?}{by}; its stats read N/A until it does",
                                slot.label(),
                                timeout
                            ),
                        );
                    }
                    out.push(slot.unavailable(opts.extended));
                }
            }
        }
        if let Some(xid) = &self.xid {
            if tick.drain
                && !tick.drained.load(Ordering::Acquire)
                && xid.draining.load(Ordering::Acquire)
                && !xid.stuck_reported.swap(true, Ordering::AcqRel)
            {
                log(
                    &self.log,
                    Level::Warning,
                    format!(
                        "the XID event drain (nvmlEventSetWait_v2) did not return within {:?}; XID counts keep their last values until it does",
                        timeout
                    ),
                );
            }
            let counts = xid.counter.counts();
            for (slot, s) in self.slots.iter().zip(out.iter_mut()) {
                let gpu = slot.xid_gpu.load(Ordering::Relaxed);
                if let (Some(x), false) = (s.extended.as_mut(), gpu.is_null()) {
                    x.xid_count = counts
                        .get(Handle(gpu))
                        .map_or(Reading::NotAvailable, |c| Reading::Int(c as i64));
                }
            }
        }
        out
    }

    fn wait(&self, tick: &Tick, deadline: Instant, mut wanted: usize) {
        let n = tick.items;
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
