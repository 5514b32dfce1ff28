//! NVLink and the NVLink fabric: the links a GPU has (nvmlDeviceGetNvLinkState,
//! Version, Capability and the NVLink fields), and its registration with the
//! fabric manager (nvmlDeviceGetGpuFabricInfo and ...InfoV), whose state and
//! health mask the scenario's fabric faults move over time.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::os::raw::c_uint;

use nvml_sys::*;

use crate::api::{gpu_only, on_device, put, struct_version, R};
use crate::fns::Fn;
use crate::models::Model;
use crate::sim::{Device, FabricNow, Sim};

/// The links a GPU has; NOT_SUPPORTED without NVLink.
pub(crate) fn links(m: &Model) -> Result<c_uint, nvmlReturn_t> {
    match m.nvlink_links {
        0 => Err(NVML_ERROR_NOT_SUPPORTED),
        n => Ok(n),
    }
}

/// Checks a link number: INVALID_ARGUMENT past NVML's range, NOT_SUPPORTED for
/// a link the GPU does not have.
pub(crate) fn link(m: &Model, link: c_uint) -> R {
    if link >= NVML_NVLINK_MAX_LINKS {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    if link >= links(m)? {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(())
}

fn nvlink(s: &Sim, d: &Device, l: c_uint) -> Result<&'static Model, nvmlReturn_t> {
    gpu_only(d)?;
    let m = s.model_of(d);
    link(m, l)?;
    // SAFETY of 'static: models live inside the leaked Sim.
    Ok(unsafe { &*(m as *const Model) })
}

device_queries! {
    nvmlDeviceGetNvLinkState(link: c_uint, is_active: *mut nvmlEnableState_t) |s, _, d| {
        nvlink(s, d, link)?;
        put(is_active, NVML_FEATURE_ENABLED)
    };
    nvmlDeviceGetNvLinkVersion(link: c_uint, version: *mut c_uint)
        |s, _, d| put(version, nvlink(s, d, link)?.nvlink_version);
    nvmlDeviceGetNvLinkCapability(
        link: c_uint, capability: nvmlNvLinkCapability_t, result: *mut c_uint) |s, _, d| {
        nvlink(s, d, link)?;
        // Links go to other GPUs (through NVSwitches), not to system memory.
        let yes = match capability {
            NVML_NVLINK_CAP_P2P_SUPPORTED | NVML_NVLINK_CAP_P2P_ATOMICS => 1,
            NVML_NVLINK_CAP_VALID => 1,
            NVML_NVLINK_CAP_SYSMEM_ACCESS
            | NVML_NVLINK_CAP_SYSMEM_ATOMICS
            | NVML_NVLINK_CAP_SLI_BRIDGE => 0,
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        put(result, yes)
    };
}

/// The fabric of a GPU, as the info calls answer: Ok(None) on a Hopper or later
/// GPU in no fabric (state NOT_SUPPORTED), NOT_SUPPORTED before Hopper and on
/// MIG device handles.
fn fabric(s: &Sim, i: usize, d: &Device) -> Result<Option<FabricNow>, nvmlReturn_t> {
    gpu_only(d)?;
    if !s.model_of(d).hopper_or_later() {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(s.fabric_now(i))
}

fn summary(f: &FabricNow) -> u8 {
    if f.state != NVML_GPU_FABRIC_STATE_COMPLETED {
        return NVML_GPU_FABRIC_HEALTH_SUMMARY_NOT_SUPPORTED;
    }
    let field = |shift: c_uint, width: c_uint| (f.health_mask >> shift) & width;
    let degraded = field(
        NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_DEGRADED_BW,
        NVML_GPU_FABRIC_HEALTH_MASK_WIDTH_DEGRADED_BW,
    ) == NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_TRUE;
    if f.health_mask == crate::sim::FABRIC_HEALTHY_MASK {
        NVML_GPU_FABRIC_HEALTH_SUMMARY_HEALTHY
    } else if degraded {
        NVML_GPU_FABRIC_HEALTH_SUMMARY_LIMITED_CAPACITY
    } else {
        NVML_GPU_FABRIC_HEALTH_SUMMARY_UNHEALTHY
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuFabricInfo(
    device: nvmlDevice_t,
    info: *mut nvmlGpuFabricInfo_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetGpuFabricInfo, |s, i, d| {
        let out = match fabric(s, i, d)? {
            Some(f) => nvmlGpuFabricInfo_t {
                clusterUuid: f.cluster_uuid,
                status: NVML_SUCCESS,
                cliqueId: f.clique,
                state: f.state,
                _pad: [0; 3],
            },
            None => nvmlGpuFabricInfo_t {
                state: NVML_GPU_FABRIC_STATE_NOT_SUPPORTED,
                ..Default::default()
            },
        };
        put(info, out)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuFabricInfoV(
    device: nvmlDevice_t,
    info: *mut nvmlGpuFabricInfo_v3_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetGpuFabricInfo, |s, i, d| {
        let version = struct_version(info, &[nvmlGpuFabricInfo_v2, nvmlGpuFabricInfo_v3])?;
        let f = fabric(s, i, d)?.unwrap_or(FabricNow {
            state: NVML_GPU_FABRIC_STATE_NOT_SUPPORTED,
            cluster_uuid: [0; 16],
            clique: 0,
            health_mask: 0,
        });
        let v2 = nvmlGpuFabricInfo_v2_t {
            version,
            clusterUuid: f.cluster_uuid,
            status: NVML_SUCCESS,
            cliqueId: f.clique,
            state: f.state,
            _pad: [0; 3],
            healthMask: f.health_mask,
        };
        if version == nvmlGpuFabricInfo_v2 {
            // Only the v2 struct's 36 bytes are the caller's.
            return put(info as *mut nvmlGpuFabricInfo_v2_t, v2);
        }
        put(
            info,
            nvmlGpuFabricInfo_v3_t {
                version,
                clusterUuid: v2.clusterUuid,
                status: v2.status,
                cliqueId: v2.cliqueId,
                state: v2.state,
                _pad: [0; 3],
                healthMask: v2.healthMask,
                healthSummary: summary(&f),
                _pad2: [0; 3],
            },
        )
    })
}

const _: nvmlDeviceGetNvLinkState_fn = nvmlDeviceGetNvLinkState;
const _: nvmlDeviceGetNvLinkVersion_fn = nvmlDeviceGetNvLinkVersion;
const _: nvmlDeviceGetNvLinkCapability_fn = nvmlDeviceGetNvLinkCapability;
const _: nvmlDeviceGetGpuFabricInfo_fn = nvmlDeviceGetGpuFabricInfo;
const _: nvmlDeviceGetGpuFabricInfoV_fn = nvmlDeviceGetGpuFabricInfoV;
