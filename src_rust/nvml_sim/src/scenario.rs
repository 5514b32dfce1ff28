//! The scenario file (TOML) as written by people; `sim::Sim::build` turns it into the
//! simulated machine. Unknown keys are errors so a typo never silently does nothing.
//! The format is documented in docs/simulated-driver.md.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::gen::ValueSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seeds the UUIDs, serials and generators: same name, same devices.
    pub name: String,
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub init: Init,
    #[serde(default)]
    pub latency: Latency,
    #[serde(default)]
    pub topology: Topology,
    #[serde(default)]
    pub gpus: Vec<GpuGroup>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(default)]
    pub choices: Choices,
}

/// `[choices]`: where nvml.h allows more than one answer, which one this driver
/// gives, so the plugin can be tested against each.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choices {
    /// Every Nth nvmlEventSetWait(_v2) on a set that finds nothing ready returns
    /// NVML_ERROR_TIMEOUT at once, as an interrupt does (0 or unset: never early).
    #[serde(default)]
    pub event_wait_early_timeout_every: u32,
    /// What nvmlDeviceGetDeviceHandleFromMigDeviceHandle answers for a handle that is
    /// not a MIG device's: "INVALID_ARGUMENT" (default) or "NOT_SUPPORTED".
    pub not_a_mig_device: Option<String>,
    /// What nvmlGpmMetricsGet answers for two samples less than 100 ms apart (within
    /// the driver's sample refresh): "zero" (default: SUCCESS, every metric 0) or
    /// "error" (NVML_ERROR_INVALID_ARGUMENT).
    pub gpm_close_samples: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Driver {
    /// Defaults to the branch's version (see `branch`), else "550.90.07".
    pub version: Option<String>,
    /// The driver branch played (535, 550, ...): a list in src_rust/nvml_sim/branches
    /// says which functions it exports. None: every function the simulator has.
    pub branch: Option<u32>,
    /// "12.4" (as nvidia-smi prints it); NVML reports 12040.
    #[serde(default = "default_cuda_version")]
    pub cuda_version: String,
    /// Defaults to "12." + the driver version, as real drivers report it.
    pub nvml_version: Option<String>,
}

impl Default for Driver {
    fn default() -> Self {
        Driver {
            version: None,
            branch: None,
            cuda_version: default_cuda_version(),
            nvml_version: None,
        }
    }
}

fn default_cuda_version() -> String {
    "12.4".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Init {
    /// Return code name ("DRIVER_NOT_LOADED" or "NVML_ERROR_DRIVER_NOT_LOADED") that
    /// nvmlInit returns instead of succeeding.
    pub error: Option<String>,
    /// Fail only the first N init calls of the process, then succeed (0 = always fail).
    #[serde(default)]
    pub fail_count: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Added to every per-device call, in nanoseconds.
    #[serde(default)]
    pub ns: u64,
    /// "spin" burns CPU (the driver's own work), "sleep" parks the thread (waiting on
    /// the kernel). Default "spin".
    pub mode: Option<String>,
    /// Per-function latency in nanoseconds, replacing `ns` for that function.
    #[serde(default)]
    pub functions: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// NUMA nodes the GPUs are spread over (in order, equal shares).
    #[serde(default = "default_numa_nodes")]
    pub numa_nodes: u32,
    #[serde(default = "default_cpus_per_node")]
    pub cpus_per_node: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            numa_nodes: default_numa_nodes(),
            cpus_per_node: default_cpus_per_node(),
        }
    }
}

fn default_numa_nodes() -> u32 {
    1
}
fn default_cpus_per_node() -> u32 {
    32
}

