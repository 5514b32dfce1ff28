"""Which libnvidia-ml.so.1 this process uses: the one place that decides it.

NVML is found by its SONAME. Whatever object with SONAME ``libnvidia-ml.so.1`` is
loaded first, glibc hands to every later ``dlopen("libnvidia-ml.so.1")`` in the
process: nvidia-ml-py's, the Rust stats engine's. So to use a particular library
(the simulated driver, or a driver outside the loader's path) we load it here with
RTLD_GLOBAL before anything else opens NVML. The simulation is only ever used when
asked for, and says so loudly in the logs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass

# os.path, not pathlib: this runs at the plugin's start, and pathlib loads
# urllib.parse and ipaddress with it (about 0.4 MiB resident).

log = logging.getLogger(__name__)

SONAME = "libnvidia-ml.so.1"
#: Read by the simulated library at nvmlInit: the scenario file to simulate.
SCENARIO_ENV = "NVML_SIM_SCENARIO"
#: Where the simulated library is, for ``simulate`` without ``nvml_library``.
SIM_LIB_ENV = "NOMAD_DEVICE_NVIDIA_SIM_LIB"
#: Exported only by the simulated library; how we tell it from a real driver.
SIM_MARKER_SYMBOL = "nvmlSimGetScenario"


class NvmlLoadError(RuntimeError):
    """The NVML library asked for cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class NvmlSource:
    """What was loaded. ``path`` is None when no NVML library could be loaded at all
    (no driver on this machine); nvidia-ml-py then reports that at nvmlInit."""

    path: str | None
    simulated: bool
    scenario: str | None


def _repo_sim_library() -> str | None:
    """build/sim/libnvidia-ml.so.1 of the source checkout this module runs from, if any."""
    here = os.path.realpath(__file__)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(here))))
    if os.path.isdir(os.path.join(repo, "src_rust", "nvml_sim")):
        return os.path.join(repo, "build", "sim", SONAME)
    return None


