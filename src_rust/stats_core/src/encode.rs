//! A hand-written encoder for Nomad's StatsResponse (proto/nomad/device.proto
//! and structs.proto). The message shape is fixed, so sizes are computed
//! first and every byte is written once, straight into the output buffer.

use std::sync::OnceLock;

use crate::sample::{DeviceSample, Reading};

/// One stat attribute: its name in the map, unit and description.
#[derive(Debug)]
pub struct AttrSpec {
    pub name: &'static str,
    pub unit: &'static str,
    pub desc: &'static str,
}

const fn spec(name: &'static str, unit: &'static str, desc: &'static str) -> AttrSpec {
    AttrSpec { name, unit, desc }
}

// The Go plugin's vocabulary (names, units, descriptions), byte for byte.
pub const POWER: AttrSpec = spec(
    "Power usage",
    "W",
    "Power usage for this GPU in watts and its associated circuitry (e.g. memory) / Maximum GPU Power",
);
pub const GPU_UTIL: AttrSpec = spec(
    "GPU utilization",
    "%",
    "Percent of time over the past sample period during which one or more kernels were executing on the GPU.",
);
pub const MEM_UTIL: AttrSpec = spec(
    "Memory utilization",
    "%",
    "Percentage of bandwidth used during the past sample period",
);
pub const ENC_UTIL: AttrSpec = spec(
    "Encoder utilization",
    "%",
    "Percent of time over the past sample period during which GPU Encoder was used",
);
pub const DEC_UTIL: AttrSpec = spec(
    "Decoder utilization",
    "%",
    "Percent of time over the past sample period during which GPU Decoder was used",
);
pub const TEMPERATURE: AttrSpec = spec("Temperature", "C", "Temperature of the Unit");
pub const MEMORY: AttrSpec = spec("Memory state", "MiB", "UsedMemory / TotalMemory");
pub const BAR1: AttrSpec = spec("BAR1 buffer state", "MiB", "UsedBAR1 / TotalBAR1");
pub const ECC_L1: AttrSpec = spec(
    "ECC L1 errors",
    "#",
    "Requested L1Cache error counter for the device",
);
pub const ECC_L2: AttrSpec = spec(
    "ECC L2 errors",
    "#",
    "Requested L2Cache error counter for the device",
);
pub const ECC_DEVICE: AttrSpec = spec(
    "ECC memory errors",
    "#",
    "Requested memory error counter for the device",
);

// Extended stats, one nested StatObject per topic.
pub const CLOCKS: &str = "Clocks";
pub const SM_CLOCK: AttrSpec = spec("SM clock", "MHz", "Current SM clock speed");
pub const MEM_CLOCK: AttrSpec = spec("Memory clock", "MHz", "Current memory clock speed");
pub const ENERGY: &str = "Energy";
pub const TOTAL_ENERGY: AttrSpec = spec(
    "Total energy consumption",
    "mJ",
    "Energy consumed by the GPU since the driver was last loaded",
);
pub const PCIE: &str = "PCIe";
pub const PCIE_TX: AttrSpec = spec(
    "PCIe TX throughput",
    "KB/s",
    "PCIe transmit throughput over a 20 ms interval",
);
pub const PCIE_RX: AttrSpec = spec(
    "PCIe RX throughput",
    "KB/s",
    "PCIe receive throughput over a 20 ms interval",
);
pub const THROTTLE: &str = "Throttle";
pub const THROTTLE_REASONS: AttrSpec = spec(
    "Clock throttle reasons",
    "bitmask",
    "Active clock event (throttle) reasons, a bitmask of nvmlClocksEventReason values",
);

pub const XID: &str = "XID";
pub const XID_COUNT: AttrSpec = spec(
    "XID count",
    "#",
    "Critical XID errors reported for this GPU (for a MIG instance, its parent GPU) since stats collection started",
);