/// `count` identical GPUs; a preset `model` plus any overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuGroup {
    pub model: Option<String>,
    #[serde(default = "default_count")]
    pub count: u32,
    pub name: Option<String>,
    /// 0 means no dedicated memory (an integrated GPU): memory info NOT_SUPPORTED.
    pub memory_mib: Option<u64>,
    pub memory_reserved_mib: Option<u64>,
    /// 0 means no BAR1 (unified memory): the query answers NOT_SUPPORTED.
    pub bar1_mib: Option<u64>,
    pub power_limit_w: Option<f64>,
    pub max_clock_graphics_mhz: Option<u32>,
    pub max_clock_sm_mhz: Option<u32>,
    pub max_clock_memory_mhz: Option<u32>,
    pub max_clock_video_mhz: Option<u32>,
    pub pcie_generation: Option<u32>,
    pub pcie_width: Option<u32>,
    /// "9.0"
    pub compute_capability: Option<String>,
    /// "hopper", "ampere", "ada", ... or the NVML number.
    pub architecture: Option<String>,
    pub pci_device_id: Option<u32>,
    pub multiprocessors: Option<u32>,
    /// Whether the retired-pages queries answer (default: before Ampere).
    pub page_retirement: Option<bool>,
    /// Whether nvmlDeviceGetRemappedRows answers (default: Ampere and later).
    pub row_remapping: Option<bool>,
    /// Whether GPM answers (default: Hopper and later).
    pub gpm: Option<bool>,
    /// NVLink links present (0 = none), each link's speed in MB/s, and the NVLink
    /// version ("4.0", "5.0", ...).
    pub nvlink_links: Option<u32>,
    pub nvlink_speed_mbps: Option<u32>,
    pub nvlink_version: Option<String>,
    /// The GPUs' place in an NVLink fabric (default: the preset's).
    pub fabric: Option<FabricSpec>,
    #[serde(default)]
    pub display_mode: bool,
    #[serde(default = "default_true")]
    pub persistence_mode: bool,
    #[serde(default = "default_true")]
    pub ecc: bool,
    /// GPU instances by profile name ("3g.40gb"); present (even empty) = MIG enabled.
    /// Each GPU instance holds one compute instance spanning it, i.e. one MIG device.
    pub mig: Option<Vec<String>>,
    /// Per-group stats (generators); unset metrics use the defaults.
    #[serde(default)]
    pub stats: BTreeMap<String, ValueSpec>,
    /// Stats for the MIG devices of this group (memory_used_mib).
    #[serde(default)]
    pub mig_stats: BTreeMap<String, ValueSpec>,
}

fn default_count() -> u32 {
    1
}

/// `[gpus.fabric]`: what nvmlDeviceGetGpuFabricInfo[V] reports once the fabric
/// manager has registered the GPU.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabricSpec {
    /// false: the GPUs are in no fabric (state NOT_SUPPORTED).
    pub enabled: Option<bool>,
    /// The NVLink domain's cluster UUID; default from the scenario name (one
    /// domain for every GPU of the scenario).
    pub cluster_uuid: Option<String>,
    /// The fabric clique (partition) within the cluster.
    pub clique: Option<u32>,
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// "not_supported", "lost", "hang", "page_retirement_pending", "row_remap_pending",
    /// "row_remap_failed", "event_wait_error", "driver_gone", "fabric_not_ready" or
    /// "fabric_unhealthy". Which of the keys
    /// below apply depends on the kind; a key that does not apply is an error.
    pub kind: String,
    /// GPU indexes (nvmlDeviceGetHandleByIndex order); `gpu` for one. Neither = all.
    pub gpu: Option<u32>,
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// not_supported / hang: function names (a version suffix is ignored).
    #[serde(default)]
    pub functions: Vec<String>,
    pub function: Option<String>,
    /// not_supported: field ids answered NOT_SUPPORTED in nvmlDeviceGetFieldValues.
    #[serde(default)]
    pub fields: Vec<u32>,
    /// Seconds on the machine's clock when the fault starts.
    pub after_s: Option<f64>,
    /// lost: number of calls on the GPU after which it is lost.
    pub after_calls: Option<u64>,
    /// lost / event_wait_error / driver_gone / fabric_*: how long after the start it ends.
    pub recover_after_s: Option<f64>,
    pub recover_after_calls: Option<u64>,
    /// hang: seconds on the machine's clock from which calls no longer hang.
    pub until_s: Option<f64>,
    /// hang: how long each hanging call blocks.
    pub duration_ms: Option<u64>,
    /// hang: how many calls hang (0 or unset = every call once started).
    pub calls: Option<u64>,
    /// event_wait_error / driver_gone: the NVML return code name answered.
    pub error: Option<String>,
    /// page_retirement_pending: pages retired for double-bit ECC errors (default 1).
    pub pages: Option<u32>,
    /// row_remap_pending / row_remap_failed: rows remapped for correctable and
    /// uncorrectable errors.
    pub correctable_rows: Option<u32>,
    pub uncorrectable_rows: Option<u32>,
    /// fabric_not_ready: the fabric state meanwhile ("in_progress", "not_started").
    pub state: Option<String>,
    /// fabric_unhealthy: the fabric health mask meanwhile.
    pub health_mask: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub gpu: u32,
    /// Seconds after nvmlInit.
    pub at_s: f64,
    /// "xid" (default), "single_bit_ecc", "double_bit_ecc", "pstate", "clock".
    #[serde(rename = "type", default = "default_event_type")]
    pub kind: String,
    /// The XID number (eventData) for "xid".
    #[serde(default)]
    pub xid: u64,
    /// MIG GPU / compute instance ids the event is attributed to.
    pub gpu_instance: Option<u32>,
    pub compute_instance: Option<u32>,
}

fn default_event_type() -> String {
    "xid".into()
}
