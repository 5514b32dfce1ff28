//! Many threads calling the library at once: every call succeeds, every answer is the
//! one a single thread gets, and init/shutdown pairs racing with queries are safe.

use std::ffi::CStr;
use std::os::raw::c_char;

use nvml_sim::api::*;
use nvml_sys::*;

mod common;
use common::xid_set;

fn uuid(h: nvmlDevice_t) -> String {
    let mut buf = [0 as c_char; NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    assert_eq!(
        unsafe { nvmlDeviceGetUUID(h, buf.as_mut_ptr(), buf.len() as u32) },
        NVML_SUCCESS
    );
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn hammer_from_many_threads() {
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scenarios/8xh100-mig.toml"
    );
    std::env::set_var("NVML_SIM_SCENARIO", scenario);
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
    let mut count = 0;
    assert_eq!(unsafe { nvmlDeviceGetCount_v2(&mut count) }, NVML_SUCCESS);
    assert_eq!(count, 8);
    let expected: Vec<String> = (0..count)
        .map(|i| {
            let mut h = std::ptr::null_mut();
            assert_eq!(
                unsafe { nvmlDeviceGetHandleByIndex_v2(i, &mut h) },
                NVML_SUCCESS
            );
            uuid(h)
        })
        .collect();

    std::thread::scope(|s| {
        for t in 0..16u32 {
            let expected = &expected;
            s.spawn(move || unsafe {
                for n in 0..2_000u32 {
                    let i = (t + n) % 8;
                    let mut h = std::ptr::null_mut();
                    assert_eq!(nvmlDeviceGetHandleByIndex_v2(i, &mut h), NVML_SUCCESS);
                    assert_eq!(uuid(h), expected[i as usize]);
                    let mut p = 0;
                    assert_eq!(nvmlDeviceGetPowerUsage(h, &mut p), NVML_SUCCESS);
                    assert!(p <= 700_000);
                    let mut mem = nvmlMemory_v2_t {
                        version: nvmlMemory_v2,
                        ..Default::default()
                    };
                    assert_eq!(nvmlDeviceGetMemoryInfo_v2(h, &mut mem), NVML_SUCCESS);
                    assert_eq!(mem.reserved + mem.used + mem.free, mem.total);
                    let mut fv: [nvmlFieldValue_t; 2] = std::mem::zeroed();
                    fv[0].fieldId = NVML_FI_DEV_POWER_INSTANT;
                    fv[1].fieldId = NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION;
                    assert_eq!(
                        nvmlDeviceGetFieldValues(h, 2, fv.as_mut_ptr()),
                        NVML_SUCCESS
                    );
                    assert_eq!(fv[0].nvmlReturn, NVML_SUCCESS);
                    if i >= 6 {
                        let mut m = std::ptr::null_mut();
                        assert_eq!(
                            nvmlDeviceGetMigDeviceHandleByIndex(h, n % 4, &mut m),
                            NVML_SUCCESS
                        );
                        let mut parent = std::ptr::null_mut();
                        assert_eq!(
                            nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m, &mut parent),
                            NVML_SUCCESS
                        );
                        assert_eq!(parent, h);
                        let mut by_uuid = std::ptr::null_mut();
                        let u = std::ffi::CString::new(uuid(m)).unwrap();
                        assert_eq!(
                            nvmlDeviceGetHandleByUUID(u.as_ptr(), &mut by_uuid),
                            NVML_SUCCESS
                        );
                        assert_eq!(by_uuid, m);
                    }
                    if n % 100 == 0 {
                        // Refcounted: the main thread's init keeps the machine up.
                        assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
                        assert_eq!(nvmlEventSetFree(xid_set(&[h])), NVML_SUCCESS);
                        assert_eq!(nvmlShutdown(), NVML_SUCCESS);
                    }
                }
            });
        }
    });
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    let mut c = 0;
    assert_eq!(
        unsafe { nvmlDeviceGetCount_v2(&mut c) },
        NVML_ERROR_UNINITIALIZED
    );
}
