"""The stats engine contract shared by the native (Rust) and pure-Python engines.

An engine owns the tracked device set (replaced after each fingerprint) and
turns one tick into a serialized ``device_pb2.StatsResponse``; the Stats
handler yields those bytes to grpcio unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

ENGINE_KINDS = ("native", "python")


@dataclass(frozen=True)
class TrackedDevice:
    device_id: str  # the ID Nomad knows: GPU UUID, or MIG instance UUID
    uuid: str  # NVML UUID used to get the handle (nvmlDeviceGetHandleByUUID)
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

    @property
    def use_fields(self) -> bool:
        return self.extended if self.batched is None else self.batched
    # Seconds a tick waits for one device before its values read "N/A".
    timeout: float = 1.0
    max_workers: int = 32
    # The library the native engine dlopens; None means libnvidia-ml.so.1, which
    # resolves to the one the process already loaded (real or simulated).
    library: str | None = None


def make_stats_engine(kind: str = "native", extended: bool = False, **options: object) -> StatsEngine:
    """Build an engine; "native" falls back to "python" with a warning when the extension cannot load."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"stats engine {kind!r} is not one of {', '.join(ENGINE_KINDS)}")
    opts = EngineOptions(extended=extended, **options)  # type: ignore[arg-type]
    if kind == "native":
        try:
            from nomad_device_nvidia.nvidia.stats_native import NativeStatsEngine

            return NativeStatsEngine(opts)
        except Exception as exc:  # ImportError, or the extension failing to open NVML
            log.warning("native stats engine unavailable (%s); using the python engine", exc)
    from nomad_device_nvidia.nvidia.stats_python import PythonStatsEngine

    return PythonStatsEngine(opts)
