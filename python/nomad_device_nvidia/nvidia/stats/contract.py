"""The stats engine contract shared by the native (Rust) and pure-Python engines.

An engine owns the tracked device set (replaced after each fingerprint) and
turns one tick into a serialized ``device_pb2.StatsResponse``; the Stats
handler yields those bytes to grpcio unchanged. Both engines import this
module, and stats.choose (which picks one) imports them: no import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nomad_device_nvidia.nvidia.nvml.executor import Executor
    from nomad_device_nvidia.nvidia.nvml.lanes import LaneTable


@dataclass(frozen=True)
class TrackedDevice:
    device_id: str  # the ID Nomad knows: GPU UUID, MIG instance UUID, or a share of one
    # NVML UUID used to get the handle (nvmlDeviceGetHandleByUUID). Shares of
    # one GPU have the same UUID; engines read it once per tick for all.
    uuid: str
    group: str  # DeviceGroup.name it belongs to
    # The physical GPU's UUID: the lane a read takes (a MIG instance shares its
    # GPU's, so a GPU that stops answering holds one thread). "": uuid is the GPU's own.
    gpu: str = ""

    @property
    def lane(self) -> str:
        return self.gpu or self.uuid


class StatsEngine(Protocol):
    def track(self, devices: Sequence[TrackedDevice]) -> None: ...

    def collect(self) -> bytes: ...

    def close(self) -> None: ...


class Ticker(Protocol):
    """An engine's clock, as the event loop sees it (stats/ticking.py, or the Rust one).

    One thread per engine collects whenever a subscribed interval is due and
    makes `fileno()` readable once for the answers waiting; the loop watches
    it (`loop.add_reader`) and takes them with `drain`. Only `close` may wait
    (for a collection in progress, at most the engine's deadline): it runs off
    the loop. Intervals are integer nanoseconds, so that keys compare exactly.
    """

    def fileno(self) -> int: ...

    def set_intervals(self, intervals_ns: Sequence[int]) -> None:
        """Subscribe exactly these; one not subscribed before is due at once."""

    def track(self, devices: Sequence[TrackedDevice]) -> None:
        """The tracked set, applied before the next collection; never waits."""

    def drain(self) -> list[tuple[int, bytes]]:
        """The answers waiting: at most one per interval (the latest)."""

    @property
    def closed(self) -> bool:
        """The engine was found closed: no more answers come."""

    @property
    def collections(self) -> int:
        """Collections so far, each shared by every interval due at its moment."""

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
    # The python engine's NVML calls run on this executor (the plugin's, so a
    # blocked GPU holds one thread for the whole process); None: its own.
    calls: Executor | None = None
    # The native engine's reads take the GPUs' lanes from this table (the
    # executor's), and its tick deadline follows the table's; None: its own.
    lanes: LaneTable | None = None

    @property
    def use_fields(self) -> bool:
        return self.extended if self.batched is None else self.batched