def scenario_branch(scenario: str) -> int | None:
    """The driver branch a scenario file plays (``[driver] branch``), None for every function.

    Read with tomllib where Python has it (3.11+); on 3.10, from the ``branch = N`` line of
    the ``[driver]`` table. Either way the simulator checks at nvmlInit that the library it
    runs as is the one for the scenario's branch, so a miss here fails loudly there.
    """
    try:
        with open(scenario, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10
        m = re.search(rb"^\[driver\][^\[]*?^\s*branch\s*=\s*(\d+)", raw, re.MULTILINE | re.DOTALL)
        return int(m.group(1)) if m else None
    try:
        driver = tomllib.loads(raw.decode(errors="replace")).get("driver")
    except tomllib.TOMLDecodeError:
        return None  # the simulator names the problem at nvmlInit
    branch = driver.get("branch") if isinstance(driver, dict) else None
    return branch if isinstance(branch, int) and not isinstance(branch, bool) else None


def find_sim_library(branch: int | None = None) -> str:
    """The simulated library: $NOMAD_DEVICE_NVIDIA_SIM_LIB, else the checkout's build.

    With a driver ``branch``, the library linked for that branch, which exports only its
    functions: ``<branch>/libnvidia-ml.so.1`` beside the one that exports them all.
    """
    env = os.environ.get(SIM_LIB_ENV, "")
    if env:
        if not os.path.isfile(env):
            raise NvmlLoadError(f"{SIM_LIB_ENV}={env!r}: no such file")
        full = env
    else:
        built = _repo_sim_library()
        if built is None:
            raise NvmlLoadError(
                f"simulate: cannot find the simulated NVML library; set {SIM_LIB_ENV} or nvml_library "
                "to the path of its libnvidia-ml.so.1 (it is not shipped in the wheel)"
            )
        if not os.path.isfile(built):
            raise NvmlLoadError(
                f"simulate: the simulated NVML library is not built: {built} is missing (run `make sim`)"
            )
        full = built
    if branch is None:
        return full
    path = os.path.join(os.path.dirname(full), str(branch), SONAME)
    if not os.path.isfile(path):
        raise NvmlLoadError(
            f"simulate: the scenario plays driver branch {branch} but {path} is missing "
            "(`make sim` links one per list in src_rust/nvml_sim/branches)"
        )
    return path


def _mapped_nvml() -> str | None:
    """Path of an NVML library already mapped into this process, if any."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6:
            name = os.path.basename(parts[5])
            if name.startswith("libnvidia-ml.so") or name == "libnvml_sim.so":
                return parts[5]
    return None


def _sim_scenario(lib: ctypes.CDLL) -> str | None:
    buf = ctypes.create_string_buffer(4096)
    ret = getattr(lib, SIM_MARKER_SYMBOL)(buf, ctypes.c_uint(len(buf)))
    return buf.value.decode(errors="replace") if ret == 0 else None


def _open(path: str) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise NvmlLoadError(f"cannot load NVML library {path!r}: {exc}") from exc


def _warn_simulated(path: str, scenario: str | None, how: str) -> None:
    log.warning(
        "SIMULATED NVIDIA DRIVER IN USE (%s): %s, scenario %s. The GPUs reported are not real.",
        how,
        path,
        scenario or f"from ${SCENARIO_ENV} (unset)",
    )


def load_nvml(library: str | None, simulate: str | None) -> NvmlSource:
    """Load the NVML library this process will use, before anyone else opens NVML.

    ``library``: path of a libnvidia-ml.so.1 to load instead of the system's.
    ``simulate``: path of a scenario file; loads the simulated library (``library``
    if given, else :func:`find_sim_library`) and points it at the scenario.
    Neither: the system library, if there is one (a simulated library found through
    LD_LIBRARY_PATH is reported, loudly). Raises NvmlLoadError naming the problem.
    """
    scenario: str | None = None
    if simulate:
        scenario = os.path.realpath(simulate)
        if not os.path.isfile(scenario):
            raise NvmlLoadError(f"simulate: scenario file {simulate!r} does not exist")
        path = library if library else find_sim_library(scenario_branch(scenario))
    elif library:
        path = library
    else:
        return _load_system()

    if not os.path.isfile(path):
        raise NvmlLoadError(f"nvml_library: {path!r}: no such file")
    wanted = os.path.realpath(path)
    mapped = _mapped_nvml()
    if mapped is not None and os.path.realpath(mapped) != wanted:
        raise NvmlLoadError(
            f"cannot load {wanted!r}: another NVML library ({mapped}) is already loaded in this process; "
            "NVML must be chosen before anything opens it"
        )
    if scenario is not None:
        # Read by the simulated library at the next nvmlInit.
        os.environ[SCENARIO_ENV] = scenario
    lib = _open(wanted)
    simulated = hasattr(lib, SIM_MARKER_SYMBOL)
    if scenario is not None and not simulated:
        raise NvmlLoadError(f"simulate: {wanted!r} is not the simulated NVML library (it lacks {SIM_MARKER_SYMBOL})")
    if simulated:
        scen = scenario if scenario is not None else os.environ.get(SCENARIO_ENV) or None
        _warn_simulated(wanted, scen, "simulate" if scenario is not None else "nvml_library")
        return NvmlSource(path=wanted, simulated=True, scenario=scen)
    log.info("using NVML library %s", wanted)
    return NvmlSource(path=wanted, simulated=False, scenario=None)


def _load_system() -> NvmlSource:
    try:
        lib = ctypes.CDLL(SONAME, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        # Not logged above debug: the plugin says it once, when nvmlInit then fails.
        log.debug("no %s on this machine (no NVIDIA driver)", SONAME)
        return NvmlSource(path=None, simulated=False, scenario=None)
    path = _mapped_nvml()
    if hasattr(lib, SIM_MARKER_SYMBOL):
        scenario = os.environ.get(SCENARIO_ENV) or _sim_scenario(lib)
        _warn_simulated(path or SONAME, scenario, "found on the library path, e.g. LD_LIBRARY_PATH")
        return NvmlSource(path=path, simulated=True, scenario=scenario)
    log.debug("using the system NVML library %s", path or SONAME)
    return NvmlSource(path=path, simulated=False, scenario=None)