// GPM (Hopper and later): what the engines did over the sample period (the
// time since the previous tick), per GPU and per MIG instance.
pub const GPM: &str = "GPM";
pub const GPM_GRAPHICS: AttrSpec = spec(
    "Graphics activity",
    "%",
    "Percent of the sample period during which the graphics or compute engine was busy (for a MIG instance, its own)",
);
pub const GPM_SM: AttrSpec = spec(
    "SM activity",
    "%",
    "Percent of the SMs busy over the sample period: the time at least one warp was resident, averaged over all SMs",
);
pub const GPM_SM_OCCUPANCY: AttrSpec = spec(
    "SM occupancy",
    "%",
    "Resident warps as a percent of the most the SMs can hold, averaged over the sample period",
);
pub const GPM_TENSOR: AttrSpec = spec(
    "Tensor activity",
    "%",
    "Percent of the sample period during which the tensor cores were busy (any precision), averaged over all SMs",
);
pub const GPM_DRAM: AttrSpec = spec(
    "DRAM bandwidth utilization",
    "%",
    "Device memory bandwidth used over the sample period, as a percent of the peak",
);
pub const GPM_PCIE_TX: AttrSpec = spec(
    "PCIe TX",
    "MB/s",
    "Data sent by the GPU over PCIe per second, averaged over the sample period",
);
pub const GPM_PCIE_RX: AttrSpec = spec(
    "PCIe RX",
    "MB/s",
    "Data received by the GPU over PCIe per second, averaged over the sample period",
);
pub const GPM_NVLINK_TX: AttrSpec = spec(
    "NVLink TX",
    "MB/s",
    "Data sent by the GPU over all its NVLink links per second, averaged over the sample period",
);
pub const GPM_NVLINK_RX: AttrSpec = spec(
    "NVLink RX",
    "MB/s",
    "Data received by the GPU over all its NVLink links per second, averaged over the sample period",
);
/// In the order of `sample::GpmReadings` (and `gpm::METRIC_IDS`).
pub const GPM_STATS: [&AttrSpec; crate::gpm::GPM_STATS] = [
    &GPM_GRAPHICS,
    &GPM_SM,
    &GPM_SM_OCCUPANCY,
    &GPM_TENSOR,
    &GPM_DRAM,
    &GPM_PCIE_TX,
    &GPM_PCIE_RX,
    &GPM_NVLINK_TX,
    &GPM_NVLINK_RX,
];

pub const VENDOR: &str = "nvidia";
pub const DEVICE_TYPE: &str = "gpu";
pub const NOT_AVAILABLE: &str = "N/A";

/// A tick's wall-clock time as google.protobuf.Timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: i32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    }
}

/// A device group to encode: its name and its devices (ID, sample).
pub struct GroupView<'a> {
    pub name: &'a str,
    pub devices: Vec<(&'a str, &'a DeviceSample)>,
}

// ---- wire primitives ----

const fn tag(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}
const LEN: u8 = 2;
const VARINT: u8 = 0;
const I64: u8 = 1;

#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Size of a length-delimited field whose body is `body` bytes.
#[inline]
fn ld_len(body: usize) -> usize {
    1 + varint_len(body as u64) + body
}

#[inline]
fn put_ld_header(buf: &mut Vec<u8>, t: u8, body: usize) {
    buf.push(t);
    put_varint(buf, body as u64);
}

#[inline]
fn put_str(buf: &mut Vec<u8>, t: u8, s: &str) {
    put_ld_header(buf, t, s.len());
    buf.extend_from_slice(s.as_bytes());
}

// ---- StatValue ----

/// Body of an Int64Value wrapper (proto3 omits a zero value).
#[inline]
fn int64_wrapper_len(v: i64) -> usize {
    if v == 0 {
        0
    } else {
        1 + varint_len(v as u64)
    }
}

// StatValue field numbers: float_numerator_val 1, int_numerator_val 3,
// int_denominator_val 4, string_val 5, unit 7, desc 8.
const SV_FLOAT_NUM: u8 = tag(1, LEN);
const SV_INT_NUM: u8 = tag(3, LEN);
const SV_INT_DEN: u8 = tag(4, LEN);
const SV_STRING: u8 = tag(5, LEN);
const SV_UNIT: u8 = tag(7, LEN);
const SV_DESC: u8 = tag(8, LEN);

