//! Splits a tick's CPU cost into the NVML calls themselves and the engine's
//! own work (pool, encoding). Run against the simulated driver:
//!
//!   NVML_SIM_SCENARIO=benches/scenarios/bench-zero.toml \
//!   cargo run --release -p stats-core --example tick_cost -- build/sim/libnvidia-ml.so.1 512

use std::os::raw::c_int;
use std::sync::Arc;
use std::time::Instant;

use stats_core::{Engine, EngineConfig, Nvml, ReadOptions, TrackedDevice};

fn cpu_time() -> f64 {
    let mut ts = libc_timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall wrapper with a valid out pointer.
    unsafe {
        clock_gettime(2 /* CLOCK_PROCESS_CPUTIME_ID */, &mut ts)
    };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[repr(C)]
struct libc_timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clk: c_int, ts: *mut libc_timespec) -> c_int;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lib_path = args.get(1).expect("usage: tick_cost LIB [DEVICES] [TICKS]");
    let n: usize = args.get(2).map_or(512, |s| s.parse().unwrap());
    let ticks: usize = args.get(3).map_or(200, |s| s.parse().unwrap());

    let nvml = Arc::new(Nvml::open(lib_path).expect("open NVML"));
    // The last `n` GPUs, whole (no MIG instances).
    let devices: Vec<TrackedDevice> = nvml
        .gpu_uuids()
        .expect("enumerate GPUs")
        .into_iter()
        .rev()
        .take(n)
        .map(|uuid| TrackedDevice {
            device_id: uuid.clone(),
            uuid,
            group: "NVIDIA H100 80GB HBM3".into(),
            gpu: String::new(),
        })
        .collect();
    let handles: Vec<_> = devices
        .iter()
        .map(|d| nvml.handle_by_uuid(&d.uuid).unwrap())
        .collect();
    let opts = ReadOptions {
        extended: false,
        batched: true,
    };

    let (c0, w0) = (cpu_time(), Instant::now());
    for _ in 0..ticks {
        for h in &handles {
            std::hint::black_box(nvml.read_device(*h, opts));
        }
    }
    let reads = (cpu_time() - c0) / (ticks * n) as f64 * 1e6;
    let reads_wall = w0.elapsed().as_secs_f64() / (ticks * n) as f64 * 1e6;

    let samples: Vec<_> = handles.iter().map(|h| nvml.read_device(*h, opts)).collect();
    let groups = [stats_core::encode::GroupView {
        name: "NVIDIA H100 80GB HBM3",
        devices: devices
            .iter()
            .zip(&samples)
            .map(|(d, s)| (d.device_id.as_str(), s))
            .collect(),
    }];
    let mut buf = Vec::new();
    let c0 = cpu_time();
    for _ in 0..ticks {
        stats_core::encode::encode_stats_response(
            &mut buf,
            &groups,
            stats_core::encode::Timestamp::now(),
        );
    }
    println!(
        "encode only: {:.3} us CPU/device",
        (cpu_time() - c0) / (ticks * n) as f64 * 1e6
    );

    for batched in [true, false, true] {
        let mut engine = Engine::new(
            Arc::clone(&nvml),
            EngineConfig {
                batched,
                ..EngineConfig::default()
            },
        );
        engine.track(devices.clone());
        engine.collect();
        let (c0, w0) = (cpu_time(), Instant::now());
        let mut bytes = 0;
        for _ in 0..ticks {
            bytes = engine.collect().len();
        }
        let tick = (cpu_time() - c0) / (ticks * n) as f64 * 1e6;
        let wall = w0.elapsed().as_secs_f64() / ticks as f64 * 1e3;
        println!(
            "devices={n} batched={batched}: serial NVML reads {reads:.2} us CPU/device ({reads_wall:.2} wall); \
             full tick {tick:.2} us CPU/device, {wall:.3} ms/tick, {bytes} bytes; engine's own {:.2} us/device",
            tick - reads
        );
    }
}
