"""Words for a person: which NVML library the plugin uses, or exactly why it uses none.

The plugin's first NVML log line, `probe` and `bench` all say it with these.
"""

from __future__ import annotations

import os

import pynvml

SONAME = "libnvidia-ml.so.1"


def where_looked() -> str:
    """Where dlopen("libnvidia-ml.so.1") looks, as glibc searches."""
    ld_path = os.environ.get("LD_LIBRARY_PATH", "")
    return f"LD_LIBRARY_PATH ({ld_path or 'unset'}), /etc/ld.so.cache, /lib and /usr/lib"


def not_found() -> str:
    return f"no {SONAME} on this machine (no NVIDIA driver installed; the dynamic loader searched {where_looked()})"


def branch_of(driver_version: str) -> str:
    """The driver branch of a version: 535 for 535.261.03."""
    head = driver_version.split(".", 1)[0]
    return head if head.isdigit() else "unknown"


def library(path: str | None, driver_version: str, simulated: bool = False) -> str:
    """`library /usr/lib/.../libnvidia-ml.so.1 (driver 535.261.03, branch 535)`."""
    where = path or f"{SONAME} from the loader's path"
    kind = "simulated " if simulated else ""
    if not driver_version:
        return f"{kind}library {where}"
    return f"{kind}library {where} (driver {driver_version}, branch {branch_of(driver_version)})"


def init_failed(exc: pynvml.NVMLError, path: str | None) -> str:
    """Why nvmlInit failed, named for the common causes."""
    where = f"library {path}" if path else f"{SONAME} from the loader's path"
    code = getattr(exc, "value", None)
    head = "NVML failed to initialise: "
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return f"{head}the NVIDIA kernel driver is not loaded ({where}; nvmlInit: {exc})"
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return f"{head}no permission to use the NVIDIA driver, this user cannot open /dev/nvidia* ({where}; nvmlInit: {exc})"
    if code == pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return f"{head}the NVML library and the loaded kernel driver are of different versions ({where}; nvmlInit: {exc})"
    return f"{head}{exc} ({where})"