#[inline]
fn str_field_len(s: &str) -> usize {
    // proto3 omits empty strings.
    if s.is_empty() {
        0
    } else {
        ld_len(s.len())
    }
}

// ---- StatObject ----

// StatObject: nested 1 (map<string, StatObject>), attributes 2 (map<string, StatValue>).
const SO_NESTED: u8 = tag(1, LEN);
const SO_ATTRS: u8 = tag(2, LEN);
// Map entries: key 1, value 2.
const ENTRY_KEY: u8 = tag(1, LEN);
const ENTRY_VALUE: u8 = tag(2, LEN);

/// An attribute's constant bytes, encoded once: the StatValue's unit and
/// desc fields, and the map entry before its value. Only the value varies
/// per tick.
struct PreAttr {
    tail: Vec<u8>,
    /// The attribute map entry up to its value, for each value length: the
    /// entry's tag and length, the key, the StatValue's tag and length. An
    /// entry is then three copies: prefix, value, tail.
    prefix: Vec<Vec<u8>>,
}

impl PreAttr {
    fn new(a: &AttrSpec) -> PreAttr {
        let mut key = Vec::new();
        put_str(&mut key, ENTRY_KEY, a.name);
        let mut tail = Vec::new();
        if !a.unit.is_empty() {
            put_str(&mut tail, SV_UNIT, a.unit);
        }
        if !a.desc.is_empty() {
            put_str(&mut tail, SV_DESC, a.desc);
        }
        let prefix = (0..=VAL_MAX)
            .map(|len| {
                let sv = len + tail.len();
                let mut pre = Vec::new();
                put_ld_header(&mut pre, SO_ATTRS, key.len() + ld_len(sv));
                pre.extend_from_slice(&key);
                put_ld_header(&mut pre, ENTRY_VALUE, sv);
                pre
            })
            .collect();
        PreAttr { tail, prefix }
    }
}

/// The longest encoded value (Val's buffer).
const VAL_MAX: usize = 32;

/// A StatValue's value fields, encoded (at most two 10-byte varints plus
/// headers).
#[derive(Clone, Copy)]
struct Val {
    bytes: [u8; VAL_MAX],
    len: usize,
}

impl Val {
    fn new(r: Reading) -> Val {
        let mut v = Val {
            bytes: [0; VAL_MAX],
            len: 0,
        };
        match r {
            Reading::NotAvailable => {
                v.push(&[SV_STRING, 5, tag(1, LEN), 3]);
                v.push(NOT_AVAILABLE.as_bytes());
            }
            Reading::Int(n) => v.int_wrapper(SV_INT_NUM, n),
            Reading::Ratio(n, d) => {
                v.int_wrapper(SV_INT_NUM, n);
                v.int_wrapper(SV_INT_DEN, d);
            }
            Reading::Float(f) => {
                // A DoubleValue: proto3 omits a value whose bits are all zero.
                if f.to_bits() == 0 {
                    v.push(&[SV_FLOAT_NUM, 0]);
                } else {
                    v.push(&[SV_FLOAT_NUM, 9, tag(1, I64)]);
                    v.push(&f.to_le_bytes());
                }
            }
        }
        v
    }

