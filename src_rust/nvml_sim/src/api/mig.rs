//! MIG: the mode, MIG device handles, GPU instances and compute instances.

use std::os::raw::{c_char, c_uint};

use nvml_sys::*;

use super::{
    compute_instance, compute_instance_handle, device_handle, gpu_instance, gpu_instance_handle,
    gpu_only, guard, on_device, put, put_pair, sim, supported_if, R,
};
use crate::fns::Fn;
use crate::models::MigProfile;
use crate::sim::{Device, GpuInstance, Sim};

fn mig_capable(s: &Sim, d: &Device) -> R {
    gpu_only(d)?;
    supported_if(!s.model_of(d).mig_profiles.is_empty())
}

/// A call on a GPU instance: faults and latency are those of the GPU's
/// nvmlDeviceGetGpuInstances.
fn on_gpu_instance(
    h: nvmlGpuInstance_t,
    body: impl FnOnce(&'static Sim, &'static GpuInstance) -> R,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let gi = gpu_instance(s, h)?;
        s.enter(&s.devices[gi.device], Fn::nvmlDeviceGetGpuInstances)?;
        body(s, gi)
    })
}

fn gi_profile(s: &Sim, d: &Device, index: c_uint) -> Result<&'static MigProfile, nvmlReturn_t> {
    mig_capable(s, d)?;
    if index >= NVML_GPU_INSTANCE_PROFILE_COUNT {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let m = s.model_of(d);
    let p = m
        .mig_profiles
        .iter()
        .find(|p| p.index == index)
        .ok_or(NVML_ERROR_NOT_SUPPORTED)?;
    // SAFETY of 'static: models live inside the leaked Sim.
    Ok(unsafe { &*(p as *const MigProfile) })
}

