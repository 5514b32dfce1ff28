"""The stats engine contract shared by the native (Rust) and pure-Python engines.

An engine owns the tracked device set (replaced after each fingerprint) and
turns one tick into a serialized ``device_pb2.StatsResponse``; the Stats
handler yields those bytes to grpcio unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from nomad_device_nvidia.nvidia.config import STATS_ENGINES

if TYPE_CHECKING:
    from nomad_device_nvidia.nvidia.calls import CallRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackedDevice:
    device_id: str  # the ID Nomad knows: GPU UUID, MIG instance UUID, or a share of one
    # NVML UUID used to get the handle (nvmlDeviceGetHandleByUUID). Shares of
    # one GPU have the same UUID; engines read it once per tick for all.
    uuid: str
    group: str  # DeviceGroup.name it belongs to


class StatsEngine(Protocol):
    def track(self, devices: Sequence[TrackedDevice]) -> None: ...

    def collect(self) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EngineOptions:
    """Tuning shared by both engines (the python engine ignores the pool knobs)."""

    extended: bool = False
    # ECC counters (and energy) in one nvmlDeviceGetFieldValues call instead of
    # nvmlDeviceGetDetailedEccErrors (+ the energy call). None: only when
    # extended, the one case where it saves a call (measured: benches/).
    batched: bool | None = None
    # Seconds a tick waits for one device before its values read "N/A".
    timeout: float = 1.0
    max_workers: int = 32
    # The library the native engine dlopens; None means libnvidia-ml.so.1, which
    # resolves to the one the process already loaded (real or simulated).
    library: str | None = None
    # The python engine's NVML calls run on these lanes (the plugin's, so a
    # blocked GPU holds one thread for the whole process); None: its own.
    calls: CallRunner | None = None

    @property
    def use_fields(self) -> bool:
        return self.extended if self.batched is None else self.batched


def make_stats_engine(
    kind: str = "native", extended: bool = False, *, options: EngineOptions | None = None
) -> StatsEngine:
    """Build an engine; "native" falls back to "python" with a warning when the extension cannot load.

    `extended` is shorthand for ``EngineOptions(extended=True)``; with `options`, either turns extended stats on.
    """
    if kind not in STATS_ENGINES:
        raise ValueError(f"stats engine {kind!r} is not one of {', '.join(STATS_ENGINES)}")
    opts = options or EngineOptions()
    if extended and not opts.extended:
        opts = replace(opts, extended=True)
    if kind == "native":
        try:
            from nomad_device_nvidia.nvidia.stats_native import NativeStatsEngine

            engine: StatsEngine = NativeStatsEngine(opts)
            log.info("stats engine: native", extra={"extended": opts.extended})
            return engine
        except Exception as exc:  # ImportError, or the extension failing to open NVML
            log.warning("native stats engine unavailable (%s); using the python engine", exc)
    from nomad_device_nvidia.nvidia.stats_python import PythonStatsEngine

    engine = PythonStatsEngine(opts)
    log.info("stats engine: python", extra={"extended": opts.extended})
    return engine
