//! nvmlDeviceGetFieldValues: the field ids the plugin and DCGM-style tools read,
//! each answered from the same state as the call whose answer it repeats.

use std::os::raw::{c_int, c_uint, c_ulonglong};

use nvml_sys::*;

use super::device::{energy_mj, limit_mw};
use super::ecc::{ecc_at, ecc_counts, page_retirement, row_remapping};
use super::{clamp_u32, gpu_only, on_device};
use crate::fns::Fn;
use crate::sim::{Device, Metric, Sim};

/// Functions whose answer a field repeats: a fault on the function covers the field.
fn field_function(id: u32) -> Option<Fn> {
    Some(match id {
        NVML_FI_DEV_ECC_CURRENT | NVML_FI_DEV_ECC_PENDING => Fn::nvmlDeviceGetEccMode,
        3..=28 => Fn::nvmlDeviceGetTotalEccErrors,
        NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION | NVML_FI_DEV_ENERGY => {
            Fn::nvmlDeviceGetTotalEnergyConsumption
        }
        NVML_FI_DEV_POWER_AVERAGE | NVML_FI_DEV_POWER_INSTANT => Fn::nvmlDeviceGetPowerUsage,
        NVML_FI_DEV_MEMORY_TEMP => Fn::nvmlDeviceGetTemperature,
        187..=192 => Fn::nvmlDeviceGetPowerManagementLimit,
        NVML_FI_DEV_RETIRED_SBE | NVML_FI_DEV_RETIRED_DBE => Fn::nvmlDeviceGetRetiredPages,
        NVML_FI_DEV_RETIRED_PENDING
        | NVML_FI_DEV_RETIRED_PENDING_SBE
        | NVML_FI_DEV_RETIRED_PENDING_DBE => Fn::nvmlDeviceGetRetiredPagesPendingStatus,
        NVML_FI_DEV_REMAPPED_COR..=NVML_FI_DEV_REMAPPED_FAILURE
        | NVML_FI_DEV_REMAPPED_ROWS_COR_INACTIVE
        | NVML_FI_DEV_REMAPPED_ROWS_UNC_INACTIVE => Fn::nvmlDeviceGetRemappedRows,
        NVML_FI_DEV_NVLINK_SPEED_MBPS_L0..=NVML_FI_DEV_NVLINK_LINK_COUNT
        | NVML_FI_DEV_NVLINK_SPEED_MBPS_L6..=NVML_FI_DEV_NVLINK_SPEED_MBPS_L11
        | NVML_FI_DEV_NVLINK_GET_SPEED..=NVML_FI_DEV_NVLINK_GET_VERSION => {
            Fn::nvmlDeviceGetNvLinkState
        }
        _ => return None,
    })
}

enum FieldValue {
    U32(c_uint),
    U64(c_ulonglong),
}