    #[inline]
    fn push(&mut self, b: &[u8]) {
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    #[inline]
    fn int_wrapper(&mut self, t: u8, n: i64) {
        let body = int64_wrapper_len(n);
        self.push(&[t, body as u8]);
        if n != 0 {
            self.push(&[tag(1, VARINT)]);
            let mut x = n as u64;
            while x >= 0x80 {
                self.push(&[(x as u8) | 0x80]);
                x >>= 7;
            }
            self.push(&[x as u8]);
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[inline]
fn sv_body_len(v: &Val, p: &PreAttr) -> usize {
    v.len + p.tail.len()
}

/// The whole attribute map entry, header included.
#[inline]
fn attr_entry_len(v: &Val, p: &PreAttr) -> usize {
    p.prefix[v.len].len() + v.len + p.tail.len()
}

#[inline]
fn put_sv_body(buf: &mut Vec<u8>, v: &Val, p: &PreAttr) {
    buf.extend_from_slice(v.as_slice());
    buf.extend_from_slice(&p.tail);
}

/// An entry of a StatObject's attributes map.
#[inline]
fn put_attr_entry(buf: &mut Vec<u8>, v: &Val, p: &PreAttr) {
    buf.extend_from_slice(&p.prefix[v.len]);
    put_sv_body(buf, v, p);
}

struct Tables {
    standard: [PreAttr; 11],
    /// (nested object key, its attributes) for extended stats.
    nested: [(Vec<u8>, Vec<PreAttr>); 5],
    /// The GPM object's key and attributes.
    gpm: (Vec<u8>, Vec<PreAttr>),
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let key = |name: &str| {
            let mut k = Vec::new();
            put_str(&mut k, ENTRY_KEY, name);
            k
        };
        Tables {
            standard: [
                &POWER,
                &GPU_UTIL,
                &MEM_UTIL,
                &ENC_UTIL,
                &DEC_UTIL,
                &TEMPERATURE,
                &MEMORY,
                &BAR1,
                &ECC_L1,
                &ECC_L2,
                &ECC_DEVICE,
            ]
            .map(PreAttr::new),
            nested: [
                (
                    key(CLOCKS),
                    vec![PreAttr::new(&SM_CLOCK), PreAttr::new(&MEM_CLOCK)],
                ),
                (key(ENERGY), vec![PreAttr::new(&TOTAL_ENERGY)]),
                (
                    key(PCIE),
                    vec![PreAttr::new(&PCIE_TX), PreAttr::new(&PCIE_RX)],
                ),
                (key(THROTTLE), vec![PreAttr::new(&THROTTLE_REASONS)]),
                (key(XID), vec![PreAttr::new(&XID_COUNT)]),
            ],
            gpm: (
                key(GPM),
                GPM_STATS.iter().map(|a| PreAttr::new(a)).collect(),
            ),
        }
    })
}

const MEMORY_INDEX: usize = 6;

/// One device's values, encoded, with the sizes the headers need.
struct DeviceEnc {
    standard: [Val; 11],
    nested: Option<[[Val; 2]; 5]>,
    gpm: Option<[Val; crate::gpm::GPM_STATS]>,
    stat_object: usize,
    body: usize,
}

impl DeviceEnc {
    fn new(s: &DeviceSample, t: &Tables, ts_len: usize) -> DeviceEnc {
        let standard = [
            s.power_w,
            s.gpu_utilization,
            s.memory_utilization,
            s.encoder_utilization,
            s.decoder_utilization,
            s.temperature_c,
            s.memory_mib,
            s.bar1_mib,
            s.ecc_l1,
            s.ecc_l2,
            s.ecc_device,
        ]
        .map(Val::new);
        let nested = s.extended.map(|x| {
            let na = Val::new(Reading::NotAvailable);
            [
                [Val::new(x.sm_clock_mhz), Val::new(x.memory_clock_mhz)],
                [Val::new(x.energy_mj), na],
                [Val::new(x.pcie_tx_kbps), Val::new(x.pcie_rx_kbps)],
                [Val::new(x.throttle_reasons), na],
                [Val::new(x.xid_count), na],
            ]
        });
        let gpm = s.extended.and_then(|x| x.gpm).map(|g| g.map(Val::new));
        let mut stat_object: usize = standard
            .iter()
            .zip(&t.standard)
            .map(|(v, p)| attr_entry_len(v, p))
            .sum();
        if let Some(n) = &nested {
            for (vals, (key, pres)) in n.iter().zip(&t.nested) {
                stat_object += ld_len(key.len() + ld_len(nested_object_len(vals, pres)));
            }
        }
        if let Some(g) = &gpm {
            let (key, pres) = &t.gpm;
            stat_object += ld_len(key.len() + ld_len(nested_object_len(g, pres)));
        }
        let summary = sv_body_len(&standard[MEMORY_INDEX], &t.standard[MEMORY_INDEX]);
        let body = ld_len(summary) + ld_len(stat_object) + ld_len(ts_len);
        DeviceEnc {
            standard,
            nested,
            gpm,
            stat_object,
            body,
        }
    }

    fn put(&self, buf: &mut Vec<u8>, t: &Tables, ts: Timestamp, ts_len: usize) {
        let (mv, mp) = (&self.standard[MEMORY_INDEX], &t.standard[MEMORY_INDEX]);
        put_ld_header(buf, tag(1, LEN), sv_body_len(mv, mp));
        put_sv_body(buf, mv, mp);
        put_ld_header(buf, tag(2, LEN), self.stat_object);
        // Field order: nested (1) before attributes (2), as protobuf writes them.
        if let Some(n) = &self.nested {
            for (vals, (key, pres)) in n.iter().zip(&t.nested) {
                let obj = nested_object_len(vals, pres);
                put_ld_header(buf, SO_NESTED, key.len() + ld_len(obj));
                buf.extend_from_slice(key);
                put_ld_header(buf, ENTRY_VALUE, obj);
                for (v, p) in vals.iter().zip(pres) {
                    put_attr_entry(buf, v, p);
                }
            }
        }
        if let Some(g) = &self.gpm {
            let (key, pres) = &t.gpm;
            let obj = nested_object_len(g, pres);
            put_ld_header(buf, SO_NESTED, key.len() + ld_len(obj));
            buf.extend_from_slice(key);
            put_ld_header(buf, ENTRY_VALUE, obj);
            for (v, p) in g.iter().zip(pres) {
                put_attr_entry(buf, v, p);
            }
        }
        for (v, p) in self.standard.iter().zip(&t.standard) {
            put_attr_entry(buf, v, p);
        }
        put_ld_header(buf, tag(3, LEN), ts_len);
        put_timestamp(buf, ts);
    }
}

/// A nested StatObject of attributes only (`pres` may be shorter than `vals`).
fn nested_object_len(vals: &[Val], pres: &[PreAttr]) -> usize {
    vals.iter()
        .zip(pres)
        .map(|(v, p)| attr_entry_len(v, p))
        .sum()
}

// ---- DeviceStats, groups, response ----

fn timestamp_len(t: Timestamp) -> usize {
    let s = if t.seconds != 0 {
        1 + varint_len(t.seconds as u64)
    } else {
        0
    };
    // int32 negative values are sign-extended to 64 bits on the wire.
    let n = if t.nanos != 0 {
        1 + varint_len(t.nanos as i64 as u64)
    } else {
        0
    };
    s + n
}

fn put_timestamp(buf: &mut Vec<u8>, t: Timestamp) {
    if t.seconds != 0 {
        buf.push(tag(1, VARINT));
        put_varint(buf, t.seconds as u64);
    }
    if t.nanos != 0 {
        buf.push(tag(2, VARINT));
        put_varint(buf, t.nanos as i64 as u64);
    }
}

/// Encodes a StatsResponse into `buf` (cleared first). Groups and their
/// devices are written in the order given.
pub fn encode_stats_response(buf: &mut Vec<u8>, groups: &[GroupView<'_>], ts: Timestamp) {
    buf.clear();
    let t = tables();
    let ts_len = timestamp_len(ts);
    // Pass 1: every device's size (needed before its group's header).
    let mut encs: Vec<DeviceEnc> = Vec::with_capacity(groups.iter().map(|g| g.devices.len()).sum());
    let mut group_bodies: Vec<usize> = Vec::with_capacity(groups.len());
    for g in groups {
        let mut body = str_field_len(VENDOR) + str_field_len(DEVICE_TYPE) + str_field_len(g.name);
        for (id, s) in &g.devices {
            let e = DeviceEnc::new(s, t, ts_len);
            body += ld_len(ld_len(id.len()) + ld_len(e.body));
            encs.push(e);
        }
        group_bodies.push(body);
    }
    let total: usize = group_bodies.iter().map(|b| ld_len(*b)).sum();
    buf.reserve(total);

    // Pass 2: write.
    let mut encs = encs.iter();
    for (g, body) in groups.iter().zip(&group_bodies) {
        put_ld_header(buf, tag(1, LEN), *body);
        put_str(buf, tag(1, LEN), VENDOR);
        put_str(buf, tag(2, LEN), DEVICE_TYPE);
        if !g.name.is_empty() {
            put_str(buf, tag(3, LEN), g.name);
        }
        for (id, _) in &g.devices {
            let e = encs.next().expect("one encoding per device");
            put_ld_header(buf, tag(4, LEN), ld_len(id.len()) + ld_len(e.body));
            put_str(buf, ENTRY_KEY, id);
            put_ld_header(buf, ENTRY_VALUE, e.body);
            e.put(buf, t, ts, ts_len);
        }
    }
    debug_assert_eq!(buf.len(), total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16383, 2),
            (16384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), n, "{v}");
        }
    }

