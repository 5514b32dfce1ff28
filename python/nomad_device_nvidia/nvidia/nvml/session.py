"""The plugin's NVML session: loaded and initialised lazily, re-initialised after the driver comes back.

Nomad launches the plugin several times at agent start just to ask for its
info and schema, so NVML is loaded and initialised only when a fingerprint,
stats or reserve call needs it. NVML's init is reference counted: this
session holds one reference (the native stats engines hold their own), and
gives it back with `release` when the driver went away, so that a later
`open` starts a fresh session with the driver, or for good with `close`.
"""

from __future__ import annotations

import logging
import threading

import pynvml

from nomad_device_nvidia.nvidia.nvml import diagnosis
from nomad_device_nvidia.nvidia.nvml.executor import SYSTEM, Executor

log = logging.getLogger(__name__)


# Errors that say the driver itself is gone or was replaced, not one GPU.
DRIVER_GONE_CODES = frozenset(
    {
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    }
)


class NvmlAbsent(Exception):
    """No NVML library to load (no driver installed, or the configured file cannot be used)."""


class SessionClosed(NvmlAbsent):
    """The plugin is shut down: NVML is (or is about to be) released and must not be opened again."""


class NvmlUnavailable(Exception):
    """NVML is present but failed to initialise; worth retrying."""


class NvmlSession:
    """Init and shutdown run on `runner`'s system lane, under its deadline (but `close`: see there)."""

    def __init__(self, runner: Executor) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._loaded_with: tuple[str, str] | None = None
        self._initialised = False
        self._closed = False
        self._epoch = 0
        #: The library loaded (None: none found, or not tried yet) and whether it is the simulator.
        self.library_path: str | None = None
        self.simulated = False

    @property
    def initialised(self) -> bool:
        return self._initialised

    @property
    def epoch(self) -> int:
        """Counts successful inits: what was built on an older one is stale."""
        return self._epoch

    def open(self, library: str, simulate: str) -> bool:
        """Initialise NVML unless it is; True when this call did. Raises NvmlAbsent,
        NvmlUnavailable, or CallTimeout when nvmlInit does not return in time."""
        with self._lock:
            if self._closed:
                raise SessionClosed("the plugin is shut down")
            if self._initialised:
                if self._loaded_with != (library, simulate):
                    log.warning("nvml_library/simulate changed after NVML was loaded; restart the plugin to apply it")
                return False
            if self._loaded_with is None:
                # The one place that decides which libnvidia-ml.so.1 this process uses.
                try:
                    from nomad_device_nvidia.nvidia.nvml.library import load_nvml

                    source = load_nvml(library or None, simulate or None)
                except Exception as exc:  # the loader's errors name the missing file / bad scenario
                    raise NvmlAbsent(f"cannot load NVML: {exc}") from exc
                if source.path is not None:
                    # Kept only once a library was found: one installed later is then loaded.
                    self._loaded_with = (library, simulate)
                self.library_path, self.simulated = source.path, source.simulated
            try:
                self._runner.call(SYSTEM, pynvml.nvmlInit)
            except pynvml.NVMLError as exc:
                if exc.value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
                    raise NvmlAbsent(diagnosis.not_found()) from exc
                raise NvmlUnavailable(diagnosis.init_failed(exc, self.library_path)) from exc
            self._initialised = True
            self._epoch += 1
            return True

    def release(self) -> None:
        """Give NVML back (the driver went away); `open` may init it again."""
        with self._lock:
            if not self._initialised:
                return
            self._initialised = False
            try:
                self._runner.call(SYSTEM, pynvml.nvmlShutdown)
            except Exception as exc:  # NVMLError or CallTimeout: the next open starts over
                log.debug("NVML shutdown after the driver went away failed: %s", exc)

    def close(self) -> None:
        """Shut NVML down for good; a later `open` raises SessionClosed. Call it with no NVML call live."""
        with self._lock:
            self._closed = True
            if not self._initialised:
                return
            self._initialised = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.warning("NVML shutdown failed: %s", exc)
