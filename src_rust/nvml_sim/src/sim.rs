//! The simulated machine: devices, MIG instances, faults and events, built once from a
//! scenario and then read-only, except for atomic counters. Handles given to callers
//! are addresses of elements of the `devices` / `gpu_instances` / `compute_instances`
//! vectors, which never move or shrink after `build`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nvml_sys::*;

use crate::fns;
use crate::gen::{hash_str, mix64, Gen, ValueSpec};
use crate::models::{self, MigProfile, Model};
use crate::scenario::{self, Fault, Scenario};

/// Env var naming the directory where memory-repair state outlives the process
/// (the real driver keeps it in the GPU's InfoROM).
pub const PERSIST_ENV: &str = "NVML_SIM_PERSIST_DIR";

pub const MIB: u64 = 1 << 20;
pub const MAX_GPUS: usize = 4096;

macro_rules! metrics {
    ($($variant:ident = $name:literal),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Metric { $($variant),* }
        pub const METRIC_NAMES: &[&str] = &[$($name),*];
    };
}

metrics!(
    UtilGpu = "utilization_gpu",
    UtilMemory = "utilization_memory",
    UtilEncoder = "utilization_encoder",
    UtilDecoder = "utilization_decoder",
    Temperature = "temperature_c",
    MemoryTemperature = "memory_temperature_c",
    Power = "power_w",
    MemoryUsed = "memory_used_mib",
    Bar1Used = "bar1_used_mib",
    ClockGraphics = "clock_graphics_mhz",
    ClockSm = "clock_sm_mhz",
    ClockMemory = "clock_memory_mhz",
    ClockVideo = "clock_video_mhz",
    Fan = "fan_percent",
    EccCorrected = "ecc_corrected",
    EccUncorrected = "ecc_uncorrected",
    PcieTx = "pcie_tx_kbps",
    PcieRx = "pcie_rx_kbps",
    // GPM metrics (nvmlGpmMetricsGet): evaluated at the later sample's number.
    GpmGraphics = "gpm_graphics_util",
    GpmSm = "gpm_sm_util",
    GpmSmOccupancy = "gpm_sm_occupancy",
    GpmTensor = "gpm_tensor_util",
    GpmDram = "gpm_dram_bw_util",
    GpmPcieTx = "gpm_pcie_tx_mibps",
    GpmPcieRx = "gpm_pcie_rx_mibps",
    GpmNvlinkTx = "gpm_nvlink_tx_mibps",
    GpmNvlinkRx = "gpm_nvlink_rx_mibps",
);
pub const METRICS: usize = METRIC_NAMES.len();

/// PCI bus numbers of the eight GPUs of an HGX baseboard, reused per PCI domain.
const HGX_BUSES: [u32; 8] = [0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb];

#[derive(Debug, Clone, Copy)]
pub struct MigRef {
    pub parent: usize,
    pub gpu_instance: usize,
    pub compute_instance: usize,
    pub profile: usize,
}

#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    AfterNs(u64),
    AfterCalls(u64),
}

#[derive(Debug)]
pub struct LostFault {
    pub start: Trigger,
    /// Measured from `start`, in the same unit.
    pub recover_after: Option<u64>,
}

/// Calls that block. `functions` is a bitset of `fns::Fn` ids for a GPU's hangs and
/// of `fns::SysFn` ids for the machine's system-level hangs.
#[derive(Debug)]
pub struct HangFault {
    pub functions: u128,
    pub after_ns: u64,
    /// Calls made at or after this time do not hang; a hanging call never blocks past it.
    pub until_ns: Option<u64>,
    /// None: block until `until_ns`, or for good without it.
    pub duration: Option<Duration>,
    /// How many calls hang (0 = every call in the window).
    pub calls: u64,
    pub hits: AtomicU64,
    /// Calls blocked in this fault now (`nvmlSimGetBlockedCalls`).
    pub blocked: AtomicU64,
}

/// A span of machine time in which calls answer `code`: [start_ns, end_ns).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub code: nvmlReturn_t,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
}

impl Window {
    fn covers(&self, now: u64) -> bool {
        now >= self.start_ns && self.end_ns.is_none_or(|e| now < e)
    }
}

/// The code of the first of `windows` open at `now`.
fn code_at(windows: &[Window], now: u64) -> Option<nvmlReturn_t> {
    windows.iter().find(|w| w.covers(now)).map(|w| w.code)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    PageRetirementPending,
    RowRemapPending,
    RowRemapFailed,
}

impl MemoryKind {
    pub fn name(self) -> &'static str {
        match self {
            MemoryKind::PageRetirementPending => "page_retirement_pending",
            MemoryKind::RowRemapPending => "row_remap_pending",
            MemoryKind::RowRemapFailed => "row_remap_failed",
        }
    }
}

/// Memory-repair state that, once reached, stays until the GPU is reset; with
/// NVML_SIM_PERSIST_DIR it also outlives the process.
#[derive(Debug)]
pub struct MemoryFault {
    pub kind: MemoryKind,
    pub after_ns: u64,
    /// Pages retired for double-bit ECC errors (page_retirement_pending).
    pub pages: u32,
    pub correctable_rows: u32,
    pub uncorrectable_rows: u32,
    /// Its marker was found at init: active from time 0.
    pub persisted: AtomicBool,
    /// Seen active (and its marker written, when there is a directory for it).
    pub recorded: AtomicBool,
}

/// A GPU's place in an NVLink fabric once registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fabric {
    pub cluster_uuid: [u8; 16],
    pub clique: u32,
}

/// The health mask of a registered GPU with nothing wrong: bandwidth not
/// degraded, no route recovery, routes healthy, no access-timeout recovery,
/// a correct configuration, a partition assigned.
pub const FABRIC_HEALTHY_MASK: u32 = (NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_FALSE
    << NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_DEGRADED_BW)
    | (NVML_GPU_FABRIC_HEALTH_MASK_ROUTE_RECOVERY_FALSE
        << NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_ROUTE_RECOVERY)
    | (NVML_GPU_FABRIC_HEALTH_MASK_ROUTE_UNHEALTHY_FALSE
        << NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_ROUTE_UNHEALTHY)
    | (NVML_GPU_FABRIC_HEALTH_MASK_ACCESS_TIMEOUT_RECOVERY_FALSE
        << NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_ACCESS_TIMEOUT_RECOVERY)
    | (NVML_GPU_FABRIC_HEALTH_MASK_INCORRECT_CONFIGURATION_NONE
        << NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_INCORRECT_CONFIGURATION)
    | (1 << NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_PARTITION_ASSIGNED);

/// The default mask of a fabric_unhealthy fault: the healthy mask with the
/// bandwidth degraded.
pub const FABRIC_DEGRADED_MASK: u32 = (FABRIC_HEALTHY_MASK
    & !(NVML_GPU_FABRIC_HEALTH_MASK_WIDTH_DEGRADED_BW
        << NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_DEGRADED_BW))
    | (NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_TRUE
        << NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_DEGRADED_BW);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FabricFaultKind {
    /// Registration not done: this state (NOT_STARTED or IN_PROGRESS) meanwhile.
    NotReady(nvmlGpuFabricState_t),
    /// Registered, with this health mask meanwhile.
    Unhealthy(u32),
}

/// A fabric fault over [start_ns, end_ns) of machine time.
#[derive(Debug, Clone, Copy)]
pub struct FabricFault {
    pub kind: FabricFaultKind,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
}

/// What the fabric info calls of one GPU answer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FabricNow {
    pub state: nvmlGpuFabricState_t,
    /// Zeros until registered.
    pub cluster_uuid: [u8; 16],
    pub clique: u32,
    pub health_mask: u32,
}

/// What the memory-repair queries of one GPU answer now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryState {
    pub retirement_pending: bool,
    pub retired_dbe_pages: u32,
    pub remap_pending: bool,
    pub remap_failed: bool,
    pub correctable_rows: u32,
    pub uncorrectable_rows: u32,
}

