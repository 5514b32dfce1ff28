//! Built-in GPU models: what a real board reports through NVML, so scenario files can
//! say `model = "h100-sxm5-80gb"` and override only what they need.

use nvml_sys::*;

/// One MIG GPU-instance profile of a model (`nvidia-smi mig -lgip` row).
#[derive(Debug, Clone, PartialEq)]
pub struct MigProfile {
    pub name: String,
    /// NVML_GPU_INSTANCE_PROFILE_* index passed to nvmlDeviceGetGpuInstanceProfileInfo.
    pub index: u32,
    /// Profile id NVML reports (`info.id`).
    pub id: u32,
    pub slices: u32,
    pub memory_slices: u32,
    pub instance_count: u32,
    pub multiprocessors: u32,
    pub copy_engines: u32,
    pub decoders: u32,
    pub encoders: u32,
    pub jpegs: u32,
    pub ofas: u32,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub key: &'static str,
    pub name: String,
    pub memory_mib: u64,
    pub memory_reserved_mib: u64,
    /// None: the board has no BAR1 aperture NVML reports (unified memory), so the
    /// query answers NOT_SUPPORTED.
    pub bar1_mib: Option<u64>,
    pub power_limit_w: f64,
    pub power_min_w: f64,
    pub power_max_w: f64,
    /// Max clocks in MHz: graphics, SM, memory, video.
    pub max_clocks_mhz: [u32; 4],
    pub pcie_gen: u32,
    pub pcie_width: u32,
    pub compute_capability: (i32, i32),
    pub architecture: u32,
    pub pci_device_id: u32,
    pub pci_subsystem_id: u32,
    pub brand: u32,
    pub multiprocessors: u32,
    pub copy_engines: u32,
    pub decoders: u32,
    pub encoders: u32,
    pub jpegs: u32,
    pub ofas: u32,
    /// Temperature thresholds in C: shutdown, slowdown, memory max, GPU max.
    pub temp_thresholds_c: [u32; 4],
    pub has_fan: bool,
    pub vbios: String,
    pub mig_profiles: Vec<MigProfile>,
    pub mig_total_slices: u32,
    pub mig_total_memory_slices: u32,
    /// Dynamic page retirement (before Ampere): the retired-pages queries answer.
    pub page_retirement: bool,
    /// Row remapping (Ampere and later): nvmlDeviceGetRemappedRows answers.
    pub row_remapping: bool,
    /// GPU Performance Monitoring (Hopper and later): nvmlGpmQueryDeviceSupport
    /// says so and the nvmlGpm* sample calls answer.
    pub gpm: bool,
    /// NVLink links present (0: none, the NVLink queries answer NOT_SUPPORTED),
    /// each link's speed in MB/s (NVML's "MBps") and its nvmlNvlinkVersion_t.
    pub nvlink_links: u32,
    pub nvlink_speed_mbps: u32,
    pub nvlink_version: u32,
    /// Registered with an NVLink fabric manager (an NVLink domain): the fabric
    /// info calls report a cluster and a clique.
    pub fabric: bool,
}

impl Model {
    /// What follows the architecture: memory repair (page retirement up to
    /// Volta/Turing, row remapping from Ampere on) and GPM (Hopper and later);
    /// unknown numbers count as newer.
    pub fn set_by_architecture(&mut self) {
        let before_ampere = self.architecture < NVML_DEVICE_ARCH_AMPERE;
        self.page_retirement = before_ampere;
        self.row_remapping = !before_ampere;
        self.gpm = self.hopper_or_later();
    }

    pub fn hopper_or_later(&self) -> bool {
        self.architecture >= NVML_DEVICE_ARCH_HOPPER
    }
}

/// The MIG GPU-instance profiles Ampere and Hopper boards share, one row per
/// profile: (size prefix, NVML_GPU_INSTANCE_PROFILE_* index, profile id,
/// slices, memory slices, instance count, engines). "Engines" is the count of
/// copy engines, decoders and JPEG units alike.
const MIG_LAYOUT: [(&str, u32, u32, u32, u32, u32, u32); 6] = [
    ("1g", NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, 1, 1, 7, 1),
    ("1g", NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, 1, 2, 4, 1),
    ("2g", NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, 2, 2, 3, 2),
    ("3g", NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, 3, 4, 2, 3),
    ("4g", NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, 4, 4, 1, 4),
    ("7g", NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, 7, 8, 1, 7),
];

