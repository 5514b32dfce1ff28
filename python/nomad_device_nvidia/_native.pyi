"""Types of the Rust extension module (checked by mypy.stubtest)."""

from collections.abc import Sequence
from typing import final

__all__ = ["StatsEngine", "StatsTicker", "__version__"]
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
    ) -> StatsEngine: ...
    def track(self, devices: Sequence[tuple[str, str, str]]) -> None:
        """Replace the tracked set with (device_id, uuid, group) triples;
        device IDs with the same uuid share one read per tick."""
    def collect(self) -> bytes:
        """One tick: a serialized StatsResponse."""
    def take_log(self) -> list[tuple[str, str]]:
        """(level, message) events since the last call; level is "info" or
        "warning". Still answers after close()."""
    @property
    def tracked(self) -> int: ...
    def close(self) -> None: ...

@final
class StatsTicker:
    """The clock of one StatsEngine: a Rust thread that collects whenever a
    subscribed interval is due and makes fileno() readable once for the
    answers waiting (one per interval, the latest)."""

    def __new__(cls, engine: StatsEngine) -> StatsTicker: ...
    def fileno(self) -> int: ...
    def set_intervals(self, intervals_ns: Sequence[int]) -> None:
        """Subscribe exactly these intervals (ns); a new one is due at once."""
    def track(self, devices: Sequence[tuple[str, str, str]]) -> None:
        """The tracked set for the next collection; never waits."""
    def drain(self) -> list[tuple[int, bytes]]:
        """(interval in ns, serialized StatsResponse) for each answer waiting."""
    @property
    def closed(self) -> bool: ...
    @property
    def collections(self) -> int: ...
    def close(self) -> None:
        """Stop the clock; waits at most for the collection in progress."""
