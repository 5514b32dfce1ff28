//! GPM, NVLink and the NVLink fabric through the exported C API: support by
//! architecture, sample buffers and what nvmlGpmMetricsGet checks, samples of
//! MIG GPU instances, the fabric info structs and fabric states over time.
//! NVML state is per process and the tests of one binary run on threads, so
//! each test holds LOCK while it uses the library.

use std::os::raw::c_uint;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nvml_sim::api::*;
use nvml_sim::fabric::*;
use nvml_sim::gpm::*;
use nvml_sim::sim::{Sim, FABRIC_DEGRADED_MASK, FABRIC_HEALTHY_MASK};
use nvml_sys::*;

mod common;
use common::{handle, refused};

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the scenario to a file of its own and inits NVML on it.
fn init(tag: &str, text: &str) {
    let dir = std::env::temp_dir().join(format!("nvml-sim-gpm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, text).unwrap();
    std::env::set_var("NVML_SIM_SCENARIO", &path);
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
}

/// nvml.h: two GPM samples more than 100 ms apart (the driver's refresh); closer
/// ones give no values (strict_answers.rs). The sleep is at least that long.
fn refresh() {
    std::thread::sleep(std::time::Duration::from_millis(150));
}

fn shutdown() {
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
}

fn mig(gpu: nvmlDevice_t, j: u32) -> nvmlDevice_t {
    let mut h = std::ptr::null_mut();
    assert_eq!(
        unsafe { nvmlDeviceGetMigDeviceHandleByIndex(gpu, j, &mut h) },
        NVML_SUCCESS
    );
    h
}

fn supported(h: nvmlDevice_t) -> Result<c_uint, nvmlReturn_t> {
    let mut s = nvmlGpmSupport_t {
        version: NVML_GPM_SUPPORT_VERSION,
        isSupportedDevice: 7,
    };
    match unsafe { nvmlGpmQueryDeviceSupport(h, &mut s) } {
        NVML_SUCCESS => Ok(s.isSupportedDevice),
        e => Err(e),
    }
}

fn alloc() -> nvmlGpmSample_t {
    let mut s = std::ptr::null_mut();
    assert_eq!(unsafe { nvmlGpmSampleAlloc(&mut s) }, NVML_SUCCESS);
    s
}

/// The values (or errors) of `ids` between two samples.
fn metrics(
    a: nvmlGpmSample_t,
    b: nvmlGpmSample_t,
    ids: &[c_uint],
) -> Result<Vec<Result<f64, nvmlReturn_t>>, nvmlReturn_t> {
    let mut get: Box<nvmlGpmMetricsGet_t> = Box::new(unsafe { std::mem::zeroed() });
    get.version = NVML_GPM_METRICS_GET_VERSION;
    get.numMetrics = ids.len() as c_uint;
    get.sample1 = a;
    get.sample2 = b;
    for (k, id) in ids.iter().enumerate() {
        get.metrics[k] = nvmlGpmMetric_t::request(*id);
    }
    match unsafe { nvmlGpmMetricsGet(&mut *get) } {
        NVML_SUCCESS => Ok(get.metrics[..ids.len()]
            .iter()
            .map(|m| match m.nvmlReturn {
                NVML_SUCCESS => Ok(m.value),
                e => Err(e),
            })
            .collect()),
        e => Err(e),
    }
}

const GPM_IDS: [c_uint; 9] = [
    NVML_GPM_METRIC_GRAPHICS_UTIL,
    NVML_GPM_METRIC_SM_UTIL,
    NVML_GPM_METRIC_SM_OCCUPANCY,
    NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    NVML_GPM_METRIC_DRAM_BW_UTIL,
    NVML_GPM_METRIC_PCIE_TX_PER_SEC,
    NVML_GPM_METRIC_PCIE_RX_PER_SEC,
    NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC,
    NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC,
];

#[test]
fn gpm_support_follows_the_architecture() {
    let _g = lock();
    init(
        "support",
        r#"
name = "gpm-support"
[[gpus]]
model = "a100-sxm4-80gb"
[[gpus]]
model = "h100-sxm5-80gb"
[[gpus]]
model = "h100-sxm5-80gb"
gpm = false
[[gpus]]
model = "l4"
architecture = "hopper"
[[gpus]]
model = "gb200"
mig = ["7g.186gb"]
"#,
    );
    let want = [0, 1, 0, 1, 1];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(supported(handle(i as u32)), Ok(*w), "GPU {i}");
    }
    // A MIG device handle answers for its GPU.
    assert_eq!(supported(mig(handle(4), 0)), Ok(1));
    let mut bad = nvmlGpmSupport_t {
        version: 2,
        isSupportedDevice: 0,
    };
    assert_eq!(
        unsafe { nvmlGpmQueryDeviceSupport(handle(1), &mut bad) },
        NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    );
    assert_eq!(
        unsafe { nvmlGpmQueryDeviceSupport(handle(1), std::ptr::null_mut()) },
        NVML_ERROR_INVALID_ARGUMENT
    );
    // Sampling a GPU without GPM is NOT_SUPPORTED.
    let s = alloc();
    assert_eq!(
        unsafe { nvmlGpmSampleGet(handle(0), s) },
        NVML_ERROR_NOT_SUPPORTED
    );
    assert_eq!(unsafe { nvmlGpmSampleFree(s) }, NVML_SUCCESS);
    shutdown();
}

#[test]
fn metrics_between_two_samples_are_the_scenario_values() {
    let _g = lock();
    init(
        "metrics",
        r#"
name = "gpm-metrics"
[[gpus]]
model = "h100-sxm5-80gb"
count = 2
stats.gpm_graphics_util = 87.5
stats.gpm_sm_util = 140
stats.gpm_pcie_tx_mibps = 1200
stats.gpm_nvlink_rx_mibps = { kind = "counter", value = 10, step = 5 }
"#,
    );
    let (h, other) = (handle(0), handle(1));
    let (a, b, c) = (alloc(), alloc(), alloc());
    // Samples not taken yet.
    assert_eq!(metrics(a, b, &GPM_IDS), Err(NVML_ERROR_INVALID_ARGUMENT));
    for s in [a, b] {
        refresh();
        assert_eq!(unsafe { nvmlGpmSampleGet(h, s) }, NVML_SUCCESS);
    }
    let got = metrics(a, b, &GPM_IDS).unwrap();
    assert_eq!(got[0], Ok(87.5));
    assert_eq!(got[1], Ok(100.0), "a percentage is capped at 100");
    assert_eq!(got[5], Ok(1200.0));
    // Sample numbers 1 and 2: the counter is read at the later one.
    assert_eq!(got[8], Ok(20.0));
    assert!(got.iter().all(|v| v.is_ok()));
    // Unknown to the simulator: that entry is NOT_SUPPORTED, the call succeeds.
    assert_eq!(
        metrics(a, b, &[NVML_GPM_METRIC_FP16_UTIL]).unwrap(),
        vec![Err(NVML_ERROR_NOT_SUPPORTED)]
    );
    // Wrong order, the same sample twice, samples of two devices.
    assert_eq!(metrics(b, a, &GPM_IDS), Err(NVML_ERROR_INVALID_ARGUMENT));
    assert_eq!(metrics(b, b, &GPM_IDS), Err(NVML_ERROR_INVALID_ARGUMENT));
    assert_eq!(unsafe { nvmlGpmSampleGet(other, c) }, NVML_SUCCESS);
    assert_eq!(metrics(a, c, &GPM_IDS), Err(NVML_ERROR_INVALID_ARGUMENT));
    // Sample 3 of GPU 0 into `a`: then (b, a) is the next interval.
    refresh();
    assert_eq!(unsafe { nvmlGpmSampleGet(h, a) }, NVML_SUCCESS);
    assert_eq!(
        metrics(b, a, &[NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC]).unwrap(),
        vec![Ok(25.0)]
    );
    // nvml.h 13.5's whole array (477 slots) is accepted and answered to the last slot;
    // one more than the header's bound is not.
    let full = vec![NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC; 477];
    assert_eq!(metrics(b, a, &full).unwrap(), vec![Ok(25.0); 477]);
    let mut get: Box<nvmlGpmMetricsGet_t> = Box::new(unsafe { std::mem::zeroed() });
    get.version = NVML_GPM_METRICS_GET_VERSION;
    get.numMetrics = 478;
    get.sample1 = b;
    get.sample2 = a;
    assert_eq!(
        unsafe { nvmlGpmMetricsGet(&mut *get) },
        NVML_ERROR_INVALID_ARGUMENT
    );
    // Bad arguments.
    assert_eq!(
        unsafe { nvmlGpmMetricsGet(std::ptr::null_mut()) },
        NVML_ERROR_INVALID_ARGUMENT
    );
    let mut get: Box<nvmlGpmMetricsGet_t> = Box::new(unsafe { std::mem::zeroed() });
    get.version = 2;
    get.numMetrics = 1;
    assert_eq!(
        unsafe { nvmlGpmMetricsGet(&mut *get) },
        NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    );
    get.version = NVML_GPM_METRICS_GET_VERSION;
    get.numMetrics = 0;
    assert_eq!(
        unsafe { nvmlGpmMetricsGet(&mut *get) },
        NVML_ERROR_INVALID_ARGUMENT
    );
    for s in [a, b, c] {
        assert_eq!(unsafe { nvmlGpmSampleFree(s) }, NVML_SUCCESS);
    }
    // Freed: the handle is gone.
    assert_eq!(unsafe { nvmlGpmSampleFree(a) }, NVML_ERROR_INVALID_ARGUMENT);
    assert_eq!(
        unsafe { nvmlGpmSampleGet(h, a) },
        NVML_ERROR_INVALID_ARGUMENT
    );
    assert_eq!(
        unsafe { nvmlGpmSampleAlloc(std::ptr::null_mut()) },
        NVML_ERROR_INVALID_ARGUMENT
    );
    shutdown();
}

#[test]
fn mig_instances_have_their_own_samples() {
    let _g = lock();
    init(
        "mig",
        r#"
name = "gpm-mig"
[[gpus]]
model = "gb200"
mig = ["3g.93gb", "1g.23gb"]
mig_stats.gpm_sm_util = { kind = "counter", value = 0, step = 10 }
[[gpus]]
model = "gb200"
"#,
    );
    let gpu = handle(0);
    let (a, b) = (alloc(), alloc());
    // GPU instance ids are 1, 2 in list order.
    assert_eq!(unsafe { nvmlGpmMigSampleGet(gpu, 2, a) }, NVML_SUCCESS);
    // The same instance through its MIG device handle: its next sample.
    refresh();
    assert_eq!(unsafe { nvmlGpmSampleGet(mig(gpu, 1), b) }, NVML_SUCCESS);
    assert_eq!(
        metrics(a, b, &[NVML_GPM_METRIC_SM_UTIL]).unwrap(),
        vec![Ok(20.0)]
    );
    // Instance 1 counts its own samples.
    assert_eq!(unsafe { nvmlGpmMigSampleGet(gpu, 1, a) }, NVML_SUCCESS);
    refresh();
    assert_eq!(unsafe { nvmlGpmMigSampleGet(gpu, 1, b) }, NVML_SUCCESS);
    assert_eq!(
        metrics(a, b, &[NVML_GPM_METRIC_SM_UTIL]).unwrap(),
        vec![Ok(20.0)]
    );
    assert_eq!(
        unsafe { nvmlGpmMigSampleGet(gpu, 9, a) },
        NVML_ERROR_NOT_FOUND
    );
    assert_eq!(
        unsafe { nvmlGpmMigSampleGet(handle(1), 1, a) },
        NVML_ERROR_NOT_SUPPORTED,
        "a GPU not in MIG mode"
    );
    assert_eq!(
        unsafe { nvmlGpmMigSampleGet(mig(gpu, 0), 1, a) },
        NVML_ERROR_INVALID_ARGUMENT,
        "a MIG device handle"
    );
    for s in [a, b] {
        assert_eq!(unsafe { nvmlGpmSampleFree(s) }, NVML_SUCCESS);
    }
    shutdown();
}

fn fabric_v3(h: nvmlDevice_t) -> Result<nvmlGpuFabricInfo_v3_t, nvmlReturn_t> {
    let mut info = nvmlGpuFabricInfo_v3_t {
        version: nvmlGpuFabricInfo_v3,
        ..Default::default()
    };
    match unsafe { nvmlDeviceGetGpuFabricInfoV(h, &mut info) } {
        NVML_SUCCESS => Ok(info),
        e => Err(e),
    }
}

const TRAY: &str = r#"
name = "fabric"
[[gpus]]
model = "gb200"
count = 3
[gpus.fabric]
cluster_uuid = "6d2c4a8e-1f3b-4c7d-9e5a-0b8f2d6c4e1a"
clique = 32766
[[gpus]]
model = "h100-sxm5-80gb"
[[gpus]]
model = "a100-sxm4-80gb"
[[faults]]
kind = "fabric_not_ready"
gpu = 1
recover_after_s = 0.3
[[faults]]
kind = "fabric_unhealthy"
gpu = 2
"#;

#[test]
fn fabric_info_in_every_version() {
    let _g = lock();
    init("fabric", TRAY);
    let uuid = [
        0x6d, 0x2c, 0x4a, 0x8e, 0x1f, 0x3b, 0x4c, 0x7d, 0x9e, 0x5a, 0x0b, 0x8f, 0x2d, 0x6c, 0x4e,
        0x1a,
    ];
    let ok = fabric_v3(handle(0)).unwrap();
    assert_eq!(ok.clusterUuid, uuid);
    assert_eq!(
        (ok.cliqueId, ok.state, ok.status),
        (32766, NVML_GPU_FABRIC_STATE_COMPLETED, NVML_SUCCESS)
    );
    assert_eq!(ok.healthMask, FABRIC_HEALTHY_MASK);
    assert_eq!(ok.healthSummary, NVML_GPU_FABRIC_HEALTH_SUMMARY_HEALTHY);
    // v2: 36 bytes written, nothing after them.
    let mut buf = [0xAAu8; 40];
    buf[..4].copy_from_slice(&nvmlGpuFabricInfo_v2.to_ne_bytes());
    assert_eq!(
        unsafe {
            nvmlDeviceGetGpuFabricInfoV(handle(0), buf.as_mut_ptr() as *mut nvmlGpuFabricInfo_v3_t)
        },
        NVML_SUCCESS
    );
    assert_eq!(&buf[4..20], &uuid);
    assert_eq!(buf[28..32], [NVML_GPU_FABRIC_STATE_COMPLETED, 0, 0, 0]);
    assert_eq!(buf[36..], [0xAA; 4]);
    let mut v1 = nvmlGpuFabricInfo_t::default();
    assert_eq!(
        unsafe { nvmlDeviceGetGpuFabricInfo(handle(0), &mut v1) },
        NVML_SUCCESS
    );
    assert_eq!((v1.clusterUuid, v1.cliqueId), (uuid, 32766));
    let mut bad = nvmlGpuFabricInfo_v3_t {
        version: 7,
        ..Default::default()
    };
    assert_eq!(
        unsafe { nvmlDeviceGetGpuFabricInfoV(handle(0), &mut bad) },
        NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    );
    // A degraded fabric: registered, with problems in the mask.
    let degraded = fabric_v3(handle(2)).unwrap();
    assert_eq!(degraded.state, NVML_GPU_FABRIC_STATE_COMPLETED);
    assert_eq!(degraded.healthMask, FABRIC_DEGRADED_MASK);
    assert_eq!(
        degraded.healthSummary,
        NVML_GPU_FABRIC_HEALTH_SUMMARY_LIMITED_CAPACITY
    );
    // Hopper in no fabric: state NOT_SUPPORTED; Ampere and MIG handles: the call is.
    assert_eq!(
        fabric_v3(handle(3)).unwrap().state,
        NVML_GPU_FABRIC_STATE_NOT_SUPPORTED
    );
    assert_eq!(fabric_v3(handle(4)), Err(NVML_ERROR_NOT_SUPPORTED));
    shutdown();
}

#[test]
fn a_fabric_not_ready_completes_later() {
    let _g = lock();
    init(
        "fabric-later",
        &TRAY.replace("\"fabric\"", "\"fabric-later\""),
    );
    let first = fabric_v3(handle(1)).unwrap();
    // Registration in progress: no cluster or clique yet.
    assert_eq!(first.state, NVML_GPU_FABRIC_STATE_IN_PROGRESS);
    assert_eq!((first.clusterUuid, first.cliqueId), ([0; 16], 0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let now = fabric_v3(handle(1)).unwrap();
        if now.state != NVML_GPU_FABRIC_STATE_IN_PROGRESS {
            break now;
        }
        assert!(Instant::now() < deadline, "the fabric never completed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(done.state, NVML_GPU_FABRIC_STATE_COMPLETED);
    assert_eq!(done.cliqueId, 32766);
    assert_eq!(done.healthMask, FABRIC_HEALTHY_MASK);
    shutdown();
}

#[test]
fn nvlink_links_of_each_model() {
    let _g = lock();
    init(
        "nvlink",
        r#"
name = "nvlink"
[[gpus]]
model = "gb200"
[[gpus]]
model = "l4"
[[gpus]]
model = "h100-sxm5-80gb"
nvlink_links = 4
nvlink_speed_mbps = 1000
nvlink_version = "3.1"
"#,
    );
    let (gb200, l4, custom) = (handle(0), handle(1), handle(2));
    let mut v: c_uint = 9;
    assert_eq!(
        unsafe { nvmlDeviceGetNvLinkState(gb200, 17, &mut v) },
        NVML_SUCCESS
    );
    assert_eq!(v, NVML_FEATURE_ENABLED);
    // Past the GPU's links, past NVML's, and a GPU without NVLink.
    for (h, link, want) in [
        (gb200, 18, NVML_ERROR_NOT_SUPPORTED),
        (gb200, NVML_NVLINK_MAX_LINKS, NVML_ERROR_INVALID_ARGUMENT),
        (l4, 0, NVML_ERROR_NOT_SUPPORTED),
    ] {
        let got = unsafe { nvmlDeviceGetNvLinkState(h, link, &mut v) };
        assert_eq!(got, want, "link {link}");
    }
    for (h, link, want) in [
        (gb200, 0, NVML_NVLINK_VERSION_5_0),
        (custom, 3, NVML_NVLINK_VERSION_3_1),
    ] {
        let got = unsafe { nvmlDeviceGetNvLinkVersion(h, link, &mut v) };
        assert_eq!((got, v), (NVML_SUCCESS, want));
    }
    for (cap, want) in [
        (NVML_NVLINK_CAP_P2P_SUPPORTED, 1),
        (NVML_NVLINK_CAP_SYSMEM_ACCESS, 0),
        (NVML_NVLINK_CAP_VALID, 1),
    ] {
        assert_eq!(
            unsafe { nvmlDeviceGetNvLinkCapability(gb200, 0, cap, &mut v) },
            NVML_SUCCESS
        );
        assert_eq!(v, want, "capability {cap}");
    }
    assert_eq!(
        unsafe { nvmlDeviceGetNvLinkCapability(gb200, 0, NVML_NVLINK_CAP_COUNT, &mut v) },
        NVML_ERROR_INVALID_ARGUMENT
    );
    // Fields: link count, common speed, and per link (scopeId = link).
    let mut f = [
        nvmlFieldValue_t::request(NVML_FI_DEV_NVLINK_LINK_COUNT),
        nvmlFieldValue_t::request(NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON),
        nvmlFieldValue_t::request(NVML_FI_DEV_NVLINK_GET_STATE),
        nvmlFieldValue_t::request(NVML_FI_DEV_NVLINK_GET_SPEED),
    ];
    f[3].scopeId = 40;
    for (h, want) in [
        (gb200, [Some(18), Some(50000), Some(1), None]),
        (custom, [Some(4), Some(1000), Some(1), None]),
        (l4, [None, None, None, None]),
    ] {
        assert_eq!(
            unsafe { nvmlDeviceGetFieldValues(h, 4, f.as_mut_ptr()) },
            NVML_SUCCESS
        );
        let got: Vec<Option<i64>> = f.iter().map(|v| v.as_i64()).collect();
        assert_eq!(got, want.map(|w| w.map(i64::from)).to_vec());
    }
    shutdown();
}

#[test]
fn fabric_keys_are_checked() {
    refused(
        "[[gpus]]\nmodel = \"a100-sxm4-80gb\"\n[gpus.fabric]\nclique = 3\n",
        "gpus[0].fabric: NVML reports an NVLink fabric from Hopper on",
    );
    refused(
        "[[gpus]]\nmodel = \"gb200\"\n[gpus.fabric]\ncluster_uuid = \"nope\"\n",
        "gpus[0].fabric.cluster_uuid",
    );
    refused(
        "[[gpus]]\nmodel = \"h100-sxm5-80gb\"\n[[faults]]\nkind = \"fabric_not_ready\"\ngpu = 0\n",
        "GPU 0 (NVIDIA H100 80GB HBM3) is in no NVLink fabric",
    );
    refused(
        "[[gpus]]\nmodel = \"gb200\"\n[[faults]]\nkind = \"fabric_not_ready\"\nstate = \"done\"\n",
        "faults[0].state",
    );
    refused(
        "[[gpus]]\nmodel = \"gb200\"\n[[faults]]\nkind = \"fabric_not_ready\"\nhealth_mask = 1\n",
        "faults[0].health_mask: does not apply",
    );
    refused(
        "[[gpus]]\nmodel = \"gb200\"\nnvlink_version = \"9.9\"\n",
        "gpus[0].nvlink_version",
    );
    refused(
        "[[gpus]]\nmodel = \"gb200\"\nnvlink_links = 99\n",
        "gpus[0].nvlink_links",
    );
    refused(
        "[[gpus]]\nmodel = \"gb200\"\nstats.gpm_bogus = 1\n",
        "gpm_graphics_util",
    );
    // A GB200 without a fabric table still has one; `enabled = false` takes it away.
    let s = Sim::from_toml("x", "name = \"t\"\n[[gpus]]\nmodel = \"gb200\"\n").unwrap();
    assert!(s.fabric_now(0).is_some());
    let s = Sim::from_toml(
        "x",
        "name = \"t\"\n[[gpus]]\nmodel = \"gb200\"\n[gpus.fabric]\nenabled = false\n",
    )
    .unwrap();
    assert!(s.fabric_now(0).is_none());
}
