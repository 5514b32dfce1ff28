//! GPM stats in the engine against the simulated driver (build/sim, `make
//! sim`): the first tick has no interval yet ("N/A"), later ticks carry the
//! scenario's values for GPUs and MIG instances alike, a GPU without GPM
//! sends nothing extra, and a GPU whose GPM reads fail keeps its GPM stats as
//! "N/A".

mod common;

use std::ffi::CStr;
use std::os::raw::{c_char, c_uint};
use std::path::PathBuf;
use std::sync::Arc;

use nvml_sys::*;
use stats_core::{Engine, EngineConfig, GpmReadings, Reading, TrackedDevice};

const SCENARIO: &str = r#"name = "stats-core-gpm"
[[gpus]]
model = "gb200"
stats.gpm_graphics_util = 87.5
stats.gpm_sm_util = 33.333333
stats.gpm_sm_occupancy = 41
stats.gpm_tensor_util = 63.75
stats.gpm_dram_bw_util = 55.5
stats.gpm_pcie_tx_mibps = 1200
stats.gpm_pcie_rx_mibps = 3400
stats.gpm_nvlink_tx_mibps = 250000
stats.gpm_nvlink_rx_mibps = 245000
[[gpus]]
model = "a100-sxm4-80gb"
[[gpus]]
model = "gb200"
mig = ["3g.93gb", "1g.23gb"]
mig_stats.gpm_graphics_util = { kind = "counter", value = 10, step = 1 }
mig_stats.gpm_pcie_tx_mibps = 0
[[gpus]]
model = "h100-sxm5-80gb"
[[faults]]
kind = "not_supported"
gpu = 3
function = "nvmlGpmSampleGet"
"#;

/// The MIG devices' UUIDs of GPU `index`, through the same library.
fn mig_uuids(index: c_uint) -> Vec<String> {
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../build/sim/libnvidia-ml.so.1");
    // SAFETY: the simulator's exports, with nvml.h's signatures; NVML is
    // initialised by the test's Nvml (the same loaded library).
    unsafe {
        let lib = libloading::Library::new(lib).unwrap();
        let by_index: libloading::Symbol<nvmlDeviceGetHandleByIndex_v2_fn> =
            lib.get(b"nvmlDeviceGetHandleByIndex_v2\0").unwrap();
        let mig_at: libloading::Symbol<nvmlDeviceGetMigDeviceHandleByIndex_fn> =
            lib.get(b"nvmlDeviceGetMigDeviceHandleByIndex\0").unwrap();
        let uuid: libloading::Symbol<nvmlDeviceGetString_fn> =
            lib.get(b"nvmlDeviceGetUUID\0").unwrap();
        let mut gpu = std::ptr::null_mut();
        assert_eq!(by_index(index, &mut gpu), NVML_SUCCESS);
        let mut out = Vec::new();
        for j in 0.. {
            let mut mig = std::ptr::null_mut();
            if mig_at(gpu, j, &mut mig) != NVML_SUCCESS {
                break;
            }
            let mut buf = [0 as c_char; 96];
            assert_eq!(uuid(mig, buf.as_mut_ptr(), 96), NVML_SUCCESS);
            out.push(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned());
        }
        out
    }
}

fn gpm_of(engine: &mut Engine, ids: &[String]) -> Vec<Option<GpmReadings>> {
    let samples = engine.read_all();
    // One group: samples are in device ID order.
    let mut sorted = ids.to_vec();
    sorted.sort();
    ids.iter()
        .map(|u| {
            let i = sorted.iter().position(|s| s == u).unwrap();
            samples[i].extended.expect("extended stats").gpm
        })
        .collect()
}

#[test]
fn gpm_stats_for_gpus_and_mig_instances() {
    let (dir, nvml, gpus) = common::open("gpm", SCENARIO);
    let migs = mig_uuids(2);
    assert_eq!((gpus.len(), migs.len()), (4, 2));
    // GPU 2 is in MIG mode: its instances are tracked, not the GPU.
    let ids = vec![
        gpus[0].clone(),
        gpus[1].clone(),
        migs[0].clone(),
        migs[1].clone(),
        gpus[3].clone(),
    ];
    let devices: Vec<TrackedDevice> = common::tracked(&ids, "G");
    let mut engine = Engine::new(
        Arc::clone(&nvml),
        EngineConfig {
            extended: true,
            ..EngineConfig::default()
        },
    );
    engine.track(devices.clone());
    let na = [Reading::NotAvailable; 9];

    // First tick: one sample each, no interval yet.
    let first = gpm_of(&mut engine, &ids);
    assert_eq!(first, vec![Some(na), None, Some(na), Some(na), Some(na)]);

    let gpu_values = [
        Reading::Float(87.5),
        Reading::Float(33.33),
        Reading::Float(41.0),
        Reading::Float(63.75),
        Reading::Float(55.5),
        Reading::Int(1258),   // 1200 MiB/s
        Reading::Int(3565),   // 3400 MiB/s
        Reading::Int(262144), // 250000 MiB/s
        Reading::Int(256901), // 245000 MiB/s
    ];
    for tick in 0..3u32 {
        // nvml.h: GPM samples more than 100 ms apart; the engine takes none sooner.
        std::thread::sleep(stats_core::gpm::MIN_INTERVAL + std::time::Duration::from_millis(50));
        let got = gpm_of(&mut engine, &ids);
        assert_eq!(got[0], Some(gpu_values), "tick {tick}");
        assert_eq!(got[1], None, "A100: no GPM");
        for mig in &got[2..4] {
            let g = mig.expect("MIG instances have GPM");
            // The counter at the later sample's number: 10 + samples taken.
            assert_eq!(g[0], Reading::Float(f64::from(10 + tick + 2)));
            assert_eq!(g[5], Reading::Int(0));
            assert!(matches!(g[1], Reading::Float(_)));
        }
        assert_eq!(got[4], Some(na), "sampling fails: N/A, still sent");
    }

    // Without extended stats nothing of this is read.
    let mut plain = Engine::new(Arc::clone(&nvml), EngineConfig::default());
    plain.track(devices);
    assert!(plain.read_all().iter().all(|s| s.extended.is_none()));

    // Encoded: the GPM object and its names are in the bytes of GPM devices.
    let bytes = engine.collect().to_vec();
    let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(count(b"Tensor activity"), 4);
    assert_eq!(count(b"DRAM bandwidth utilization"), 4);
    drop(engine);
    drop(plain);
    let _ = std::fs::remove_dir_all(&dir);
}
