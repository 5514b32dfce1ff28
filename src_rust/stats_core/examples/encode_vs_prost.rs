//! Encode cost per device: the hand-written StatsResponse encoder against
//! prost (derive) encoding the same message. No NVML: the samples are made up.
//!
//!   cargo run --release -p stats-core --example encode_vs_prost -- [DEVICES] [TICKS]
//!
//! prost is measured two ways: the message built from the samples every tick
//! (what an engine on prost would do) and a prebuilt message whose values are
//! updated in place (prost's best case). Both outputs are checked to decode to
//! the same message as the hand-written bytes.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use prost::Message;
use stats_core::encode::*;
use stats_core::vocabulary::*;
use stats_core::{DeviceSample, Extended, Reading};

#[derive(Clone, PartialEq, Message)]
struct StatsResponse {
    #[prost(message, repeated, tag = "1")]
    groups: Vec<DeviceGroupStats>,
}

#[derive(Clone, PartialEq, Message)]
struct DeviceGroupStats {
    #[prost(string, tag = "1")]
    vendor: String,
    #[prost(string, tag = "2")]
    r#type: String,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(map = "string, message", tag = "4")]
    instance_stats: HashMap<String, DeviceStats>,
}

#[derive(Clone, PartialEq, Message)]
struct DeviceStats {
    #[prost(message, optional, tag = "1")]
    summary: Option<StatValue>,
    #[prost(message, optional, tag = "2")]
    stats: Option<StatObject>,
    #[prost(message, optional, tag = "3")]
    timestamp: Option<ProtoTimestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct StatObject {
    #[prost(map = "string, message", tag = "1")]
    nested: HashMap<String, StatObject>,
    #[prost(map = "string, message", tag = "2")]
    attributes: HashMap<String, StatValue>,
}

// Wrappers (DoubleValue, Int64Value, StringValue) are prost's impls for f64,
// i64 and String.
#[derive(Clone, PartialEq, Message)]
struct StatValue {
    #[prost(message, optional, tag = "1")]
    float_numerator_val: Option<f64>,
    #[prost(message, optional, tag = "3")]
    int_numerator_val: Option<i64>,
    #[prost(message, optional, tag = "4")]
    int_denominator_val: Option<i64>,
    #[prost(message, optional, tag = "5")]
    string_val: Option<String>,
    #[prost(string, tag = "7")]
    unit: String,
    #[prost(string, tag = "8")]
    desc: String,
}

#[derive(Clone, PartialEq, Message)]
struct ProtoTimestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn value(spec: &AttrSpec, r: Reading) -> StatValue {
    let (n, d, s) = match r {
        Reading::NotAvailable => (None, None, Some(NOT_AVAILABLE.to_string())),
        Reading::Int(n) => (Some(n), None, None),
        Reading::Ratio(n, d) => (Some(n), Some(d), None),
        Reading::Float(_) => (None, None, None),
    };
    StatValue {
        float_numerator_val: match r {
            Reading::Float(f) => Some(f),
            _ => None,
        },
        int_numerator_val: n,
        int_denominator_val: d,
        string_val: s,
        unit: spec.unit.to_string(),
        desc: spec.desc.to_string(),
    }
}

fn standard(s: &DeviceSample) -> Vec<(&'static AttrSpec, Reading)> {
    STANDARD.iter().copied().zip(standard_readings(s)).collect()
}

type Topic = (&'static str, Vec<(&'static AttrSpec, Reading)>);

fn nested(x: &Extended) -> Vec<Topic> {
    let mut topics: Vec<Topic> = EXTENDED
        .iter()
        .zip(extended_readings(x))
        .map(|((name, stats), readings)| (*name, stats.iter().copied().zip(readings).collect()))
        .collect();
    if let Some(g) = x.gpm {
        topics.push((GPM, GPM_STATS.iter().copied().zip(g).collect()));
    }
    topics
}

fn device_stats(s: &DeviceSample, ts: Timestamp) -> DeviceStats {
    let attrs = |list: &[(&AttrSpec, Reading)]| -> HashMap<String, StatValue> {
        list.iter()
            .map(|(a, r)| (a.name.to_string(), value(a, *r)))
            .collect()
    };
    let nested = s.extended.map_or_else(HashMap::new, |x| {
        nested(&x)
            .iter()
            .map(|(k, list)| {
                let obj = StatObject {
                    nested: HashMap::new(),
                    attributes: attrs(list),
                };
                (k.to_string(), obj)
            })
            .collect()
    });
    DeviceStats {
        summary: Some(value(STANDARD[SUMMARY], s.memory_mib)),
        stats: Some(StatObject {
            nested,
            attributes: attrs(&standard(s)),
        }),
        timestamp: Some(ProtoTimestamp {
            seconds: ts.seconds,
            nanos: ts.nanos,
        }),
    }
}

