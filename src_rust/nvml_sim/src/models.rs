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
}

#[allow(clippy::too_many_arguments)]
fn p(
    name: String,
    index: u32,
    id: u32,
    slices: u32,
    memory_slices: u32,
    instance_count: u32,
    multiprocessors: u32,
    engines: u32,
    memory_mib: u64,
) -> MigProfile {
    MigProfile {
        name,
        index,
        id,
        slices,
        memory_slices,
        instance_count,
        multiprocessors,
        copy_engines: engines,
        decoders: engines,
        encoders: 0,
        jpegs: engines,
        ofas: if slices == 7 { 1 } else { 0 },
        memory_mib,
    }
}

fn hopper_profiles(gb: [u64; 6], mib: [u64; 6]) -> Vec<MigProfile> {
    let name = |s: &str, g: u64| format!("{s}.{g}gb");
    vec![
        p(
            name("1g", gb[0]),
            NVML_GPU_INSTANCE_PROFILE_1_SLICE,
            19,
            1,
            1,
            7,
            16,
            1,
            mib[0],
        ),
        p(
            name("1g", gb[1]),
            NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2,
            15,
            1,
            2,
            4,
            16,
            1,
            mib[1],
        ),
        p(
            name("2g", gb[2]),
            NVML_GPU_INSTANCE_PROFILE_2_SLICE,
            14,
            2,
            2,
            3,
            32,
            2,
            mib[2],
        ),
        p(
            name("3g", gb[3]),
            NVML_GPU_INSTANCE_PROFILE_3_SLICE,
            9,
            3,
            4,
            2,
            60,
            3,
            mib[3],
        ),
        p(
            name("4g", gb[4]),
            NVML_GPU_INSTANCE_PROFILE_4_SLICE,
            5,
            4,
            4,
            1,
            64,
            4,
            mib[4],
        ),
        p(
            name("7g", gb[5]),
            NVML_GPU_INSTANCE_PROFILE_7_SLICE,
            0,
            7,
            8,
            1,
            132,
            7,
            mib[5],
        ),
    ]
}

fn ampere_profiles(gb: [u64; 6], mib: [u64; 6]) -> Vec<MigProfile> {
    let name = |s: &str, g: u64| format!("{s}.{g}gb");
    vec![
        p(
            name("1g", gb[0]),
            NVML_GPU_INSTANCE_PROFILE_1_SLICE,
            19,
            1,
            1,
            7,
            14,
            1,
            mib[0],
        ),
        p(
            name("1g", gb[1]),
            NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2,
            15,
            1,
            2,
            4,
            14,
            1,
            mib[1],
        ),
        p(
            name("2g", gb[2]),
            NVML_GPU_INSTANCE_PROFILE_2_SLICE,
            14,
            2,
            2,
            3,
            28,
            2,
            mib[2],
        ),
        p(
            name("3g", gb[3]),
            NVML_GPU_INSTANCE_PROFILE_3_SLICE,
            9,
            3,
            4,
            2,
            42,
            3,
            mib[3],
        ),
        p(
            name("4g", gb[4]),
            NVML_GPU_INSTANCE_PROFILE_4_SLICE,
            5,
            4,
            4,
            1,
            56,
            4,
            mib[4],
        ),
        p(
            name("7g", gb[5]),
            NVML_GPU_INSTANCE_PROFILE_7_SLICE,
            0,
            7,
            8,
            1,
            98,
            7,
            mib[5],
        ),
    ]
}

/// Names accepted by `model = "..."`.
pub const MODEL_KEYS: &[&str] = &[
    "h100-sxm5-80gb",
    "a100-sxm4-40gb",
    "a100-sxm4-80gb",
    "gh200-96gb",
    "l4",
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
        mig_profiles: hopper_profiles(
            [10, 20, 20, 40, 40, 80],
            [9856, 19968, 19968, 40192, 40192, 80384],
        ),
        mig_total_slices: 7,
        mig_total_memory_slices: 8,
    };
    let model = match key {
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
            mig_profiles: hopper_profiles(
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
                mig_profiles: if big {
                    ampere_profiles(
                        [10, 20, 20, 40, 40, 80],
                        [9728, 19968, 19968, 40192, 40192, 80896],
                    )
                } else {
                    ampere_profiles(
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
            mig_profiles: Vec::new(),
            mig_total_slices: 0,
            mig_total_memory_slices: 0,
            ..h100
        },
        _ => return None,
    };
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