#[derive(Debug)]
pub struct Device {
    /// Physical GPU index; a MIG device carries its parent's.
    pub gpu: usize,
    pub mig: Option<MigRef>,
    pub uuid: String,
    pub name: String,
    pub model: usize,
    pub memory_total: u64,
    pub memory_reserved: u64,
    pub seed: u64,
    pub gens: [Gen; METRICS],
    pub samples: [AtomicU64; METRICS],
    pub mig_enabled: bool,
    pub mig_devices: Vec<usize>,
    pub gpu_instances: Vec<usize>,
    pub pci: nvmlPciInfo_t,
    pub bus_id: String,
    pub serial: String,
    pub numa_node: u32,
    pub cpus: std::ops::Range<u32>,
    pub display: bool,
    pub persistence: bool,
    pub ecc: bool,
    pub calls: AtomicU64,
    pub unsupported: u128,
    pub unsupported_fields: Vec<u32>,
    pub lost: Option<LostFault>,
    pub hangs: Vec<HangFault>,
    pub memory_faults: Vec<MemoryFault>,
    /// GPM samples taken of this device (its GPU instance for a MIG device):
    /// the sample number the GPM metrics are evaluated at.
    pub gpm_samples: AtomicU64,
    /// Physical GPUs only: its NVLink fabric, and the faults on it.
    pub fabric: Option<Fabric>,
    pub fabric_faults: Vec<FabricFault>,
}

#[derive(Debug)]
pub struct GpuInstance {
    pub device: usize,
    pub id: u32,
    pub profile: usize,
    pub placement: (u32, u32),
    pub compute_instance: usize,
}

#[derive(Debug)]
pub struct ComputeInstance {
    pub gpu_instance: usize,
    pub device: usize,
    pub id: u32,
    pub slices: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct SimEvent {
    pub gpu: usize,
    pub at_ns: u64,
    pub event_type: u64,
    pub data: u64,
    pub gpu_instance: u32,
    pub compute_instance: u32,
}

#[derive(Debug)]
pub struct Sim {
    pub path: String,
    pub name: String,
    pub driver_version: String,
    pub nvml_version: String,
    pub cuda_version: i32,
    pub init_error: Option<(nvmlReturn_t, u64)>,
    pub models: Vec<Model>,
    pub devices: Vec<Device>,
    pub gpu_count: usize,
    pub gpu_instances: Vec<GpuInstance>,
    pub compute_instances: Vec<ComputeInstance>,
    by_uuid: HashMap<String, usize>,
    by_bus_id: HashMap<String, usize>,
    pub latency_ns: [u64; fns::COUNT],
    pub latency_sleep: bool,
    pub events: Vec<SimEvent>,
    pub system_hangs: Vec<HangFault>,
    pub driver_gone: Vec<Window>,
    pub event_wait_errors: Vec<Window>,
    /// `[choices]`: the answer picked where nvml.h allows two.
    pub choices: Choices,
    /// `now_ns()` when the machine's clock started: the first nvmlInit that read this
    /// scenario in this process. Later inits of the same scenario keep the clock.
    pub epoch_ns: AtomicU64,
    clock_started: AtomicBool,
    /// Unix time in seconds when the clock started (retired-page timestamps).
    pub wall_epoch_s: AtomicU64,
    /// Machine time at which the current NVML session (refcount 0 -> 1) began.
    pub session_ns: AtomicU64,
    /// Sessions begun so far in this process.
    pub sessions: AtomicU64,
}

/// The scenario's `[choices]`, checked.
#[derive(Debug, Clone, Copy)]
pub struct Choices {
    /// 0: waits never return early.
    pub event_wait_early_timeout_every: u32,
    /// nvmlDeviceGetDeviceHandleFromMigDeviceHandle on a handle that is not a MIG device's.
    pub not_a_mig_device: nvmlReturn_t,
    /// nvmlGpmMetricsGet on samples closer than the refresh: Err(code), or Ok = zeros.
    pub gpm_close_samples: Result<(), nvmlReturn_t>,
}

impl Choices {
    fn build(c: &scenario::Choices) -> Result<Choices, String> {
        let not_a_mig_device = match c.not_a_mig_device.as_deref() {
            None | Some("INVALID_ARGUMENT") => NVML_ERROR_INVALID_ARGUMENT,
            Some("NOT_SUPPORTED") => NVML_ERROR_NOT_SUPPORTED,
            Some(o) => {
                return Err(format!(
                "choices.not_a_mig_device: {o:?} is not \"INVALID_ARGUMENT\" or \"NOT_SUPPORTED\""
            ))
            }
        };
        let gpm_close_samples = match c.gpm_close_samples.as_deref() {
            None | Some("zero") => Ok(()),
            Some("error") => Err(NVML_ERROR_INVALID_ARGUMENT),
            Some(o) => {
                return Err(format!(
                    "choices.gpm_close_samples: {o:?} is not \"zero\" or \"error\""
                ))
            }
        };
        Ok(Choices {
            event_wait_early_timeout_every: c.event_wait_early_timeout_every,
            not_a_mig_device,
            gpm_close_samples,
        })
    }
}

fn clock_base() -> &'static Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now)
}

/// Monotonic nanoseconds since the library first asked.
pub fn now_ns() -> u64 {
    clock_base().elapsed().as_nanos() as u64
}

fn secs_to_ns(what: &str, s: f64) -> Result<u64, String> {
    if !(s.is_finite() && s >= 0.0) {
        return Err(format!("{what} must be a number of seconds >= 0, got {s}"));
    }
    Ok((s * 1e9) as u64)
}

fn parse_return_code(name: &str) -> Result<nvmlReturn_t, String> {
    let full = if name.starts_with("NVML_") {
        name.to_string()
    } else {
        format!("NVML_ERROR_{name}")
    };
    RETURN_CODE_NAMES
        .iter()
        .find(|(_, n)| *n == full)
        .map(|(c, _)| *c)
        .ok_or_else(|| format!("unknown NVML return code {name:?}"))
}

fn parse_cuda_version(s: &str) -> Result<i32, String> {
    let bad = || format!("driver.cuda_version: expected \"MAJOR.MINOR\" like \"12.4\", got {s:?}");
    let (maj, min) = s.split_once('.').ok_or_else(bad)?;
    let maj: i32 = maj.parse().map_err(|_| bad())?;
    let min: i32 = min.parse().map_err(|_| bad())?;
    Ok(maj * 1000 + min * 10)
}

fn parse_architecture(s: &str) -> Result<u32, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "kepler" => NVML_DEVICE_ARCH_KEPLER,
        "maxwell" => NVML_DEVICE_ARCH_MAXWELL,
        "pascal" => NVML_DEVICE_ARCH_PASCAL,
        "volta" => NVML_DEVICE_ARCH_VOLTA,
        "turing" => NVML_DEVICE_ARCH_TURING,
        "ampere" => NVML_DEVICE_ARCH_AMPERE,
        "ada" => NVML_DEVICE_ARCH_ADA,
        "hopper" => NVML_DEVICE_ARCH_HOPPER,
        "blackwell" => NVML_DEVICE_ARCH_BLACKWELL,
        other => other.parse().map_err(|_| {
            format!("architecture: unknown {s:?} (hopper, ampere, ada, ... or a number)")
        })?,
    })
}

