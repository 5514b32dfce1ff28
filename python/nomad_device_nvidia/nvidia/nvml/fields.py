"""Reading NVML values: a field value (nvmlDeviceGetFieldValues) as an integer, a handle's address."""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml

# nvmlValueType_t -> the member of the value union that holds it.
_MEMBER = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    6: "usVal",  # NVML_VALUE_TYPE_UNSIGNED_SHORT (not named by every nvidia-ml-py)
}


def field_int(fv: Any) -> int | None:
    """The value as an int; None when the field did not answer or has a type we do not know."""
    if fv.nvmlReturn != pynvml.NVML_SUCCESS:
        return None
    member = _MEMBER.get(fv.valueType)
    return None if member is None else int(getattr(fv.value, member))


def handle_address(handle: Any) -> int:
    """A device handle's address: what identifies the GPU an NVML event came from."""
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)