fn field_value(
    s: &Sim,
    i: usize,
    d: &Device,
    id: u32,
    scope: u32,
) -> Result<FieldValue, nvmlReturn_t> {
    if d.unsupported_fields.contains(&id) {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    if let Some(f) = field_function(id) {
        if d.unsupported & (1u128 << f as usize) != 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
    }
    gpu_only(d)?;
    let m = s.model_of(d);
    // ECC fields: (corrected?, volatile?, location); totals use location None.
    let ecc = |corrected: bool, loc: Option<u32>| -> Result<FieldValue, nvmlReturn_t> {
        let t = if corrected {
            NVML_MEMORY_ERROR_TYPE_CORRECTED
        } else {
            NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        };
        Ok(FieldValue::U64(ecc_at(&ecc_counts(s, d, t)?, loc)))
    };
    const L1: Option<u32> = Some(NVML_MEMORY_LOCATION_L1_CACHE);
    const L2: Option<u32> = Some(NVML_MEMORY_LOCATION_L2_CACHE);
    const DEV: Option<u32> = Some(NVML_MEMORY_LOCATION_DEVICE_MEMORY);
    const REG: Option<u32> = Some(NVML_MEMORY_LOCATION_REGISTER_FILE);
    const TEX: Option<u32> = Some(NVML_MEMORY_LOCATION_TEXTURE_MEMORY);
    Ok(match id {
        NVML_FI_DEV_ECC_CURRENT | NVML_FI_DEV_ECC_PENDING => FieldValue::U32(d.ecc as c_uint),
        NVML_FI_DEV_ECC_SBE_VOL_TOTAL | NVML_FI_DEV_ECC_SBE_AGG_TOTAL => ecc(true, None)?,
        NVML_FI_DEV_ECC_DBE_VOL_TOTAL | NVML_FI_DEV_ECC_DBE_AGG_TOTAL => ecc(false, None)?,
        NVML_FI_DEV_ECC_SBE_VOL_L1 | NVML_FI_DEV_ECC_SBE_AGG_L1 => ecc(true, L1)?,
        NVML_FI_DEV_ECC_DBE_VOL_L1 | NVML_FI_DEV_ECC_DBE_AGG_L1 => ecc(false, L1)?,
        NVML_FI_DEV_ECC_SBE_VOL_L2 | NVML_FI_DEV_ECC_SBE_AGG_L2 => ecc(true, L2)?,
        NVML_FI_DEV_ECC_DBE_VOL_L2 | NVML_FI_DEV_ECC_DBE_AGG_L2 => ecc(false, L2)?,
        NVML_FI_DEV_ECC_SBE_VOL_DEV | NVML_FI_DEV_ECC_SBE_AGG_DEV => ecc(true, DEV)?,
        NVML_FI_DEV_ECC_DBE_VOL_DEV | NVML_FI_DEV_ECC_DBE_AGG_DEV => ecc(false, DEV)?,
        NVML_FI_DEV_ECC_SBE_VOL_REG | NVML_FI_DEV_ECC_SBE_AGG_REG => ecc(true, REG)?,
        NVML_FI_DEV_ECC_DBE_VOL_REG | NVML_FI_DEV_ECC_DBE_AGG_REG => ecc(false, REG)?,
        NVML_FI_DEV_ECC_SBE_VOL_TEX | NVML_FI_DEV_ECC_SBE_AGG_TEX => ecc(true, TEX)?,
        NVML_FI_DEV_ECC_DBE_VOL_TEX | NVML_FI_DEV_ECC_DBE_AGG_TEX => ecc(false, TEX)?,
        NVML_FI_DEV_ECC_DBE_VOL_CBU | NVML_FI_DEV_ECC_DBE_AGG_CBU => ecc(false, TEX)?,
        NVML_FI_DEV_RETIRED_SBE | NVML_FI_DEV_RETIRED_PENDING_SBE => {
            page_retirement(s, d)?;
            FieldValue::U64(0)
        }
        NVML_FI_DEV_RETIRED_DBE => {
            page_retirement(s, d)?;
            FieldValue::U64(u64::from(s.memory_state(i).retired_dbe_pages))
        }
        NVML_FI_DEV_RETIRED_PENDING | NVML_FI_DEV_RETIRED_PENDING_DBE => {
            page_retirement(s, d)?;
            let st = s.memory_state(i);
            FieldValue::U64(if !st.retirement_pending {
                0
            } else if id == NVML_FI_DEV_RETIRED_PENDING {
                1
            } else {
                u64::from(st.retired_dbe_pages)
            })
        }
        NVML_FI_DEV_PCIE_REPLAY_COUNTER => FieldValue::U64(0),
        NVML_FI_DEV_REMAPPED_COR..=NVML_FI_DEV_REMAPPED_FAILURE => {
            row_remapping(s, d)?;
            let st = s.memory_state(i);
            FieldValue::U32(match id {
                NVML_FI_DEV_REMAPPED_COR => st.correctable_rows,
                NVML_FI_DEV_REMAPPED_UNC => st.uncorrectable_rows,
                NVML_FI_DEV_REMAPPED_PENDING => st.remap_pending as c_uint,
                _ => st.remap_failed as c_uint,
            })
        }
        NVML_FI_DEV_REMAPPED_ROWS_COR_INACTIVE | NVML_FI_DEV_REMAPPED_ROWS_UNC_INACTIVE => {
            row_remapping(s, d)?;
            FieldValue::U32(0)
        }
        NVML_FI_DEV_MEMORY_TEMP => {
            FieldValue::U32(clamp_u32(s.sample(d, Metric::MemoryTemperature)))
        }
        NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION | NVML_FI_DEV_ENERGY => {
            FieldValue::U64(energy_mj(s, d))
        }
        NVML_FI_DEV_POWER_AVERAGE | NVML_FI_DEV_POWER_INSTANT => {
            FieldValue::U32(clamp_u32(s.sample(d, Metric::Power) * 1000.0))
        }
        NVML_FI_DEV_POWER_MIN_LIMIT => FieldValue::U32(clamp_u32(m.power_min_w * 1000.0)),
        NVML_FI_DEV_POWER_MAX_LIMIT => FieldValue::U32(clamp_u32(m.power_max_w * 1000.0)),
        NVML_FI_DEV_POWER_DEFAULT_LIMIT
        | NVML_FI_DEV_POWER_CURRENT_LIMIT
        | NVML_FI_DEV_POWER_REQUESTED_LIMIT => FieldValue::U32(limit_mw(s, d)),
        NVML_FI_DEV_NVLINK_LINK_COUNT => FieldValue::U32(crate::fabric::links(m)?),
        NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON => {
            crate::fabric::links(m)?;
            FieldValue::U32(m.nvlink_speed_mbps)
        }
        NVML_FI_DEV_NVLINK_SPEED_MBPS_L0..=NVML_FI_DEV_NVLINK_SPEED_MBPS_L5 => {
            crate::fabric::link(m, id - NVML_FI_DEV_NVLINK_SPEED_MBPS_L0)?;
            FieldValue::U32(m.nvlink_speed_mbps)
        }
        NVML_FI_DEV_NVLINK_SPEED_MBPS_L6..=NVML_FI_DEV_NVLINK_SPEED_MBPS_L11 => {
            crate::fabric::link(m, id - NVML_FI_DEV_NVLINK_SPEED_MBPS_L6 + 6)?;
            FieldValue::U32(m.nvlink_speed_mbps)
        }
        // Per link: the link is the field's scopeId.
        NVML_FI_DEV_NVLINK_GET_SPEED => {
            crate::fabric::link(m, scope)?;
            FieldValue::U32(m.nvlink_speed_mbps)
        }
        NVML_FI_DEV_NVLINK_GET_STATE => {
            crate::fabric::link(m, scope)?;
            FieldValue::U32(NVML_NVLINK_STATE_ACTIVE)
        }
        NVML_FI_DEV_NVLINK_GET_VERSION => {
            crate::fabric::link(m, scope)?;
            FieldValue::U32(m.nvlink_version)
        }
        _ => return Err(NVML_ERROR_NOT_SUPPORTED),
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    device: nvmlDevice_t,
    count: c_int,
    values: *mut nvmlFieldValue_t,
) -> nvmlReturn_t {
    on_device(device, Fn::nvmlDeviceGetFieldValues, |s, i, d| {
        if values.is_null() || count <= 0 {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let values = std::slice::from_raw_parts_mut(values, count as usize);
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_micros() as i64)
            .unwrap_or(0);
        for v in values {
            v.timestamp = timestamp;
            v.latencyUsec = 0;
            match field_value(s, i, d, v.fieldId, v.scopeId) {
                Ok(FieldValue::U32(x)) => {
                    v.valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
                    v.value = nvmlValue_t { ullVal: 0 };
                    v.value.uiVal = x;
                    v.nvmlReturn = NVML_SUCCESS;
                }
                Ok(FieldValue::U64(x)) => {
                    v.valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
                    v.value = nvmlValue_t { ullVal: x };
                    v.nvmlReturn = NVML_SUCCESS;
                }
                Err(code) => {
                    v.value = nvmlValue_t { ullVal: 0 };
                    v.nvmlReturn = code;
                }
            }
        }
        Ok(())
    })
}

const _: nvmlDeviceGetFieldValues_fn = nvmlDeviceGetFieldValues;