    fn value_bytes(r: Reading, unit: &str) -> Vec<u8> {
        let a = AttrSpec {
            name: "x",
            unit: if unit.is_empty() { "" } else { "W" },
            desc: "",
        };
        let (v, p) = (Val::new(r), PreAttr::new(&a));
        let mut b = Vec::new();
        put_sv_body(&mut b, &v, &p);
        assert_eq!(b.len(), sv_body_len(&v, &p));
        b
    }

    #[test]
    fn not_available_value_bytes() {
        assert_eq!(
            value_bytes(Reading::NotAvailable, ""),
            [0x2a, 5, 0x0a, 3, b'N', b'/', b'A']
        );
    }

    #[test]
    fn ratio_value_bytes_omit_zero() {
        // numerator wrapper present but empty; denominator 300 = 0xac 0x02.
        assert_eq!(
            value_bytes(Reading::Ratio(0, 300), "W"),
            [0x1a, 0, 0x22, 3, 0x08, 0xac, 0x02, 0x3a, 1, b'W']
        );
        // The widest value fits the fixed buffer.
        assert_eq!(Val::new(Reading::Ratio(i64::MAX, -1)).len, 2 + 10 + 2 + 11);
    }

    #[test]
    fn float_value_bytes() {
        let mut want = vec![0x0a, 9, 0x09];
        want.extend_from_slice(&87.5f64.to_le_bytes());
        want.extend_from_slice(&[0x3a, 1, b'W']);
        assert_eq!(value_bytes(Reading::Float(87.5), "W"), want);
        // Zero: the wrapper is there, empty (proto3 omits the zero).
        assert_eq!(value_bytes(Reading::Float(0.0), ""), [SV_FLOAT_NUM, 0]);
    }