fn uuid_like(prefix: &str, key: &str) -> String {
    let a = hash_str(key);
    let b = mix64(a ^ 0x5555_5555_5555_5555);
    format!(
        "{prefix}{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn c_chars<const N: usize>(s: &str) -> [std::os::raw::c_char; N] {
    let mut out = [0 as std::os::raw::c_char; N];
    for (o, b) in out.iter_mut().zip(s.bytes().take(N - 1)) {
        *o = b as std::os::raw::c_char;
    }
    out
}

fn default_gens(m: &Model) -> [Gen; METRICS] {
    let lim = m.power_limit_w;
    let [g, sm, mem, video] = m.max_clocks_mhz.map(f64::from);
    let memory = m.memory_mib as f64;
    let r = |min: f64, max: f64| Gen::Random { min, max, seed: 0 };
    let s = |min: f64, max: f64, period: u64| Gen::Sine {
        min,
        max,
        period,
        seed: 0,
    };
    [
        s(10.0, 90.0, 120),
        s(5.0, 60.0, 90),
        Gen::Constant(0.0),
        Gen::Constant(0.0),
        s(35.0, 70.0, 180),
        s(40.0, 75.0, 180),
        r(lim * 0.15, lim * 0.85),
        Gen::Ramp {
            min: memory * 0.05,
            max: memory * 0.8,
            period: 300,
            seed: 0,
        },
        Gen::Constant(5.0),
        r(g * 0.6, g),
        r(sm * 0.6, sm),
        Gen::Constant(mem),
        Gen::Constant(video * 0.9),
        Gen::Constant(if m.has_fan { 30.0 } else { 0.0 }),
        Gen::Constant(0.0),
        Gen::Constant(0.0),
        r(1_000.0, 500_000.0),
        r(1_000.0, 500_000.0),
        s(20.0, 95.0, 60),
        s(15.0, 85.0, 60),
        s(10.0, 60.0, 90),
        r(0.0, 70.0),
        s(5.0, 80.0, 45),
        r(100.0, 20_000.0),
        r(100.0, 20_000.0),
        r(1_000.0, 400_000.0),
        r(1_000.0, 400_000.0),
    ]
}

/// The first GPM metric; GPM metrics are the last ones of the list.
pub const FIRST_GPM: usize = Metric::GpmGraphics as usize;

fn parse_nvlink_version(s: &str) -> Result<u32, String> {
    Ok(match s {
        "1.0" => NVML_NVLINK_VERSION_1_0,
        "2.0" => NVML_NVLINK_VERSION_2_0,
        "2.2" => NVML_NVLINK_VERSION_2_2,
        "3.0" => NVML_NVLINK_VERSION_3_0,
        "3.1" => NVML_NVLINK_VERSION_3_1,
        "4.0" => NVML_NVLINK_VERSION_4_0,
        "5.0" => NVML_NVLINK_VERSION_5_0,
        "6.0" => NVML_NVLINK_VERSION_6_0,
        _ => {
            return Err(format!(
                "nvlink_version: unknown {s:?} (1.0, 2.0, 2.2, 3.0, 3.1, 4.0, 5.0, 6.0)"
            ))
        }
    })
}

/// A UUID written as 32 hex digits (dashes anywhere), as 16 bytes.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).ok()?;
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn fabric_plan(
    m: &Model,
    g: &scenario::GpuGroup,
    scenario_name: &str,
    what: &str,
) -> Result<Option<Fabric>, String> {
    let spec = g.fabric.as_ref();
    if !spec
        .and_then(|f| f.enabled)
        .unwrap_or(m.fabric || spec.is_some())
    {
        return Ok(None);
    }
    if !m.hopper_or_later() {
        return Err(format!(
            "{what}.fabric: NVML reports an NVLink fabric from Hopper on, not on {:?}",
            m.name
        ));
    }
    let cluster_uuid = match spec.and_then(|f| f.cluster_uuid.as_deref()) {
        Some(u) => parse_uuid(u).ok_or_else(|| {
            format!("{what}.fabric.cluster_uuid: expected a UUID (32 hex digits), got {u:?}")
        })?,
        None => parse_uuid(&uuid_like("", &format!("{scenario_name}/fabric")))
            .expect("uuid_like gives 32 hex digits"),
    };
    Ok(Some(Fabric {
        cluster_uuid,
        clique: spec.and_then(|f| f.clique).unwrap_or(1),
    }))
}

fn apply_stats(
    gens: &mut [Gen; METRICS],
    stats: &std::collections::BTreeMap<String, ValueSpec>,
    what: &str,
) -> Result<(), String> {
    for (key, spec) in stats {
        let i = METRIC_NAMES.iter().position(|n| n == key).ok_or_else(|| {
            format!(
                "{what}: unknown metric {key:?} (known: {})",
                METRIC_NAMES.join(", ")
            )
        })?;
        gens[i] = Gen::from_spec(spec).map_err(|e| format!("{what}.{key}: {e}"))?;
    }
    Ok(())
}

fn apply_overrides(m: &mut Model, g: &scenario::GpuGroup, what: &str) -> Result<(), String> {
    if let Some(v) = &g.name {
        m.name = v.clone();
    }
    if let Some(v) = g.memory_mib {
        m.memory_mib = v;
        if v == 0 {
            // No dedicated memory, so nothing of it is reserved either.
            m.memory_reserved_mib = 0;
        }
    }
    if let Some(v) = g.memory_reserved_mib {
        m.memory_reserved_mib = v;
    }
    if let Some(v) = g.bar1_mib {
        m.bar1_mib = (v > 0).then_some(v);
    }
    if let Some(v) = g.power_limit_w {
        m.power_limit_w = v;
        m.power_max_w = m.power_max_w.max(v);
    }
    for (slot, v) in m.max_clocks_mhz.iter_mut().zip([
        g.max_clock_graphics_mhz,
        g.max_clock_sm_mhz,
        g.max_clock_memory_mhz,
        g.max_clock_video_mhz,
    ]) {
        if let Some(v) = v {
            *slot = v;
        }
    }
    if let Some(v) = g.pcie_generation {
        m.pcie_gen = v;
    }
    if let Some(v) = g.pcie_width {
        m.pcie_width = v;
    }
    if let Some(cc) = &g.compute_capability {
        let bad = || format!("{what}.compute_capability: expected \"MAJOR.MINOR\", got {cc:?}");
        let (a, b) = cc.split_once('.').ok_or_else(bad)?;
        m.compute_capability = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    }
    if let Some(a) = &g.architecture {
        m.architecture = parse_architecture(a).map_err(|e| format!("{what}.{e}"))?;
        m.set_by_architecture();
    }
    if let Some(v) = g.gpm {
        m.gpm = v;
    }
    if let Some(v) = g.nvlink_links {
        if v > NVML_NVLINK_MAX_LINKS {
            return Err(format!(
                "{what}.nvlink_links: at most {NVML_NVLINK_MAX_LINKS}, got {v}"
            ));
        }
        m.nvlink_links = v;
    }
    if let Some(v) = g.nvlink_speed_mbps {
        m.nvlink_speed_mbps = v;
    }
    if let Some(v) = &g.nvlink_version {
        m.nvlink_version = parse_nvlink_version(v).map_err(|e| format!("{what}.{e}"))?;
    }
    if let Some(v) = g.page_retirement {
        m.page_retirement = v;
    }
    if let Some(v) = g.row_remapping {
        m.row_remapping = v;
    }
    if let Some(v) = g.pci_device_id {
        m.pci_device_id = v;
    }
    if let Some(v) = g.multiprocessors {
        m.multiprocessors = v;
    }
    if m.memory_mib == 0 {
        if m.memory_reserved_mib > 0 {
            return Err(format!(
                "{what}.memory_reserved_mib: must be 0 when memory_mib = 0 (no dedicated memory)"
            ));
        }
        if g.mig.is_some() {
            return Err(format!(
                "{what}.mig: MIG needs dedicated memory (memory_mib = 0)"
            ));
        }
    } else if m.memory_reserved_mib >= m.memory_mib {
        return Err(format!(
            "{what}: memory_reserved_mib must be below memory_mib"
        ));
    }
    Ok(())
}

/// A key set on a fault whose kind does not use it is an error, so a typo or a
/// misplaced key never silently does nothing.
fn check_keys(f: &Fault, what: &str, allowed: &[&str]) -> Result<(), String> {
    let set = [
        ("gpu", f.gpu.is_some()),
        ("gpus", !f.gpus.is_empty()),
        ("functions", !f.functions.is_empty()),
        ("function", f.function.is_some()),
        ("fields", !f.fields.is_empty()),
        ("after_s", f.after_s.is_some()),
        ("after_calls", f.after_calls.is_some()),
        ("recover_after_s", f.recover_after_s.is_some()),
        ("recover_after_calls", f.recover_after_calls.is_some()),
        ("until_s", f.until_s.is_some()),
        ("duration_ms", f.duration_ms.is_some()),
        ("calls", f.calls.is_some()),
        ("error", f.error.is_some()),
        ("pages", f.pages.is_some()),
        ("correctable_rows", f.correctable_rows.is_some()),
        ("uncorrectable_rows", f.uncorrectable_rows.is_some()),
        ("state", f.state.is_some()),
        ("health_mask", f.health_mask.is_some()),
    ];
    match set.iter().find(|(k, on)| *on && !allowed.contains(k)) {
        Some((k, _)) => Err(format!(
            "{what}.{k}: does not apply to kind {:?} (it takes {})",
            f.kind,
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// `<scenario name>.gpu<index>.<kind>` in the persistence directory; characters that
/// do not belong in a file name become `_`.
pub fn marker_path(dir: &Path, scenario: &str, gpu: usize, kind: MemoryKind) -> PathBuf {
    let name: String = scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{name}.gpu{gpu}.{}", kind.name()))
}

fn persist_dir() -> Option<PathBuf> {
    std::env::var_os(PERSIST_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

struct GroupPlan {
    model: usize,
    fabric: Option<Fabric>,
    gens: [Gen; METRICS],
    mig_gens: [Gen; METRICS],
    mig: Option<Vec<usize>>,
    display: bool,
    persistence: bool,
    ecc: bool,
}

fn plan_mig(m: &Model, names: &[String], what: &str) -> Result<Vec<usize>, String> {
    if m.mig_profiles.is_empty() {
        return Err(format!(
            "{what}.mig: model {:?} does not support MIG",
            m.name
        ));
    }
    let mut chosen = Vec::new();
    let (mut slices, mut mem_slices) = (0, 0);
    for n in names {
        let i = m
            .mig_profiles
            .iter()
            .position(|p| &p.name == n)
            .ok_or_else(|| {
                let known: Vec<&str> = m.mig_profiles.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "{what}.mig: unknown profile {n:?} for {:?} (known: {})",
                    m.name,
                    known.join(", ")
                )
            })?;
        let p: &MigProfile = &m.mig_profiles[i];
        let same = chosen.iter().filter(|&&c| c == i).count() as u32 + 1;
        if same > p.instance_count {
            return Err(format!(
                "{what}.mig: at most {} instances of {n:?}",
                p.instance_count
            ));
        }
        slices += p.slices;
        mem_slices += p.memory_slices;
        chosen.push(i);
    }
    if slices > m.mig_total_slices || mem_slices > m.mig_total_memory_slices {
        return Err(format!(
            "{what}.mig: {names:?} needs {slices} compute / {mem_slices} memory slices, the GPU has {} / {}",
            m.mig_total_slices, m.mig_total_memory_slices
        ));
    }
    Ok(chosen)
}

impl Sim {
    /// Parse and build a machine from TOML text; errors name the offending key.
    pub fn from_toml(path: &str, text: &str) -> Result<Sim, String> {
        let sc: Scenario =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        Sim::build(path, sc)
    }

    pub fn build(path: &str, sc: Scenario) -> Result<Sim, String> {
        if sc.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        let cuda_version = parse_cuda_version(&sc.driver.cuda_version)?;
        let branch = match sc.driver.branch {
            Some(b) => Some(crate::branches::played(b)?),
            None => None,
        };
        let driver_version = match (&sc.driver.version, branch) {
            (Some(v), _) => v.clone(),
            (None, Some(b)) => b.version.to_string(),
            (None, None) => "550.90.07".to_string(),
        };
        let init_error = match &sc.init.error {
            Some(e) => Some((
                parse_return_code(e).map_err(|m| format!("init.error: {m}"))?,
                sc.init.fail_count,
            )),
            None => None,
        };
        let mut latency_ns = [sc.latency.ns; fns::COUNT];
        // `ns` is the cost of a query; handle lookups cost only what is named for them.
        for (i, l) in latency_ns.iter_mut().enumerate() {
            if (1u128 << i) & fns::LOOKUPS != 0 {
                *l = 0;
            }
        }
        for (f, ns) in &sc.latency.functions {
            let i = fns::lookup(f)
                .ok_or_else(|| format!("latency.functions: unknown function {f:?}"))?;
            latency_ns[i] = *ns;
        }
        let latency_sleep = match sc.latency.mode.as_deref() {
            None | Some("spin") => false,
            Some("sleep") => true,
            Some(o) => return Err(format!("latency.mode: {o:?} is not \"spin\" or \"sleep\"")),
        };
        if sc.topology.numa_nodes == 0 {
            return Err("topology.numa_nodes: must be at least 1".into());
        }

        // Models and per-group plans.
        let mut models = Vec::new();
        let mut plans = Vec::new();
        let mut gpu_group = Vec::new();
        for (gi, g) in sc.gpus.iter().enumerate() {
            let what = format!("gpus[{gi}]");
            if g.count == 0 || g.count as usize > MAX_GPUS {
                return Err(format!(
                    "{what}.count: must be 1..={MAX_GPUS}, got {}",
                    g.count
                ));
            }
            let mut m = match &g.model {
                Some(k) => models::preset(k).ok_or_else(|| {
                    format!(
                        "{what}.model: unknown {k:?} (known: {})",
                        models::MODEL_KEYS.join(", ")
                    )
                })?,
                None => {
                    if g.name.is_none() || g.memory_mib.is_none() {
                        return Err(format!(
                            "{what}: give a model, or at least name and memory_mib"
                        ));
                    }
                    let mut m = models::preset("l4").expect("preset");
                    m.key = "custom";
                    m
                }
            };
            apply_overrides(&mut m, g, &what)?;
            let mut gens = default_gens(&m);
            apply_stats(&mut gens, &g.stats, &format!("{what}.stats"))?;
            let mut mig_gens = [Gen::Constant(0.0); METRICS];
            mig_gens[Metric::MemoryUsed as usize] = Gen::Random {
                min: 0.0,
                max: 1024.0,
                seed: 0,
            };
            // A MIG instance's GPM metrics default to the same generators as a GPU's.
            mig_gens[FIRST_GPM..].copy_from_slice(&default_gens(&m)[FIRST_GPM..]);
            apply_stats(&mut mig_gens, &g.mig_stats, &format!("{what}.mig_stats"))?;
            let mig = match &g.mig {
                Some(names) => Some(plan_mig(&m, names, &what)?),
                None => None,
            };
            plans.push(GroupPlan {
                model: models.len(),
                fabric: fabric_plan(&m, g, &sc.name, &what)?,
                gens,
                mig_gens,
                mig,
                display: g.display_mode,
                persistence: g.persistence_mode,
                ecc: g.ecc,
            });
            models.push(m);
            gpu_group.extend(std::iter::repeat_n(gi, g.count as usize));
        }
        let total = gpu_group.len();
        if total > MAX_GPUS {
            return Err(format!("gpus: {total} GPUs in all, at most {MAX_GPUS}"));
        }

        // Physical GPUs.
        let scenario_seed = hash_str(&sc.name);
        let mut devices = Vec::with_capacity(total * 2);
        for (idx, &gi) in gpu_group.iter().enumerate() {
            let plan = &plans[gi];
            let m = &models[plan.model];
            let domain = (idx / HGX_BUSES.len()) as u32;
            let bus = HGX_BUSES[idx % HGX_BUSES.len()];
            let bus_id = format!("{domain:08X}:{bus:02X}:00.0");
            let legacy = format!("{:04X}:{bus:02X}:00.0", domain & 0xffff);
            let pci = nvmlPciInfo_t {
                busIdLegacy: c_chars(&legacy),
                domain,
                bus,
                device: 0,
                pciDeviceId: m.pci_device_id,
                pciSubSystemId: m.pci_subsystem_id,
                busId: c_chars(&bus_id),
            };
            let numa_node = (idx as u64 * u64::from(sc.topology.numa_nodes) / total as u64) as u32;
            let cpn = sc.topology.cpus_per_node;
            let seed = mix64(scenario_seed ^ (idx as u64).wrapping_mul(0x1000_0000_01B3));
            devices.push(Device {
                gpu: idx,
                mig: None,
                uuid: uuid_like("GPU-", &format!("{}/gpu/{idx}", sc.name)),
                name: m.name.clone(),
                model: plan.model,
                memory_total: m.memory_mib * MIB,
                memory_reserved: m.memory_reserved_mib * MIB,
                seed,
                gens: plan.gens,
                samples: Default::default(),
                mig_enabled: plan.mig.is_some(),
                mig_devices: Vec::new(),
                gpu_instances: Vec::new(),
                pci,
                bus_id,
                serial: format!("{:013}", 1_650_000_000_000 + seed % 100_000_000_000),
                numa_node,
                cpus: numa_node * cpn..(numa_node + 1) * cpn,
                display: plan.display,
                persistence: plan.persistence,
                ecc: plan.ecc,
                calls: AtomicU64::new(0),
                unsupported: 0,
                unsupported_fields: Vec::new(),
                lost: None,
                hangs: Vec::new(),
                memory_faults: Vec::new(),
                gpm_samples: AtomicU64::new(0),
                fabric: plan.fabric,
                fabric_faults: Vec::new(),
            });
        }

        // Faults, on the physical GPUs (their MIG devices inherit them below).
        let mut system_hangs = Vec::new();
        let mut driver_gone = Vec::new();
        let mut event_wait_errors = Vec::new();
        for (fi, f) in sc.faults.iter().enumerate() {
            let what = format!("faults[{fi}]");
            let mut targets: Vec<u32> = f.gpus.clone();
            targets.extend(f.gpu);
            for &t in &targets {
                if t as usize >= total {
                    return Err(format!(
                        "{what}: GPU index {t} out of range (the scenario has {total})"
                    ));
                }
            }
            // Neither gpu nor gpus: every GPU.
            let all_gpus = targets.is_empty();
            if all_gpus {
                targets = (0..total as u32).collect();
            }
            let secs = |key: &str, v: Option<f64>| {
                v.map(|s| secs_to_ns(&format!("{what}.{key}"), s))
                    .transpose()
            };
            let after_ns = secs("after_s", f.after_s)?;
            let kind = f.kind.as_str();
            match kind {
                "not_supported" => {
                    check_keys(
                        f,
                        &what,
                        &["gpu", "gpus", "functions", "function", "fields"],
                    )?;
                    let mut mask = 0u128;
                    for name in f.functions.iter().chain(f.function.iter()) {
                        let i = fns::lookup(name)
                            .filter(|&i| (1u128 << i) & fns::LOOKUPS == 0)
                            .ok_or_else(|| {
                                format!("{what}.functions: unknown per-device query {name:?}")
                            })?;
                        mask |= 1 << i;
                    }
                    if mask == 0 && f.fields.is_empty() {
                        return Err(format!("{what}: not_supported needs functions or fields"));
                    }
                    for &t in &targets {
                        let d = &mut devices[t as usize];
                        d.unsupported |= mask;
                        d.unsupported_fields.extend(&f.fields);
                    }
                }
                "lost" => {
                    check_keys(
                        f,
                        &what,
                        &[
                            "gpu",
                            "gpus",
                            "after_s",
                            "after_calls",
                            "recover_after_s",
                            "recover_after_calls",
                        ],
                    )?;
                    let (start, recover_after) = match (after_ns, f.after_calls) {
                        (Some(ns), None) => {
                            if f.recover_after_calls.is_some() {
                                return Err(format!(
                                    "{what}.recover_after_calls: goes with after_calls; use recover_after_s"
                                ));
                            }
                            (
                                Trigger::AfterNs(ns),
                                secs("recover_after_s", f.recover_after_s)?,
                            )
                        }
                        (None, Some(n)) => {
                            if f.recover_after_s.is_some() {
                                return Err(format!(
                                    "{what}.recover_after_s: goes with after_s; use recover_after_calls"
                                ));
                            }
                            (Trigger::AfterCalls(n), f.recover_after_calls)
                        }
                        _ => {
                            return Err(format!(
                                "{what}: lost needs exactly one of after_s, after_calls"
                            ))
                        }
                    };
                    for &t in &targets {
                        devices[t as usize].lost = Some(LostFault {
                            start,
                            recover_after,
                        });
                    }
                }
                "hang" => {
                    check_keys(
                        f,
                        &what,
                        &[
                            "gpu",
                            "gpus",
                            "function",
                            "functions",
                            "after_s",
                            "until_s",
                            "duration_ms",
                            "calls",
                        ],
                    )?;
                    let (mut device_mask, mut system_mask) = (0u128, 0u128);
                    let mut named = false;
                    for name in f.functions.iter().chain(f.function.iter()) {
                        named = true;
                        if let Some(i) = fns::lookup(name) {
                            device_mask |= 1 << i;
                        } else if let Some(i) = fns::lookup_system(name) {
                            system_mask |= 1 << i;
                        } else {
                            return Err(format!("{what}.functions: unknown function {name:?}"));
                        }
                    }
                    if !named {
                        device_mask = u128::MAX;
                    }
                    if device_mask == 0 && !all_gpus {
                        return Err(format!(
                            "{what}: {} belong to no GPU; drop gpu/gpus",
                            fns::SYSTEM_NAMES.join(", ")
                        ));
                    }
                    let after = after_ns.unwrap_or(0);
                    let until_ns = secs("until_s", f.until_s)?;
                    if until_ns.is_some_and(|u| u <= after) {
                        return Err(format!("{what}.until_s: must be later than after_s"));
                    }
                    let hang = |functions| HangFault {
                        functions,
                        after_ns: after,
                        until_ns,
                        duration: f.duration_ms.map(Duration::from_millis),
                        calls: f.calls.unwrap_or(0),
                        hits: AtomicU64::new(0),
                        blocked: AtomicU64::new(0),
                    };
                    if device_mask != 0 {
                        for &t in &targets {
                            devices[t as usize].hangs.push(hang(device_mask));
                        }
                    }
                    if system_mask != 0 {
                        system_hangs.push(hang(system_mask));
                    }
                }
                "page_retirement_pending" | "row_remap_pending" | "row_remap_failed" => {
                    let (kind, keys): (MemoryKind, &[&str]) = match kind {
                        "page_retirement_pending" => (
                            MemoryKind::PageRetirementPending,
                            &["gpu", "gpus", "after_s", "pages"],
                        ),
                        "row_remap_pending" => (
                            MemoryKind::RowRemapPending,
                            &[
                                "gpu",
                                "gpus",
                                "after_s",
                                "correctable_rows",
                                "uncorrectable_rows",
                            ],
                        ),
                        _ => (
                            MemoryKind::RowRemapFailed,
                            &[
                                "gpu",
                                "gpus",
                                "after_s",
                                "correctable_rows",
                                "uncorrectable_rows",
                            ],
                        ),
                    };
                    check_keys(f, &what, keys)?;
                    for &t in &targets {
                        let d = &devices[t as usize];
                        let m = &models[d.model];
                        let (supported, feature, key) = if kind == MemoryKind::PageRetirementPending
                        {
                            (m.page_retirement, "page retirement", "page_retirement")
                        } else {
                            (m.row_remapping, "row remapping", "row_remapping")
                        };
                        if !supported || !d.ecc {
                            return Err(format!(
                                "{what}: GPU {t} ({}) has no {feature} (it needs ECC and {key} = true on its group)",
                                m.name
                            ));
                        }
                        if kind != MemoryKind::PageRetirementPending && d.mig_enabled {
                            return Err(format!(
                                "{what}: GPU {t} is in MIG mode, where NVML does not report remapped rows"
                            ));
                        }
                        devices[t as usize].memory_faults.push(MemoryFault {
                            kind,
                            after_ns: after_ns.unwrap_or(0),
                            pages: f.pages.unwrap_or(1),
                            correctable_rows: f.correctable_rows.unwrap_or(0),
                            uncorrectable_rows: f
                                .uncorrectable_rows
                                .unwrap_or(u32::from(kind == MemoryKind::RowRemapPending)),
                            persisted: AtomicBool::new(false),
                            recorded: AtomicBool::new(false),
                        });
                    }
                }
                "event_wait_error" | "driver_gone" => {
                    check_keys(f, &what, &["error", "after_s", "recover_after_s"])?;
                    let default = if kind == "driver_gone" {
                        "DRIVER_NOT_LOADED"
                    } else {
                        "UNKNOWN"
                    };
                    let code = parse_return_code(f.error.as_deref().unwrap_or(default))
                        .map_err(|m| format!("{what}.error: {m}"))?;
                    if code == NVML_SUCCESS {
                        return Err(format!("{what}.error: must be an error, not SUCCESS"));
                    }
                    let start_ns = after_ns.unwrap_or(0);
                    let window = Window {
                        code,
                        start_ns,
                        end_ns: secs("recover_after_s", f.recover_after_s)?
                            .map(|r| start_ns.saturating_add(r)),
                    };
                    if kind == "driver_gone" {
                        driver_gone.push(window);
                    } else {
                        event_wait_errors.push(window);
                    }
                }
                "fabric_not_ready" | "fabric_unhealthy" => {
                    let not_ready = kind == "fabric_not_ready";
                    let last = if not_ready { "state" } else { "health_mask" };
                    check_keys(
                        f,
                        &what,
                        &["gpu", "gpus", "after_s", "recover_after_s", last],
                    )?;
                    let fault_kind = if not_ready {
                        FabricFaultKind::NotReady(match f.state.as_deref() {
                            None | Some("in_progress") => NVML_GPU_FABRIC_STATE_IN_PROGRESS,
                            Some("not_started") => NVML_GPU_FABRIC_STATE_NOT_STARTED,
                            Some(o) => {
                                return Err(format!(
                                    "{what}.state: {o:?} is not \"in_progress\" or \"not_started\""
                                ))
                            }
                        })
                    } else {
                        FabricFaultKind::Unhealthy(f.health_mask.unwrap_or(FABRIC_DEGRADED_MASK))
                    };
                    let start_ns = after_ns.unwrap_or(0);
                    let end_ns = secs("recover_after_s", f.recover_after_s)?
                        .map(|r| start_ns.saturating_add(r));
                    for &t in &targets {
                        let d = &mut devices[t as usize];
                        if d.fabric.is_none() {
                            return Err(format!(
                                "{what}: GPU {t} ({}) is in no NVLink fabric (give its group a [gpus.fabric] table)",
                                d.name
                            ));
                        }
                        d.fabric_faults.push(FabricFault {
                            kind: fault_kind,
                            start_ns,
                            end_ns,
                        });
                    }
                }
                other => {
                    return Err(format!(
                        "{what}.kind: unknown {other:?} (not_supported, lost, hang, page_retirement_pending, row_remap_pending, row_remap_failed, event_wait_error, driver_gone, fabric_not_ready, fabric_unhealthy)"
                    ));
                }
            }
        }

        // MIG devices, GPU instances, compute instances.
        let mut gpu_instances = Vec::new();
        let mut compute_instances = Vec::new();
        for idx in 0..total {
            let plan = &plans[gpu_group[idx]];
            let Some(profiles) = &plan.mig else { continue };
            let m = &models[plan.model];
            let mut start = 0;
            for (j, &pi) in profiles.iter().enumerate() {
                let p = &m.mig_profiles[pi];
                let dev_index = devices.len();
                let gi_index = gpu_instances.len();
                let ci_index = compute_instances.len();
                gpu_instances.push(GpuInstance {
                    device: idx,
                    id: j as u32 + 1,
                    profile: pi,
                    placement: (start, p.memory_slices),
                    compute_instance: ci_index,
                });
                start += p.memory_slices;
                compute_instances.push(ComputeInstance {
                    gpu_instance: gi_index,
                    device: dev_index,
                    id: 0,
                    slices: p.slices,
                });
                let parent = &devices[idx];
                let mig_dev = Device {
                    gpu: idx,
                    mig: Some(MigRef {
                        parent: idx,
                        gpu_instance: gi_index,
                        compute_instance: ci_index,
                        profile: pi,
                    }),
                    uuid: uuid_like("MIG-", &format!("{}/gpu/{idx}/mig/{j}", sc.name)),
                    name: format!("{} MIG {}", m.name, p.name),
                    model: plan.model,
                    memory_total: p.memory_mib * MIB,
                    memory_reserved: 0,
                    seed: mix64(parent.seed ^ (j as u64 + 1)),
                    gens: plan.mig_gens,
                    samples: Default::default(),
                    mig_enabled: false,
                    mig_devices: Vec::new(),
                    gpu_instances: Vec::new(),
                    pci: parent.pci,
                    bus_id: parent.bus_id.clone(),
                    serial: parent.serial.clone(),
                    numa_node: parent.numa_node,
                    cpus: parent.cpus.clone(),
                    display: false,
                    persistence: parent.persistence,
                    ecc: parent.ecc,
                    calls: AtomicU64::new(0),
                    unsupported: parent.unsupported,
                    unsupported_fields: parent.unsupported_fields.clone(),
                    lost: None,
                    hangs: Vec::new(),
                    memory_faults: Vec::new(),
                    gpm_samples: AtomicU64::new(0),
                    fabric: None,
                    fabric_faults: Vec::new(),
                };
                devices.push(mig_dev);
                devices[idx].mig_devices.push(dev_index);
                devices[idx].gpu_instances.push(gi_index);
            }
        }

        let mut events = Vec::new();
        for (ei, e) in sc.events.iter().enumerate() {
            let what = format!("events[{ei}]");
            if e.gpu as usize >= total {
                return Err(format!(
                    "{what}.gpu: index {} out of range (the scenario has {total})",
                    e.gpu
                ));
            }
            let event_type = match e.kind.as_str() {
                "xid" => nvmlEventTypeXidCriticalError,
                "single_bit_ecc" => nvmlEventTypeSingleBitEccError,
                "double_bit_ecc" => nvmlEventTypeDoubleBitEccError,
                "pstate" => nvmlEventTypePState,
                "clock" => nvmlEventTypeClock,
                o => return Err(format!("{what}.type: unknown {o:?} (xid, single_bit_ecc, double_bit_ecc, pstate, clock)")),
            };
            events.push(SimEvent {
                gpu: e.gpu as usize,
                at_ns: secs_to_ns(&format!("{what}.at_s"), e.at_s)?,
                event_type,
                data: if event_type == nvmlEventTypeXidCriticalError {
                    e.xid
                } else {
                    0
                },
                gpu_instance: e.gpu_instance.unwrap_or(u32::MAX),
                compute_instance: e.compute_instance.unwrap_or(u32::MAX),
            });
        }
        events.sort_by_key(|e| e.at_ns);
        let choices = Choices::build(&sc.choices)?;

        let by_uuid = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.uuid.clone(), i))
            .collect();
        let by_bus_id = devices[..total]
            .iter()
            .enumerate()
            .map(|(i, d)| (d.bus_id.clone(), i))
            .collect();
        Ok(Sim {
            path: path.to_string(),
            nvml_version: sc
                .driver
                .nvml_version
                .clone()
                .unwrap_or_else(|| format!("12.{driver_version}")),
            driver_version,
            name: sc.name,
            cuda_version,
            init_error,
            models,
            devices,
            gpu_count: total,
            gpu_instances,
            compute_instances,
            by_uuid,
            by_bus_id,
            latency_ns,
            latency_sleep,
            events,
            system_hangs,
            driver_gone,
            event_wait_errors,
            choices,
            epoch_ns: AtomicU64::new(now_ns()),
            clock_started: AtomicBool::new(false),
            wall_epoch_s: AtomicU64::new(0),
            session_ns: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
        })
    }

    pub fn device_by_uuid(&self, uuid: &str) -> Option<usize> {
        self.by_uuid.get(uuid).copied()
    }

    pub fn device_by_bus_id(&self, bus_id: &str) -> Option<usize> {
        let key = bus_id.to_ascii_uppercase();
        // Accept the legacy 4-digit domain form too.
        let key = match key.split_once(':') {
            Some((dom, rest)) if dom.len() < 8 => format!("{dom:0>8}:{rest}"),
            _ => key,
        };
        self.by_bus_id.get(&key).copied()
    }

    pub fn model_of(&self, d: &Device) -> &Model {
        &self.models[d.model]
    }

    pub fn profile_of(&self, d: &Device) -> Option<&MigProfile> {
        d.mig.map(|m| &self.models[d.model].mig_profiles[m.profile])
    }

    /// Nanoseconds on the machine's clock (since its first nvmlInit in this process).
    pub fn elapsed_ns(&self) -> u64 {
        now_ns().saturating_sub(self.epoch_ns.load(Ordering::Relaxed))
    }

    /// Starts the clock on the first nvmlInit that reads this scenario; later inits
    /// (after a shutdown) keep it, so faults fire once per process.
    pub fn start_clock(&self) {
        if !self.clock_started.swap(true, Ordering::AcqRel) {
            self.epoch_ns.store(now_ns(), Ordering::Relaxed);
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            self.wall_epoch_s.store(wall, Ordering::Relaxed);
        }
    }

    /// A session (refcount 0 -> 1) begins now: note when, and pick up memory-repair
    /// state an earlier process left in NVML_SIM_PERSIST_DIR.
    pub fn begin_session(&self) {
        self.session_ns.store(self.elapsed_ns(), Ordering::Relaxed);
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let Some(dir) = persist_dir() else { return };
        for (i, d) in self.devices[..self.gpu_count].iter().enumerate() {
            for f in &d.memory_faults {
                if marker_path(&dir, &self.name, i, f.kind).exists() {
                    f.persisted.store(true, Ordering::Relaxed);
                    f.recorded.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// The error every call of the current session answers while the driver is gone:
    /// from a driver_gone fault's start, for good for a session that began before it
    /// recovered (a process must shut NVML down and init again, as after a reload).
    pub fn gone(&self) -> Option<nvmlReturn_t> {
        if self.driver_gone.is_empty() {
            return None;
        }
        let now = self.elapsed_ns();
        let session = self.session_ns.load(Ordering::Relaxed);
        self.driver_gone
            .iter()
            .find(|w| now >= w.start_ns && w.end_ns.is_none_or(|e| session < e))
            .map(|w| w.code)
    }

    /// Event sets created now see events due from this machine time on: all of them in
    /// the first session, those from the session's start in later ones.
    pub fn events_from_ns(&self) -> u64 {
        if self.sessions.load(Ordering::Relaxed) > 1 {
            self.session_ns.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// The error an init starting a new session answers now, if the driver is gone.
    pub fn gone_for_new_session(&self) -> Option<nvmlReturn_t> {
        code_at(&self.driver_gone, self.elapsed_ns())
    }

    /// The error an event-set wait answers now (driver gone or event_wait_error).
    pub fn wait_error(&self) -> Option<nvmlReturn_t> {
        if let Some(code) = self.gone() {
            return Some(code);
        }
        if self.event_wait_errors.is_empty() {
            return None;
        }
        code_at(&self.event_wait_errors, self.elapsed_ns())
    }

    /// Nanoseconds until the next driver_gone or event_wait_error window opens.
    pub fn next_wait_error_in(&self) -> Option<u64> {
        let now = self.elapsed_ns();
        self.driver_gone
            .iter()
            .chain(&self.event_wait_errors)
            .filter(|w| w.start_ns > now)
            .map(|w| w.start_ns - now)
            .min()
    }

    /// Next value of a metric for a device (advances its sample counter).
    pub fn sample(&self, d: &Device, m: Metric) -> f64 {
        let n = d.samples[m as usize].fetch_add(1, Ordering::Relaxed);
        d.gens[m as usize].at(d.seed, n)
    }

    /// The per-call prologue: modelled driver latency, hangs, a gone driver, lost
    /// GPUs and metrics declared unsupported. Err is the NVML code the call returns.
    pub fn enter(&self, d: &Device, f: fns::Fn) -> Result<(), nvmlReturn_t> {
        let gpu = &self.devices[d.gpu];
        for m in &gpu.memory_faults {
            if !m.recorded.load(Ordering::Relaxed) {
                self.memory_active(d.gpu, m);
            }
        }
        self.enter_lookup(d, f)?;
        let fi = f as usize;
        if let Some(lost) = &gpu.lost {
            if self.is_lost(gpu, lost) {
                return Err(NVML_ERROR_GPU_IS_LOST);
            }
        }
        if d.unsupported & (1u128 << fi) != 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        Ok(())
    }

    /// The prologue of a handle lookup naming `d`: latency and hangs only (a lookup
    /// is not a call on the GPU: lost, not_supported and after_calls ignore it).
    pub fn enter_lookup(&self, d: &Device, f: fns::Fn) -> Result<(), nvmlReturn_t> {
        let fi = f as usize;
        let lat = self.latency_ns[fi];
        if lat > 0 {
            self.spend(lat);
        }
        for h in &self.devices[d.gpu].hangs {
            if h.functions & (1u128 << fi) != 0 {
                self.hang(h);
            }
        }
        // The driver may have gone while the call was blocked.
        match self.gone() {
            Some(code) => Err(code),
            None => Ok(()),
        }
    }

    /// The prologue of a system-level call: its hangs, then a gone driver.
    pub fn enter_system(&self, f: fns::SysFn) -> Result<(), nvmlReturn_t> {
        for h in &self.system_hangs {
            if h.functions & (1u128 << f as usize) != 0 {
                self.hang(h);
            }
        }
        match self.gone() {
            Some(code) => Err(code),
            None => Ok(()),
        }
    }

    /// Blocks if `h` is due now: for duration (never past until), until until, or
    /// for good.
    fn hang(&self, h: &HangFault) {
        let now = self.elapsed_ns();
        if now < h.after_ns || h.until_ns.is_some_and(|u| now >= u) {
            return;
        }
        if h.calls > 0 && h.hits.fetch_add(1, Ordering::Relaxed) >= h.calls {
            return;
        }
        let left = h.until_ns.map(|u| Duration::from_nanos(u - now));
        // Counted while blocked, so a test can count the threads a hang holds exactly.
        struct Blocked<'a>(&'a AtomicU64);
        impl Drop for Blocked<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        h.blocked.fetch_add(1, Ordering::AcqRel);
        let _blocked = Blocked(&h.blocked);
        match (h.duration, left) {
            (Some(d), Some(l)) => std::thread::sleep(d.min(l)),
            (Some(d), None) | (None, Some(d)) => std::thread::sleep(d),
            (None, None) => loop {
                // Blocked for good; the process can still exit around this thread.
                std::thread::sleep(Duration::from_secs(3600));
            },
        }
    }

    /// Calls blocked in a hang now: GPU `gpu`'s (its handle lookups and calls on
    /// it, its MIG devices' included), or the system-level ones when None.
    pub fn blocked_calls(&self, gpu: Option<usize>) -> Option<u64> {
        let hangs = match gpu {
            Some(g) if g < self.gpu_count => &self.devices[g].hangs,
            Some(_) => return None,
            None => &self.system_hangs,
        };
        Some(
            hangs
                .iter()
                .map(|h| h.blocked.load(Ordering::Acquire))
                .sum(),
        )
    }

    /// Whether a memory fault of GPU `gpu` is active; the first time it is, its
    /// marker goes to NVML_SIM_PERSIST_DIR (when set).
    pub fn memory_active(&self, gpu: usize, f: &MemoryFault) -> bool {
        let on = f.persisted.load(Ordering::Relaxed) || self.elapsed_ns() >= f.after_ns;
        if on && !f.recorded.swap(true, Ordering::AcqRel) {
            if let Some(dir) = persist_dir() {
                let path = marker_path(&dir, &self.name, gpu, f.kind);
                let text = format!(
                    "{} on GPU {gpu} of scenario {:?}: kept until this file is removed\n",
                    f.kind.name(),
                    self.name
                );
                if let Err(e) =
                    std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, text))
                {
                    eprintln!("nvml-sim: cannot write {}: {e}", path.display());
                }
            }
        }
        on
    }

    /// What the retired-pages and remapped-rows queries of GPU `gpu` answer now.
    pub fn memory_state(&self, gpu: usize) -> MemoryState {
        let mut st = MemoryState::default();
        for f in &self.devices[gpu].memory_faults {
            if !self.memory_active(gpu, f) {
                continue;
            }
            match f.kind {
                MemoryKind::PageRetirementPending => {
                    st.retirement_pending = true;
                    st.retired_dbe_pages += f.pages;
                }
                MemoryKind::RowRemapPending | MemoryKind::RowRemapFailed => {
                    st.remap_pending |= f.kind == MemoryKind::RowRemapPending;
                    st.remap_failed |= f.kind == MemoryKind::RowRemapFailed;
                    st.correctable_rows += f.correctable_rows;
                    st.uncorrectable_rows += f.uncorrectable_rows;
                }
            }
        }
        st
    }

    /// What the fabric info calls of physical GPU `gpu` answer now; None when it
    /// is in no fabric.
    pub fn fabric_now(&self, gpu: usize) -> Option<FabricNow> {
        let d = &self.devices[gpu];
        let fabric = d.fabric?;
        let mut now = FabricNow {
            state: NVML_GPU_FABRIC_STATE_COMPLETED,
            cluster_uuid: fabric.cluster_uuid,
            clique: fabric.clique,
            health_mask: FABRIC_HEALTHY_MASK,
        };
        if d.fabric_faults.is_empty() {
            return Some(now);
        }
        let t = self.elapsed_ns();
        for f in &d.fabric_faults {
            if t < f.start_ns || f.end_ns.is_some_and(|e| t >= e) {
                continue;
            }
            match f.kind {
                FabricFaultKind::NotReady(state) => {
                    // Not registered yet: no cluster, no clique.
                    now.state = state;
                    now.cluster_uuid = [0; 16];
                    now.clique = 0;
                }
                FabricFaultKind::Unhealthy(mask) => now.health_mask = mask,
            }
        }
        if now.state != NVML_GPU_FABRIC_STATE_COMPLETED {
            now.health_mask = 0;
        }
        Some(now)
    }

    /// The active retired pages of GPU `gpu` for double-bit ECC errors, as
    /// (address, unix timestamp in seconds); addresses are page aligned and the same
    /// in every run.
    pub fn retired_pages(&self, gpu: usize) -> Vec<(u64, u64)> {
        let d = &self.devices[gpu];
        let wall = self.wall_epoch_s.load(Ordering::Relaxed);
        let mut out = Vec::new();
        for (j, f) in d.memory_faults.iter().enumerate() {
            if f.kind != MemoryKind::PageRetirementPending || !self.memory_active(gpu, f) {
                continue;
            }
            let at = if f.persisted.load(Ordering::Relaxed) {
                wall
            } else {
                wall + f.after_ns / 1_000_000_000
            };
            for k in 0..u64::from(f.pages) {
                let h = mix64(d.seed ^ ((j as u64) << 32 | k));
                out.push((h & 0x0000_000F_FFFF_F000, at));
            }
        }
        out
    }

    fn is_lost(&self, gpu: &Device, lost: &LostFault) -> bool {
        let (now, start) = match lost.start {
            Trigger::AfterNs(ns) => (self.elapsed_ns(), ns),
            Trigger::AfterCalls(n) => (gpu.calls.fetch_add(1, Ordering::Relaxed), n),
        };
        now >= start
            && lost
                .recover_after
                .is_none_or(|r| now < start.saturating_add(r))
    }

    fn spend(&self, ns: u64) {
        let d = Duration::from_nanos(ns);
        if self.latency_sleep {
            std::thread::sleep(d);
        } else {
            let t = Instant::now();
            while t.elapsed() < d {
                std::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EIGHT: &str = r#"
        name = "t"
        [[gpus]]
        model = "h100-sxm5-80gb"
        count = 6
        [[gpus]]
        model = "h100-sxm5-80gb"
        count = 2
        mig = ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    "#;

    #[test]
    fn builds_gpus_then_mig_devices() {
        let s = Sim::from_toml("x", EIGHT).unwrap();
        assert_eq!(s.gpu_count, 8);
        assert_eq!(s.devices.len(), 16);
        assert_eq!(s.devices[6].mig_devices, vec![8, 9, 10, 11]);
        assert!(s.devices[8].uuid.starts_with("MIG-"));
        assert_eq!(s.devices[8].memory_total, 40192 * MIB);
        assert_eq!(s.devices[0].bus_id, "00000000:18:00.0");
        assert_eq!(s.device_by_bus_id("0000:18:00.0"), Some(0));
        // Same name, same UUIDs.
        let again = Sim::from_toml("y", EIGHT).unwrap();
        assert_eq!(again.devices[3].uuid, s.devices[3].uuid);
        assert_eq!(s.devices[3].uuid.len(), 40);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Sim::from_toml("x", "name = \"t\"\n[[gpus]]\nmodel = \"h100\"\n").unwrap_err();
        assert!(e.contains("gpus[0].model"), "{e}");
        let e =
            Sim::from_toml("x", "name = \"t\"\n[[gpus]]\nmodel = \"l4\"\nmig = []\n").unwrap_err();
        assert!(e.contains("does not support MIG"), "{e}");
        let e = Sim::from_toml(
            "x",
            "name = \"t\"\n[[gpus]]\nmodel = \"a100-sxm4-40gb\"\nmig = [\"7g.40gb\", \"1g.5gb\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("slices"), "{e}");
        let e = Sim::from_toml("x", "name = \"t\"\nbogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e =
            Sim::from_toml("x", "name = \"t\"\n[[gpus]]\nmodel = \"l4\"\ncount = 0\n").unwrap_err();
        assert!(e.contains("count"), "{e}");
    }

    /// Asserts that the scenario (after a `name` line) is refused with an error
    /// that contains `want`.
    fn refused(text: &str, want: &str) {
        let e = Sim::from_toml("x", &format!("name = \"t\"\n{text}")).unwrap_err();
        assert!(e.contains(want), "{text:?}: {e}");
    }

    /// One L4 with one fault (the fault table's keys).
    fn l4_fault(fault: &str) -> String {
        format!("[[gpus]]\nmodel = \"l4\"\n[[faults]]\n{fault}")
    }

    fn build(text: &str) -> Sim {
        Sim::from_toml("x", &format!("name = \"t\"\n{text}")).unwrap()
    }

    #[test]
    fn fault_keys_that_do_not_apply_are_errors() {
        refused(
            &l4_fault("kind = \"hang\"\nafter_calls = 3\n"),
            "faults[0].after_calls: does not apply",
        );
        refused(
            &l4_fault("kind = \"lost\"\nafter_s = 1\nrecover_after_calls = 3\n"),
            "faults[0].recover_after_calls",
        );
        refused(
            &l4_fault("kind = \"driver_gone\"\ngpu = 0\n"),
            "faults[0].gpu: does not apply",
        );
        refused(
            &l4_fault("kind = \"event_wait_error\"\nerror = \"NOPE\"\n"),
            "faults[0].error: unknown NVML return code",
        );
        refused(
            &l4_fault("kind = \"hang\"\nafter_s = 2\nuntil_s = 1\n"),
            "faults[0].until_s",
        );
        refused(
            &l4_fault("kind = \"hang\"\ngpu = 0\nfunction = \"nvmlEventSetWait_v2\"\n"),
            "belong to no GPU",
        );
        refused(
            &l4_fault("kind = \"not_supported\"\nfunction = \"nvmlDeviceGetHandleByIndex\"\n"),
            "unknown per-device query",
        );
        refused(
            &l4_fault("kind = \"frobnicate\"\n"),
            "faults[0].kind: unknown",
        );
    }

    #[test]
    fn memory_faults_need_a_gpu_that_repairs_that_way() {
        refused("[[gpus]]\nmodel = \"a100-sxm4-80gb\"\n[[faults]]\nkind = \"page_retirement_pending\"\ngpu = 0\n", "has no page retirement");
        refused(
            "[[gpus]]\nmodel = \"v100-sxm2-32gb\"\n[[faults]]\nkind = \"row_remap_failed\"\n",
            "has no row remapping",
        );
        refused("[[gpus]]\nmodel = \"a100-sxm4-40gb\"\nmig = []\n[[faults]]\nkind = \"row_remap_pending\"\n", "MIG mode");
        refused("[[gpus]]\nmodel = \"a100-sxm4-80gb\"\n[[faults]]\nkind = \"row_remap_pending\"\npages = 2\n", "faults[0].pages: does not apply");
        // Overrides turn the features on and off.
        let s = build(
            "[[gpus]]\nmodel = \"a100-sxm4-80gb\"\npage_retirement = true\nrow_remapping = false\n[[faults]]\nkind = \"page_retirement_pending\"\npages = 3\n",
        );
        let m = s.model_of(&s.devices[0]);
        assert!(m.page_retirement && !m.row_remapping);
        assert_eq!(s.memory_state(0).retired_dbe_pages, 3);
        assert_eq!(s.retired_pages(0).len(), 3);
        assert!(s.retired_pages(0).iter().all(|(a, _)| a % 4096 == 0));
        // An older architecture brings page retirement with it.
        let s = build("[[gpus]]\nmodel = \"l4\"\narchitecture = \"turing\"\n");
        assert!(s.model_of(&s.devices[0]).page_retirement);
    }

    #[test]
    fn memory_mib_zero_means_no_dedicated_memory() {
        let s = build("[[gpus]]\nmodel = \"h100-sxm5-80gb\"\nmemory_mib = 0\n");
        assert_eq!(
            (s.devices[0].memory_total, s.devices[0].memory_reserved),
            (0, 0)
        );
        let s = build("[[gpus]]\nname = \"iGPU\"\nmemory_mib = 0\n");
        assert_eq!(s.devices[0].memory_total, 0);
        refused(
            "[[gpus]]\nname = \"iGPU\"\nmemory_mib = 0\nmemory_reserved_mib = 5\n",
            "gpus[0].memory_reserved_mib",
        );
        refused(
            "[[gpus]]\nmodel = \"h100-sxm5-80gb\"\nmemory_mib = 0\nmig = []\n",
            "gpus[0].mig",
        );
        let s = build("[[gpus]]\nmodel = \"gb10\"\n");
        assert_eq!(s.devices[0].memory_total, 0);
    }

    #[test]
    fn gpu_less_faults_cover_every_gpu() {
        let s = build(
            "[[gpus]]\nmodel = \"l4\"\ncount = 3\n[[faults]]\nkind = \"lost\"\nafter_s = 0\n[[faults]]\nkind = \"hang\"\nafter_s = 9\n[[faults]]\nkind = \"hang\"\nfunctions = [\"nvmlDeviceGetCount_v2\", \"nvmlDeviceGetPowerUsage\"]\nafter_s = 9\n",
        );
        for d in &s.devices {
            assert!(d.lost.is_some());
            assert_eq!(d.hangs.len(), 2);
            assert_eq!(d.hangs[0].functions, u128::MAX);
            assert_eq!(
                d.hangs[1].functions,
                1 << fns::Fn::nvmlDeviceGetPowerUsage as u128
            );
            assert_eq!(
                s.enter(d, fns::Fn::nvmlDeviceGetUUID),
                Err(NVML_ERROR_GPU_IS_LOST)
            );
        }
        assert_eq!(s.system_hangs.len(), 1);
        assert_eq!(
            s.system_hangs[0].functions,
            1 << fns::SysFn::nvmlDeviceGetCount as u128
        );
    }

    #[test]
    fn lost_after_calls_then_recovers() {
        let s = Sim::from_toml(
            "x",
            "name = \"t\"\n[[gpus]]\nmodel = \"l4\"\n[[faults]]\nkind = \"lost\"\ngpu = 0\nafter_calls = 2\nrecover_after_calls = 2\n",
        )
        .unwrap();
        let d = &s.devices[0];
        let f = fns::Fn::nvmlDeviceGetPowerUsage;
        let got: Vec<_> = (0..5).map(|_| s.enter(d, f)).collect();
        assert_eq!(
            got,
            vec![
                Ok(()),
                Ok(()),
                Err(NVML_ERROR_GPU_IS_LOST),
                Err(NVML_ERROR_GPU_IS_LOST),
                Ok(())
            ]
        );
    }
}