fn build(group: &str, devices: &[(String, DeviceSample)], ts: Timestamp) -> StatsResponse {
    StatsResponse {
        groups: vec![DeviceGroupStats {
            vendor: VENDOR.into(),
            r#type: DEVICE_TYPE.into(),
            name: group.into(),
            instance_stats: devices
                .iter()
                .map(|(id, s)| (id.clone(), device_stats(s, ts)))
                .collect(),
        }],
    }
}

/// Prost's best case: the tree kept, values overwritten in place.
fn update(resp: &mut StatsResponse, devices: &[(String, DeviceSample)], ts: Timestamp) {
    let g = &mut resp.groups[0];
    for (id, s) in devices {
        let ds = g.instance_stats.get_mut(id).expect("device");
        let obj = ds.stats.as_mut().expect("stats");
        for (a, r) in standard(s) {
            *obj.attributes.get_mut(a.name).expect("attr") = value(a, r);
        }
        if let Some(x) = &s.extended {
            for (k, list) in nested(x) {
                let n = obj.nested.get_mut(k).expect("topic");
                for (a, r) in list {
                    *n.attributes.get_mut(a.name).expect("attr") = value(a, r);
                }
            }
        }
        ds.summary = Some(value(&MEMORY, s.memory_mib));
        ds.timestamp = Some(ProtoTimestamp {
            seconds: ts.seconds,
            nanos: ts.nanos,
        });
    }
}

fn sample(i: i64, extended: bool) -> DeviceSample {
    let mut s = DeviceSample::unavailable(extended);
    s.power_w = Reading::Ratio(100 + i % 500, 700);
    s.gpu_utilization = Reading::Int(i % 101);
    s.memory_utilization = Reading::Int((i * 7) % 101);
    s.encoder_utilization = Reading::Int(0);
    s.temperature_c = Reading::Int(30 + i % 50);
    s.memory_mib = Reading::Ratio(i * 13 % 81559, 81559);
    s.bar1_mib = Reading::Ratio(2, 131072);
    s.ecc_l1 = Reading::Int(i % 3);
    s.ecc_l2 = Reading::Int(0);
    if let Some(x) = s.extended.as_mut() {
        x.sm_clock_mhz = Reading::Int(1980);
        x.memory_clock_mhz = Reading::Int(2619);
        x.energy_mj = Reading::Int(123_456_789 + i);
        x.pcie_tx_kbps = Reading::Int(1000 + i);
        x.throttle_reasons = Reading::Int(0);
        x.xid_count = Reading::Int(i % 2);
        // Half the devices have GPM (Hopper and later).
        if i % 2 == 0 {
            let mut g = [Reading::Float((i % 10_000) as f64 / 100.0); 9];
            g[5..].fill(Reading::Int(1258 + i));
            g[8] = Reading::NotAvailable;
            x.gpm = Some(g);
        }
    }
    s
}

fn per_device_ns(ticks: usize, n: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: buffers and tables
    let t = Instant::now();
    for _ in 0..ticks {
        f();
    }
    t.elapsed().as_nanos() as f64 / (ticks * n) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(512, |s| s.parse().expect("DEVICES"));
    let ticks: usize = args.get(2).map_or(2000, |s| s.parse().expect("TICKS"));
    let group = "NVIDIA H100 80GB HBM3";
    let ts = Timestamp {
        seconds: 1_700_000_000,
        nanos: 123_456_789,
    };
    for extended in [false, true] {
        let devices: Vec<(String, DeviceSample)> = (0..n as i64)
            .map(|i| {
                let id = format!("GPU-{i:08x}-0000-0000-0000-000000000000");
                (id, sample(i, extended))
            })
            .collect();
        let view = [GroupView {
            name: group,
            devices: devices.iter().map(|(id, s)| (id.as_str(), s)).collect(),
        }];

        let mut hand = Vec::new();
        encode_stats_response(&mut hand, &view, ts);
        let reference = StatsResponse::decode(hand.as_slice()).expect("hand-written bytes decode");
        assert_eq!(
            build(group, &devices, ts),
            reference,
            "prost message differs"
        );
        let mut kept = build(group, &devices, ts);
        update(&mut kept, &devices, ts);
        assert_eq!(kept, reference);

        let hand_ns = per_device_ns(ticks, n, || {
            encode_stats_response(&mut hand, black_box(&view), ts);
            black_box(&hand);
        });
        let mut out = Vec::new();
        let built_ns = per_device_ns(ticks, n, || {
            out.clear();
            build(group, black_box(&devices), ts)
                .encode(&mut out)
                .expect("encode");
            black_box(&out);
        });
        let kept_ns = per_device_ns(ticks, n, || {
            out.clear();
            update(&mut kept, black_box(&devices), ts);
            kept.encode(&mut out).expect("encode");
            black_box(&out);
        });
        println!(
            "devices={n} extended={extended} bytes={}: hand-written {hand_ns:.0} ns/device; \
             prost built per tick {built_ns:.0} ns/device ({:.1}x); \
             prost kept + updated {kept_ns:.0} ns/device ({:.1}x)",
            hand.len(),
            built_ns / hand_ns,
            kept_ns / hand_ns,
        );
    }
}
