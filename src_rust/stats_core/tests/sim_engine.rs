//! The engine against the simulated driver (build/sim, `make sim`): values
//! read, a hung GPU bounded by the timeout and reported once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stats_core::{Engine, EngineConfig, Level, Nvml, Reading, TrackedDevice};

fn sim_library() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../build/sim/libnvidia-ml.so.1");
    assert!(
        p.is_file(),
        "{} is missing: run `make sim` first",
        p.display()
    );
    p
}

// UUIDs as the simulator derives them are not known here, so devices are
// found through the raw API the engine itself never needs.
fn uuids(lib: &PathBuf) -> Vec<String> {
    use std::ffi::CStr;
    use std::os::raw::{c_char, c_int, c_uint};
    type Dev = *mut std::ffi::c_void;
    // SAFETY: signatures from nvml.h; NVML is initialised by the caller.
    unsafe {
        let l = libloading::Library::new(lib).unwrap();
        let count: libloading::Symbol<unsafe extern "C" fn(*mut c_uint) -> c_int> =
            l.get(b"nvmlDeviceGetCount_v2\0").unwrap();
        let by_index: libloading::Symbol<unsafe extern "C" fn(c_uint, *mut Dev) -> c_int> =
            l.get(b"nvmlDeviceGetHandleByIndex_v2\0").unwrap();
        let uuid: libloading::Symbol<unsafe extern "C" fn(Dev, *mut c_char, c_uint) -> c_int> =
            l.get(b"nvmlDeviceGetUUID\0").unwrap();
        let mut n = 0;
        assert_eq!(count(&mut n), 0);
        (0..n)
            .map(|i| {
                let mut d: Dev = std::ptr::null_mut();
                assert_eq!(by_index(i, &mut d), 0);
                let mut buf = [0 as c_char; 96];
                assert_eq!(uuid(d, buf.as_mut_ptr(), 96), 0);
                CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
            })
            .collect()
    }
}

#[test]
fn reads_devices_and_bounds_a_hung_one() {
    let lib = sim_library();
    let dir = std::env::temp_dir().join(format!("stats-core-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("hang.toml");
    std::fs::write(
        &scenario,
        r#"name = "stats-core-hang"
[[gpus]]
model = "h100-sxm5-80gb"
count = 3
[[faults]]
kind = "hang"
gpu = 1
function = "nvmlDeviceGetTemperature"
duration_ms = 400
calls = 1
"#,
    )
    .unwrap();
    std::env::set_var("NVML_SIM_SCENARIO", &scenario);
    let nvml = Arc::new(Nvml::open(lib.to_str().unwrap()).expect("NVML on the simulator"));
    let ids = uuids(&lib);
    assert_eq!(ids.len(), 3);
    let mut engine = Engine::new(
        Arc::clone(&nvml),
        EngineConfig {
            timeout: Duration::from_millis(100),
            max_workers: 2,
            ..EngineConfig::default()
        },
    );
    engine.track(
        ids.iter()
            .map(|u| TrackedDevice {
                device_id: u.clone(),
                uuid: u.clone(),
                group: "H100".into(),
            })
            .collect(),
    );
    // Tracked order is by device ID; find the hung GPU's place.
    let mut sorted = ids.clone();
    sorted.sort();
    let hung = sorted.iter().position(|u| *u == ids[1]).unwrap();

    for _ in 0..2 {
        let samples = engine.read_all();
        for (i, s) in samples.iter().enumerate() {
            if i == hung {
                assert_eq!(s.memory_mib, Reading::NotAvailable);
            } else {
                assert!(matches!(s.memory_mib, Reading::Ratio(_, 81559)), "{s:?}");
                assert!(matches!(s.temperature_c, Reading::Int(_)));
            }
        }
    }
    let log = engine.take_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].level, Level::Warning);
    assert!(log[0].message.contains(&ids[1]));

    // The call returns after 400 ms; the device then answers again.
    let mut answered = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        if engine.read_all()[hung].memory_mib != Reading::NotAvailable {
            answered = true;
            break;
        }
    }
    assert!(answered, "the hung GPU never answered again");
    assert!(engine.take_log().iter().any(|e| e.level == Level::Info));
    let bytes = engine.collect().to_vec();
    for u in &ids {
        assert!(bytes.windows(u.len()).any(|w| w == u.as_bytes()));
    }
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
