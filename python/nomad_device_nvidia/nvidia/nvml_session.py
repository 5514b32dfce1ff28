"""Lazy, reference-counted NVML initialisation for the plugin.

Nomad launches the plugin several times at agent start just to ask for its
info and schema, so NVML is loaded and initialised only when a fingerprint,
stats or reserve call needs it, and shut down once in `close`.
"""

from __future__ import annotations

import logging
import threading

import pynvml

log = logging.getLogger(__name__)

# Init results that mean "there is no NVIDIA driver here": the stream ends
# with no devices, as HashiCorp's plugin does on a machine without GPUs.
_ABSENT_CODES = frozenset({pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED})


#: The one line logged (with "; no NVIDIA devices will be reported") on a node without NVML.
NO_LIBRARY = "no libnvidia-ml.so.1 on this machine (no NVIDIA driver)"


class NvmlAbsent(Exception):
    """No usable NVML on this machine (no library, no driver, or the asked-for one cannot load)."""


class SessionClosed(NvmlAbsent):
    """The plugin is shut down: NVML is (or is about to be) released and must not be opened again."""


class NvmlUnavailable(Exception):
    """NVML is present but failed to initialise; worth retrying."""


class NvmlSession:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded_with: tuple[str, str] | None = None
        self._initialised = False
        self._closed = False

    @property
    def initialised(self) -> bool:
        return self._initialised

    def open(self, library: str, simulate: str) -> None:
        """Initialise NVML once (thread-safe); raises NvmlAbsent or NvmlUnavailable."""
        with self._lock:
            if self._closed:
                raise SessionClosed("the plugin is shut down")
            if self._initialised:
                if self._loaded_with != (library, simulate):
                    log.warning("nvml_library/simulate changed after NVML was loaded; restart the plugin to apply it")
                return
            if self._loaded_with is None:
                # The one place that decides which libnvidia-ml.so.1 this process uses.
                try:
                    from nomad_device_nvidia.nvidia.driver import load_nvml

                    load_nvml(library or None, simulate or None)
                except Exception as exc:  # the loader's errors name the missing file / bad scenario
                    raise NvmlAbsent(f"cannot load NVML: {exc}") from exc
                self._loaded_with = (library, simulate)
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                if exc.value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
                    raise NvmlAbsent(NO_LIBRARY) from exc
                if exc.value in _ABSENT_CODES:
                    raise NvmlAbsent(f"NVML is not available: {exc}") from exc
                raise NvmlUnavailable(f"NVML failed to initialise: {exc}") from exc
            self._initialised = True
            log.debug("NVML initialised")

    def close(self) -> None:
        """Shut NVML down for good; a later `open` raises SessionClosed."""
        with self._lock:
            self._closed = True
            if not self._initialised:
                return
            self._initialised = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.warning("NVML shutdown failed: %s", exc)
