//! The encoder's bytes for fixed samples, against a file written by the
//! encoder as it was before the vocabulary and the wire tags were generated
//! (src_rust/stats_core/build.rs): any change to a name, unit, description,
//! order or field number shows here. `STATS_CORE_WRITE_GOLDEN=1` rewrites the
//! file, for a change made on purpose.

use stats_core::encode::{encode_stats_response, GroupView, Timestamp};
use stats_core::{DeviceSample, Extended, Reading};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/stats_response.golden"
);

fn full() -> DeviceSample {
    let mut gpm = [Reading::NotAvailable; 9];
    for (k, g) in gpm.iter_mut().enumerate() {
        *g = if k < 5 {
            Reading::Float(12.25 * k as f64)
        } else {
            Reading::Int(1258 * k as i64)
        };
    }
    DeviceSample {
        power_w: Reading::Ratio(123, 700),
        gpu_utilization: Reading::Int(87),
        memory_utilization: Reading::Int(0),
        encoder_utilization: Reading::Int(3),
        decoder_utilization: Reading::NotAvailable,
        temperature_c: Reading::Int(61),
        memory_mib: Reading::Ratio(1 << 20, 81559),
        bar1_mib: Reading::Ratio(2, 131072),
        ecc_l1: Reading::Int(1),
        ecc_l2: Reading::Int(i64::MAX),
        ecc_device: Reading::Int(-1),
        extended: Some(Extended {
            sm_clock_mhz: Reading::Int(1980),
            memory_clock_mhz: Reading::Int(2619),
            energy_mj: Reading::Int(123_456_789_012),
            pcie_tx_kbps: Reading::Int(4096),
            pcie_rx_kbps: Reading::NotAvailable,
            throttle_reasons: Reading::Int(0x24),
            xid_count: Reading::Int(2),
            gpm: Some(gpm),
        }),
    }
}

#[test]
fn encoded_bytes_match_the_golden_file() {
    let full = full();
    let mut no_gpm = full;
    no_gpm.extended.as_mut().unwrap().gpm = None;
    let plain = DeviceSample::unavailable(false);
    let na = DeviceSample::unavailable(true);
    let groups = [
        GroupView {
            name: "NVIDIA H100 80GB HBM3",
            devices: vec![("GPU-a", &full), ("GPU-b", &no_gpm), ("GPU-c", &na)],
        },
        GroupView {
            name: "NVIDIA L4",
            devices: vec![("GPU-d", &plain)],
        },
        GroupView {
            name: "",
            devices: vec![],
        },
    ];
    let mut buf = Vec::new();
    for (i, ts) in [
        Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        },
        Timestamp::default(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut one = Vec::new();
        encode_stats_response(&mut one, &groups[i..], ts);
        buf.extend_from_slice(&(one.len() as u32).to_le_bytes());
        buf.extend_from_slice(&one);
    }
    if std::env::var_os("STATS_CORE_WRITE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &buf).unwrap();
    }
    let want = std::fs::read(GOLDEN).expect("the golden file");
    assert_eq!(buf.len(), want.len(), "encoded length changed");
    assert!(buf == want, "encoded bytes changed");
}