fn name96(s: &str) -> [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE] {
    let mut out = [0 as c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    for (o, b) in out
        .iter_mut()
        .zip(s.bytes().take(NVML_DEVICE_NAME_V2_BUFFER_SIZE - 1))
    {
        *o = b as c_char;
    }
    out
}

/// A MIG profile as one version of nvmlGpuInstanceProfileInfo: the fields every
/// version has, then the listed ones of that version.
macro_rules! gi_profile_info {
    ($ty:ident, $p:expr, { $($extra:tt)* }) => {{
        let p: &MigProfile = $p;
        $ty {
            id: p.id,
            sliceCount: p.slices,
            instanceCount: p.instance_count,
            multiprocessorCount: p.multiprocessors,
            copyEngineCount: p.copy_engines,
            decoderCount: p.decoders,
            encoderCount: p.encoders,
            jpegCount: p.jpegs,
            ofaCount: p.ofas,
            memorySizeMB: p.memory_mib,
            $($extra)*
        }
    }};
}

/// nvmlComputeInstanceProfileInfo as a later version: its fields, then the listed
/// ones of that version.
macro_rules! ci_profile_info {
    ($ty:ident, $c:expr, { $($extra:tt)* }) => {{
        let c: nvmlComputeInstanceProfileInfo_t = $c;
        $ty {
            id: c.id,
            sliceCount: c.sliceCount,
            instanceCount: c.instanceCount,
            multiprocessorCount: c.multiprocessorCount,
            sharedCopyEngineCount: c.sharedCopyEngineCount,
            sharedDecoderCount: c.sharedDecoderCount,
            sharedEncoderCount: c.sharedEncoderCount,
            sharedJpegCount: c.sharedJpegCount,
            sharedOfaCount: c.sharedOfaCount,
            $($extra)*
        }
    }};
}

device_queries! {
    nvmlDeviceGetMigMode(current: *mut c_uint, pending: *mut c_uint) |s, _, d| {
        mig_capable(s, d)?;
        let m = if d.mig_enabled {
            NVML_DEVICE_MIG_ENABLE
        } else {
            NVML_DEVICE_MIG_DISABLE
        };
        put_pair(current, pending, m)
    };
    nvmlDeviceGetMaxMigDeviceCount(count: *mut c_uint) |s, _, d| {
        mig_capable(s, d)?;
        put(count, s.model_of(d).mig_total_slices)
    };
    nvmlDeviceGetMigDeviceHandleByIndex(index: c_uint, mig: *mut nvmlDevice_t) |s, _, d| {
        if d.mig.is_some() || !d.mig_enabled {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let i = *d.mig_devices.get(index as usize).ok_or(NVML_ERROR_NOT_FOUND)?;
        put(mig, device_handle(s, i))
    };
    nvmlDeviceIsMigDeviceHandle(is_mig: *mut c_uint)
        |_, _, d| put(is_mig, d.mig.is_some() as c_uint);
    nvmlDeviceGetGpuInstanceId(id: *mut c_uint) |s, _, d| {
        let m = d.mig.ok_or(NVML_ERROR_NOT_SUPPORTED)?;
        put(id, s.gpu_instances[m.gpu_instance].id)
    };
    nvmlDeviceGetComputeInstanceId(id: *mut c_uint) |s, _, d| {
        let m = d.mig.ok_or(NVML_ERROR_NOT_SUPPORTED)?;
        put(id, s.compute_instances[m.compute_instance].id)
    };
    nvmlDeviceGetAttributes_v2 as nvmlDeviceGetAttributes(attrs: *mut nvmlDeviceAttributes_t)
        |s, _, d| {
        // NVML answers this for MIG device handles only.
        let p = s.profile_of(d).ok_or(NVML_ERROR_NOT_SUPPORTED)?;
        put(
            attrs,
            nvmlDeviceAttributes_t {
                multiprocessorCount: p.multiprocessors,
                sharedCopyEngineCount: p.copy_engines,
                sharedDecoderCount: p.decoders,
                sharedEncoderCount: p.encoders,
                sharedJpegCount: p.jpegs,
                sharedOfaCount: p.ofas,
                gpuInstanceSliceCount: p.slices,
                computeInstanceSliceCount: p.slices,
                memorySizeMB: p.memory_mib,
            },
        )
    };
    nvmlDeviceGetGpuInstanceProfileInfo(profile: c_uint, info: *mut nvmlGpuInstanceProfileInfo_t)
        |s, _, d| {
        let p = gi_profile(s, d, profile)?;
        put(info, gi_profile_info!(nvmlGpuInstanceProfileInfo_t, p, { isP2pSupported: 0 }))
    };
    nvmlDeviceGetGpuInstanceProfileInfoV as nvmlDeviceGetGpuInstanceProfileInfo(
        profile: c_uint, info: *mut nvmlGpuInstanceProfileInfo_v2_t) |s, _, d| {
        if info.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let p = gi_profile(s, d, profile)?;
        let name = name96(&format!("MIG {}", p.name));
        match (*info).version {
            nvmlGpuInstanceProfileInfo_v2 => put(
                info,
                gi_profile_info!(nvmlGpuInstanceProfileInfo_v2_t, p, {
                    version: nvmlGpuInstanceProfileInfo_v2,
                    isP2pSupported: 0,
                    name,
                }),
            ),
            nvmlGpuInstanceProfileInfo_v3 => put(
                info as *mut nvmlGpuInstanceProfileInfo_v3_t,
                gi_profile_info!(nvmlGpuInstanceProfileInfo_v3_t, p, {
                    version: nvmlGpuInstanceProfileInfo_v3,
                    name,
                    capabilities: 0,
                }),
            ),
            _ => Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH),
        }
    };
    nvmlDeviceGetGpuInstances(
        profile_id: c_uint, instances: *mut nvmlGpuInstance_t, count: *mut c_uint) |s, _, d| {
        mig_capable(s, d)?;
        if instances.is_null() || count.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let m = s.model_of(d);
        let mut n = 0;
        for &gi in &d.gpu_instances {
            if m.mig_profiles[s.gpu_instances[gi].profile].id == profile_id {
                *instances.add(n) = gpu_instance_handle(s, gi);
                n += 1;
            }
        }
        put(count, n as c_uint)
    };
    nvmlDeviceGetGpuInstanceById(id: c_uint, instance: *mut nvmlGpuInstance_t) |s, _, d| {
        mig_capable(s, d)?;
        let gi = d
            .gpu_instances
            .iter()
            .copied()
            .find(|&gi| s.gpu_instances[gi].id == id)
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        put(instance, gpu_instance_handle(s, gi))
    };
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    let f = Fn::nvmlDeviceGetDeviceHandleFromMigDeviceHandle;
    on_device(mig, f, |s, _, d| {
        // nvml.h lists both INVALID_ARGUMENT and NOT_SUPPORTED for a handle
        // that is not a MIG device's; the scenario picks which.
        let m = d.mig.ok_or(s.choices.not_a_mig_device)?;
        put(device, device_handle(s, m.parent))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetInfo(
    instance: nvmlGpuInstance_t,
    info: *mut nvmlGpuInstanceInfo_t,
) -> nvmlReturn_t {
    on_gpu_instance(instance, |s, gi| {
        let parent = &s.devices[gi.device];
        put(
            info,
            nvmlGpuInstanceInfo_t {
                device: device_handle(s, gi.device),
                id: gi.id,
                profileId: s.model_of(parent).mig_profiles[gi.profile].id,
                placement: nvmlGpuInstancePlacement_t {
                    start: gi.placement.0,
                    size: gi.placement.1,
                },
            },
        )
    })
}

/// Compute-instance profile index -> compute slices it spans.
const CI_SLICES: [u32; 8] = [1, 2, 3, 4, 7, 8, 6, 1];

/// The GPU instance's own profile.
fn profile_of(s: &Sim, gi: &GpuInstance) -> &'static MigProfile {
    let p = &s.model_of(&s.devices[gi.device]).mig_profiles[gi.profile];
    // SAFETY of 'static: models live inside the leaked Sim.
    unsafe { &*(p as *const MigProfile) }
}

fn ci_profile(
    s: &Sim,
    gi: &GpuInstance,
    profile: c_uint,
    eng: c_uint,
) -> Result<nvmlComputeInstanceProfileInfo_t, nvmlReturn_t> {
    if eng != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
        || profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT
    {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let p = profile_of(s, gi);
    let slices = *CI_SLICES
        .get(profile as usize)
        .ok_or(NVML_ERROR_NOT_SUPPORTED)?;
    if slices > p.slices || profile == NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1 {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(nvmlComputeInstanceProfileInfo_t {
        id: profile,
        sliceCount: slices,
        instanceCount: p.slices / slices,
        multiprocessorCount: p.multiprocessors * slices / p.slices,
        sharedCopyEngineCount: p.copy_engines,
        sharedDecoderCount: p.decoders,
        sharedEncoderCount: p.encoders,
        sharedJpegCount: p.jpegs,
        sharedOfaCount: p.ofas,
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    instance: nvmlGpuInstance_t,
    profile: c_uint,
    eng: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_t,
) -> nvmlReturn_t {
    on_gpu_instance(instance, |s, gi| {
        put(info, ci_profile(s, gi, profile, eng)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfoV(
    instance: nvmlGpuInstance_t,
    profile: c_uint,
    eng: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_v2_t,
) -> nvmlReturn_t {
    on_gpu_instance(instance, |s, gi| {
        if info.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let c = ci_profile(s, gi, profile, eng)?;
        let gi_profile = profile_of(s, gi);
        let name = if c.sliceCount == gi_profile.slices {
            gi_profile.name.clone()
        } else {
            format!("{}c.{}", c.sliceCount, gi_profile.name)
        };
        let name = name96(&name);
        match (*info).version {
            nvmlComputeInstanceProfileInfo_v2 => put(
                info,
                ci_profile_info!(nvmlComputeInstanceProfileInfo_v2_t, c, {
                    version: nvmlComputeInstanceProfileInfo_v2,
                    name,
                }),
            ),
            nvmlComputeInstanceProfileInfo_v3 => put(
                info as *mut nvmlComputeInstanceProfileInfo_v3_t,
                ci_profile_info!(nvmlComputeInstanceProfileInfo_v3_t, c, {
                    version: nvmlComputeInstanceProfileInfo_v3,
                    name,
                    capabilities: 0,
                }),
            ),
            _ => Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH),
        }
    })
}

/// The compute-instance profile index whose slice count matches `slices`.
fn ci_profile_index(slices: u32) -> c_uint {
    CI_SLICES.iter().position(|&s| s == slices).unwrap_or(0) as c_uint
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstances(
    instance: nvmlGpuInstance_t,
    profile_id: c_uint,
    instances: *mut nvmlComputeInstance_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu_instance(instance, |s, gi| {
        if instances.is_null() || count.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let ci = &s.compute_instances[gi.compute_instance];
        if ci_profile_index(ci.slices) == profile_id {
            *instances = compute_instance_handle(s, gi.compute_instance);
            put(count, 1)
        } else {
            put(count, 0)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceById(
    instance: nvmlGpuInstance_t,
    id: c_uint,
    out: *mut nvmlComputeInstance_t,
) -> nvmlReturn_t {
    on_gpu_instance(instance, |s, gi| {
        if s.compute_instances[gi.compute_instance].id != id {
            return Err(NVML_ERROR_NOT_FOUND);
        }
        put(out, compute_instance_handle(s, gi.compute_instance))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo_v2(
    instance: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        let s = sim()?;
        let ci = compute_instance(s, instance)?;
        let gi = &s.gpu_instances[ci.gpu_instance];
        s.enter(&s.devices[gi.device], Fn::nvmlDeviceGetGpuInstances)?;
        put(
            info,
            nvmlComputeInstanceInfo_t {
                device: device_handle(s, gi.device),
                gpuInstance: gpu_instance_handle(s, ci.gpu_instance),
                id: ci.id,
                profileId: ci_profile_index(ci.slices),
                placement: nvmlComputeInstancePlacement_t {
                    start: 0,
                    size: ci.slices,
                },
            },
        )
    })
}

aliases! {
    nvmlDeviceGetAttributes(device: nvmlDevice_t, attrs: *mut nvmlDeviceAttributes_t)
        = nvmlDeviceGetAttributes_v2;
    nvmlComputeInstanceGetInfo(instance: nvmlComputeInstance_t, info: *mut nvmlComputeInstanceInfo_t)
        = nvmlComputeInstanceGetInfo_v2;
}

// Compile-time check that the exports match the shared signatures in nvml_sys.
const _: nvmlDeviceGetMigMode_fn = nvmlDeviceGetMigMode;
const _: nvmlDeviceGetMigDeviceHandleByIndex_fn = nvmlDeviceGetMigDeviceHandleByIndex;
const _: nvmlDeviceGetDeviceHandleFromMigDeviceHandle_fn =
    nvmlDeviceGetDeviceHandleFromMigDeviceHandle;