/// Multiprocessors per profile (rows of MIG_LAYOUT), by architecture.
const HOPPER_SMS: [u32; 6] = [16, 16, 32, 60, 64, 132];
const BLACKWELL_SMS: [u32; 6] = [18, 18, 36, 54, 72, 144];
const AMPERE_SMS: [u32; 6] = [14, 14, 28, 42, 56, 98];

/// A board's MIG profiles: MIG_LAYOUT with the architecture's multiprocessor
/// counts and the board's memory per profile (GB in the name, MiB reported).
fn mig_profiles(sms: [u32; 6], gb: [u64; 6], mib: [u64; 6]) -> Vec<MigProfile> {
    MIG_LAYOUT
        .iter()
        .enumerate()
        .map(
            |(i, &(size, index, id, slices, memory_slices, instance_count, engines))| MigProfile {
                name: format!("{size}.{}gb", gb[i]),
                index,
                id,
                slices,
                memory_slices,
                instance_count,
                multiprocessors: sms[i],
                copy_engines: engines,
                decoders: engines,
                encoders: 0,
                jpegs: engines,
                // The one optical-flow accelerator goes to the full-GPU profile.
                ofas: u32::from(slices == 7),
                memory_mib: mib[i],
            },
        )
        .collect()
}

/// Names accepted by `model = "..."`.
pub const MODEL_KEYS: &[&str] = &[
    "h100-sxm5-80gb",
    "a100-sxm4-40gb",
    "a100-sxm4-80gb",
    "gh200-96gb",
    "l4",
    "v100-sxm2-32gb",
    "gb10",
    "gb200",
];