    #[test]
    fn lengths_agree_with_bytes_written() {
        let mut s = DeviceSample::unavailable(true);
        let mut gpm = crate::gpm::NOT_AVAILABLE;
        gpm[0] = Reading::Float(42.25);
        gpm[5] = Reading::Int(1258);
        s.extended.as_mut().unwrap().gpm = Some(gpm);
        s.power_w = Reading::Ratio(123, 700);
        s.memory_mib = Reading::Ratio(1 << 20, 81559);
        s.temperature_c = Reading::Int(0);
        let plain = DeviceSample::unavailable(false);
        let t = Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        let g = [
            GroupView {
                name: "NVIDIA H100 80GB HBM3",
                devices: vec![("GPU-a", &s), ("GPU-b", &plain)],
            },
            GroupView {
                name: "",
                devices: vec![],
            },
        ];
        let mut buf = Vec::new();
        encode_stats_response(&mut buf, &g, t);
        let ts_len = timestamp_len(t);
        for d in [&s, &plain] {
            let e = DeviceEnc::new(d, tables(), ts_len);
            let mut one = Vec::new();
            e.put(&mut one, tables(), t, ts_len);
            assert_eq!(one.len(), e.body);
        }
        // The empty group is still written: header + vendor + type.
        assert!(buf.ends_with(&[
            0x0a, 13, 0x0a, 6, b'n', b'v', b'i', b'd', b'i', b'a', 0x12, 3, b'g', b'p', b'u'
        ]));
    }
}
