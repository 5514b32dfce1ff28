"""Types of the Rust extension module (checked by mypy.stubtest)."""

from collections.abc import Sequence
from typing import final

__all__ = ["Lanes", "StatsEngine", "StatsTicker", "__version__"]
__version__: str

@final
class StatsEngine:
    """Owns an NVML handle (dlopen of `library`, default the libnvidia-ml.so.1
    the process already loaded) and the tracked devices; each
    tick reads them in parallel with the GIL released."""

    def __new__(
        cls,
        library: str | None = None,
        *,
        extended: bool = False,
        batched: bool | None = None,
        timeout: float = 1.0,
        max_workers: int = 32,
        lanes: Lanes | None = None,
    ) -> StatsEngine: ...
    def track(self, devices: Sequence[tuple[str, str, str, str]]) -> None:
        """Replace the tracked set with (device_id, uuid, group, gpu) tuples;
        device IDs with the same uuid share one read per tick; a read takes
        the lane of its physical GPU `gpu` ("": uuid is the GPU's own)."""
    def collect(self) -> bytes:
        """One tick: a serialized StatsResponse."""
    def take_log(self) -> list[tuple[str, str]]:
        """(level, message) events since the last call; level is "info" or
        "warning". Still answers after close()."""
    @property
    def tracked(self) -> int: ...
    def close(self) -> None: ...

@final
class Lanes:
    """The per-GPU lanes shared by the Python executor and the stats engine,
    and the process's NVML deadline (seconds)."""

    def __new__(cls, deadline: float) -> Lanes: ...
    @property
    def deadline(self) -> float: ...
    def set_deadline(self, deadline: float) -> None: ...
    def try_hold(self, key: str, owner: int, what: str) -> tuple[int, float, str] | None:
        """Take `key` for `owner` if free or already theirs: None; else its
        holder as (owner, seconds held, what)."""
    def release(self, key: str, owner: int) -> bool: ...
    def holder(self, key: str) -> tuple[int, float, str] | None: ...
    def held(self) -> list[tuple[str, int, float, str]]:
        """Every lane held now: (key, owner, seconds held, what)."""

@final
class StatsTicker:
    """The clock of one StatsEngine: a Rust thread that collects whenever a
    subscribed interval is due and makes fileno() readable once for the
    answers waiting (one per interval, the latest)."""

    def __new__(cls, engine: StatsEngine) -> StatsTicker: ...
    def fileno(self) -> int: ...
    def set_intervals(self, intervals_ns: Sequence[int]) -> None:
        """Subscribe exactly these intervals (ns); a new one is due at once."""
    def track(self, devices: Sequence[tuple[str, str, str, str]]) -> None:
        """The tracked set, as (device_id, uuid, group, gpu), for the next collection; never waits."""
    def drain(self) -> list[tuple[int, bytes]]:
        """(interval in ns, serialized StatsResponse) for each answer waiting."""
    @property
    def closed(self) -> bool: ...
    @property
    def collections(self) -> int: ...
    def close(self) -> None:
        """Stop the clock; waits at most for the collection in progress."""