pub fn preset(key: &str) -> Option<Model> {
    let h100 = Model {
        key: "h100-sxm5-80gb",
        name: "NVIDIA H100 80GB HBM3".into(),
        memory_mib: 81559,
        memory_reserved_mib: 591,
        bar1_mib: Some(131072),
        power_limit_w: 700.0,
        power_min_w: 200.0,
        power_max_w: 700.0,
        max_clocks_mhz: [1980, 1980, 2619, 1545],
        pcie_gen: 5,
        pcie_width: 16,
        compute_capability: (9, 0),
        architecture: NVML_DEVICE_ARCH_HOPPER,
        pci_device_id: 0x2330_10DE,
        pci_subsystem_id: 0x16C1_10DE,
        brand: NVML_BRAND_NVIDIA,
        multiprocessors: 132,
        copy_engines: 8,
        decoders: 7,
        encoders: 0,
        jpegs: 7,
        ofas: 1,
        temp_thresholds_c: [92, 89, 95, 87],
        has_fan: false,
        vbios: "96.00.99.00.01".into(),
        mig_profiles: mig_profiles(
            HOPPER_SMS,
            [10, 20, 20, 40, 40, 80],
            [9856, 19968, 19968, 40192, 40192, 80384],
        ),
        mig_total_slices: 7,
        mig_total_memory_slices: 8,
        page_retirement: false,
        row_remapping: true,
        gpm: true,
        // 18 NVLink 4 links of 26.562 GB/s each way, to the NVSwitches of an HGX board.
        nvlink_links: 18,
        nvlink_speed_mbps: 26562,
        nvlink_version: NVML_NVLINK_VERSION_4_0,
        fabric: false,
    };
    let mut model = match key {
        "h100-sxm5-80gb" => h100,
        "gh200-96gb" => Model {
            key: "gh200-96gb",
            name: "NVIDIA GH200 480GB".into(),
            memory_mib: 97871,
            memory_reserved_mib: 645,
            bar1_mib: None,
            power_limit_w: 900.0,
            power_min_w: 100.0,
            power_max_w: 900.0,
            pci_device_id: 0x2342_10DE,
            pci_subsystem_id: 0x16EB_10DE,
            vbios: "96.00.74.00.1C".into(),
            mig_profiles: mig_profiles(
                HOPPER_SMS,
                [12, 24, 24, 48, 48, 96],
                [11776, 23808, 23808, 47872, 47872, 95744],
            ),
            ..h100
        },
        "a100-sxm4-40gb" | "a100-sxm4-80gb" => {
            let big = key == "a100-sxm4-80gb";
            Model {
                key: if big {
                    "a100-sxm4-80gb"
                } else {
                    "a100-sxm4-40gb"
                },
                name: if big {
                    "NVIDIA A100-SXM4-80GB"
                } else {
                    "NVIDIA A100-SXM4-40GB"
                }
                .into(),
                memory_mib: if big { 81920 } else { 40960 },
                memory_reserved_mib: if big { 625 } else { 428 },
                bar1_mib: Some(if big { 131072 } else { 65536 }),
                power_limit_w: 400.0,
                power_min_w: 100.0,
                power_max_w: 400.0,
                max_clocks_mhz: [1410, 1410, if big { 1593 } else { 1215 }, 1290],
                pcie_gen: 4,
                pcie_width: 16,
                compute_capability: (8, 0),
                architecture: NVML_DEVICE_ARCH_AMPERE,
                pci_device_id: if big { 0x20B2_10DE } else { 0x20B0_10DE },
                pci_subsystem_id: if big { 0x147F_10DE } else { 0x134F_10DE },
                multiprocessors: 108,
                copy_engines: 8,
                decoders: 5,
                jpegs: 1,
                temp_thresholds_c: [92, 89, 95, 85],
                vbios: "92.00.36.00.02".into(),
                nvlink_links: 12,
                nvlink_speed_mbps: 25000,
                nvlink_version: NVML_NVLINK_VERSION_3_0,
                mig_profiles: if big {
                    mig_profiles(
                        AMPERE_SMS,
                        [10, 20, 20, 40, 40, 80],
                        [9728, 19968, 19968, 40192, 40192, 80896],
                    )
                } else {
                    mig_profiles(
                        AMPERE_SMS,
                        [5, 10, 10, 20, 20, 40],
                        [4864, 9856, 9856, 19968, 19968, 40192],
                    )
                },
                ..h100
            }
        }
        "l4" => Model {
            key: "l4",
            name: "NVIDIA L4".into(),
            memory_mib: 23034,
            memory_reserved_mib: 357,
            bar1_mib: Some(32768),
            power_limit_w: 72.0,
            power_min_w: 40.0,
            power_max_w: 72.0,
            max_clocks_mhz: [2040, 2040, 6251, 1770],
            pcie_gen: 4,
            pcie_width: 16,
            compute_capability: (8, 9),
            architecture: NVML_DEVICE_ARCH_ADA,
            pci_device_id: 0x27B8_10DE,
            pci_subsystem_id: 0x16CA_10DE,
            multiprocessors: 58,
            copy_engines: 2,
            decoders: 4,
            encoders: 2,
            jpegs: 4,
            ofas: 1,
            temp_thresholds_c: [96, 93, 0, 90],
            vbios: "95.04.29.00.06".into(),
            nvlink_links: 0,
            mig_profiles: Vec::new(),
            mig_total_slices: 0,
            mig_total_memory_slices: 0,
            ..h100
        },
        "v100-sxm2-32gb" => Model {
            key: "v100-sxm2-32gb",
            name: "Tesla V100-SXM2-32GB".into(),
            memory_mib: 32510,
            memory_reserved_mib: 306,
            bar1_mib: Some(32768),
            power_limit_w: 300.0,
            power_min_w: 150.0,
            power_max_w: 300.0,
            max_clocks_mhz: [1530, 1530, 877, 1372],
            pcie_gen: 3,
            pcie_width: 16,
            compute_capability: (7, 0),
            architecture: NVML_DEVICE_ARCH_VOLTA,
            pci_device_id: 0x1DB5_10DE,
            pci_subsystem_id: 0x1249_10DE,
            brand: NVML_BRAND_TESLA,
            multiprocessors: 80,
            copy_engines: 6,
            decoders: 1,
            encoders: 3,
            jpegs: 0,
            ofas: 0,
            temp_thresholds_c: [90, 87, 95, 83],
            vbios: "88.00.80.00.04".into(),
            nvlink_links: 6,
            nvlink_speed_mbps: 25000,
            nvlink_version: NVML_NVLINK_VERSION_2_0,
            mig_profiles: Vec::new(),
            mig_total_slices: 0,
            mig_total_memory_slices: 0,
            ..h100
        },
        // The GPU of a DGX Spark: it shares the host's LPDDR5X, so there is no
        // dedicated memory (memory info NOT_SUPPORTED), no BAR1 and no memory clock.
        "gb10" => Model {
            key: "gb10",
            name: "NVIDIA GB10".into(),
            memory_mib: 0,
            memory_reserved_mib: 0,
            bar1_mib: None,
            power_limit_w: 140.0,
            power_min_w: 40.0,
            power_max_w: 140.0,
            max_clocks_mhz: [3003, 3003, 0, 2400],
            pcie_gen: 5,
            pcie_width: 16,
            compute_capability: (12, 1),
            architecture: NVML_DEVICE_ARCH_BLACKWELL,
            pci_device_id: 0x2E12_10DE,
            pci_subsystem_id: 0x0000_10DE,
            multiprocessors: 48,
            copy_engines: 2,
            decoders: 1,
            encoders: 1,
            jpegs: 1,
            ofas: 1,
            temp_thresholds_c: [100, 95, 0, 90],
            vbios: "98.B0.10.00.01".into(),
            // Its link to the CPU is NVLink-C2C, which the NVLink queries do not count.
            nvlink_links: 0,
            mig_profiles: Vec::new(),
            mig_total_slices: 0,
            mig_total_memory_slices: 0,
            ..h100
        },
        // One Blackwell GPU of a Grace Blackwell superchip (GB200 NVL72 and NVL4
        // trays): HBM3e shared coherently with the Grace CPU over NVLink-C2C (no
        // BAR1 aperture reported, as on GH200), 18 NVLink 5 links to the NVLink
        // switch trays, and a place in the rack's NVLink fabric.
        "gb200" => Model {
            key: "gb200",
            name: "NVIDIA GB200".into(),
            memory_mib: 189471,
            memory_reserved_mib: 1123,
            bar1_mib: None,
            power_limit_w: 1200.0,
            power_min_w: 200.0,
            power_max_w: 1200.0,
            max_clocks_mhz: [2062, 2062, 3996, 1755],
            pcie_gen: 6,
            pcie_width: 16,
            compute_capability: (10, 0),
            architecture: NVML_DEVICE_ARCH_BLACKWELL,
            pci_device_id: 0x2941_10DE,
            pci_subsystem_id: 0x2046_10DE,
            multiprocessors: 144,
            copy_engines: 10,
            decoders: 7,
            encoders: 0,
            jpegs: 7,
            ofas: 1,
            temp_thresholds_c: [95, 92, 95, 88],
            vbios: "97.00.6A.00.03".into(),
            mig_profiles: mig_profiles(
                BLACKWELL_SMS,
                [23, 46, 46, 93, 93, 186],
                [23296, 47104, 47104, 94720, 94720, 188928],
            ),
            nvlink_links: 18,
            nvlink_speed_mbps: 50000,
            nvlink_version: NVML_NVLINK_VERSION_5_0,
            fabric: true,
            ..h100
        },
        _ => return None,
    };
    model.set_by_architecture();
    Some(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_preset() {
        for key in MODEL_KEYS {
            let m = preset(key).unwrap();
            assert_eq!(m.key, *key);
        }
        assert!(preset("nope").is_none());
    }

    #[test]
    fn memory_repair_follows_the_architecture() {
        let v100 = preset("v100-sxm2-32gb").unwrap();
        assert!(v100.page_retirement && !v100.row_remapping);
        assert!(v100.mig_profiles.is_empty());
        assert_eq!(v100.compute_capability, (7, 0));
        for key in ["a100-sxm4-40gb", "h100-sxm5-80gb", "l4", "gb10"] {
            let m = preset(key).unwrap();
            assert!(!m.page_retirement && m.row_remapping, "{key}");
        }
        let gb10 = preset("gb10").unwrap();
        assert_eq!((gb10.memory_mib, gb10.bar1_mib), (0, None));
        assert_eq!(gb10.max_clocks_mhz[2], 0);
        assert_eq!(gb10.compute_capability, (12, 1));
    }

    #[test]
    fn gpm_from_hopper_on_and_a_fabric_on_grace_blackwell() {
        for key in ["h100-sxm5-80gb", "gh200-96gb", "gb10", "gb200"] {
            assert!(preset(key).unwrap().gpm, "{key}");
        }
        for key in ["a100-sxm4-40gb", "a100-sxm4-80gb", "l4", "v100-sxm2-32gb"] {
            assert!(!preset(key).unwrap().gpm, "{key}");
        }
        let gb200 = preset("gb200").unwrap();
        assert!(gb200.fabric && gb200.mig_profiles.len() == 6);
        assert_eq!((gb200.nvlink_links, gb200.nvlink_speed_mbps), (18, 50000));
        assert_eq!(gb200.compute_capability, (10, 0));
        assert!(MODEL_KEYS
            .iter()
            .all(|k| *k == "gb200" || !preset(k).unwrap().fabric));
    }

    #[test]
    fn full_gpu_profile_fits_all_slices() {
        for key in MODEL_KEYS {
            let m = preset(key).unwrap();
            for prof in &m.mig_profiles {
                assert!(prof.slices <= m.mig_total_slices);
                assert!(prof.memory_slices <= m.mig_total_memory_slices);
                assert!(prof.memory_mib < m.memory_mib);
            }
        }
    }
}
