//! The cost of one simulated NVML call, in nanoseconds (a measurement, not a test):
//!   NVML_SIM_SCENARIO=scenarios/8xh100-mig.toml cargo run --release -p nvml-sim --example call_cost
use std::time::Instant;

use nvml_sim::api::*;
use nvml_sys::*;

fn time(label: &str, n: u32, mut f: impl FnMut(u32)) {
    for i in 0..n / 10 {
        f(i); // warm up
    }
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{label:<40} {ns:8.1} ns/call");
}

fn main() {
    if std::env::var_os("NVML_SIM_SCENARIO").is_none() {
        std::env::set_var(
            "NVML_SIM_SCENARIO",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scenarios/8xh100-mig.toml"
            ),
        );
    }
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS, "nvmlInit failed");
    let mut count = 0;
    unsafe { nvmlDeviceGetCount_v2(&mut count) };
    let handles: Vec<nvmlDevice_t> = (0..count)
        .map(|i| {
            let mut h = std::ptr::null_mut();
            unsafe { nvmlDeviceGetHandleByIndex_v2(i, &mut h) };
            h
        })
        .collect();
    let n = 2_000_000;
    let h = |i: u32| handles[(i % count) as usize];
    time("nvmlDeviceGetPowerUsage", n, |i| {
        let mut p = 0;
        assert_eq!(
            unsafe { nvmlDeviceGetPowerUsage(h(i), &mut p) },
            NVML_SUCCESS
        );
    });
    time("nvmlDeviceGetUtilizationRates", n, |i| {
        let mut u = nvmlUtilization_t::default();
        assert_eq!(
            unsafe { nvmlDeviceGetUtilizationRates(h(i), &mut u) },
            NVML_SUCCESS
        );
    });
    time("nvmlDeviceGetMemoryInfo_v2", n, |i| {
        let mut m = nvmlMemory_v2_t {
            version: nvmlMemory_v2,
            ..Default::default()
        };
        assert_eq!(
            unsafe { nvmlDeviceGetMemoryInfo_v2(h(i), &mut m) },
            NVML_SUCCESS
        );
    });
    time("nvmlDeviceGetUUID", n, |i| {
        let mut buf = [0; 96];
        assert_eq!(
            unsafe { nvmlDeviceGetUUID(h(i), buf.as_mut_ptr(), 96) },
            NVML_SUCCESS
        );
    });
    time("nvmlDeviceGetFieldValues (4 fields)", n / 4, |i| {
        let mut fv: [nvmlFieldValue_t; 4] = unsafe { std::mem::zeroed() };
        for (f, id) in fv.iter_mut().zip([186, 83, 3, 4]) {
            f.fieldId = id;
        }
        assert_eq!(
            unsafe { nvmlDeviceGetFieldValues(h(i), 4, fv.as_mut_ptr()) },
            NVML_SUCCESS
        );
    });
    // GPM: a sample per device and the 9 metrics the plugin reads between two.
    let samples: Vec<[nvml_sys::nvmlGpmSample_t; 2]> = handles
        .iter()
        .map(|&d| {
            let mut s = [std::ptr::null_mut(); 2];
            for x in &mut s {
                unsafe {
                    nvml_sim::gpm::nvmlGpmSampleAlloc(x);
                    nvml_sim::gpm::nvmlGpmSampleGet(d, *x);
                }
            }
            s
        })
        .collect();
    time("nvmlGpmSampleGet", n / 4, |i| {
        let k = (i % count) as usize;
        assert_eq!(
            unsafe { nvml_sim::gpm::nvmlGpmSampleGet(h(i), samples[k][1]) },
            NVML_SUCCESS
        );
    });
    let mut get: Box<nvmlGpmMetricsGet_t> = Box::new(unsafe { std::mem::zeroed() });
    time("nvmlGpmMetricsGet (9 metrics)", n / 4, |i| {
        let k = (i % count) as usize;
        get.version = NVML_GPM_METRICS_GET_VERSION;
        get.numMetrics = 9;
        get.sample1 = samples[k][0];
        get.sample2 = samples[k][1];
        for (m, id) in get.metrics.iter_mut().zip([1, 2, 3, 5, 10, 20, 21, 60, 61]) {
            *m = nvmlGpmMetric_t::request(id);
        }
        assert_eq!(
            unsafe { nvml_sim::gpm::nvmlGpmMetricsGet(&mut *get) },
            NVML_SUCCESS
        );
    });
    nvmlShutdown();
}
