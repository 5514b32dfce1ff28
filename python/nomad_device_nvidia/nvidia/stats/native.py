"""The native stats engine: a thin wrapper over ``_native.StatsEngine`` (Rust).

Each tick runs in Rust with the GIL released; this wrapper only forwards the
tracked set and turns the engine's log events into log records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nomad_device_nvidia import _native
from nomad_device_nvidia.nvidia.stats.contract import EngineOptions, TrackedDevice

log = logging.getLogger(__name__)


class NativeStatsEngine:
    def __init__(self, options: EngineOptions = EngineOptions()) -> None:
        self._engine = _native.StatsEngine(
            options.library,
            extended=options.extended,
            batched=options.batched,
            timeout=options.timeout,
            max_workers=options.max_workers,
            # The process's GPU lanes and deadline, shared with the executor.
            lanes=options.lanes if isinstance(options.lanes, _native.Lanes) else None,
        )

    def track(self, devices: Sequence[TrackedDevice]) -> None:
        self._engine.track([(d.device_id, d.uuid, d.group, d.gpu) for d in devices])

    def collect(self) -> bytes:
        data = self._engine.collect()
        self._flush_log()
        return data

    def ticker(self) -> NativeTicker:
        """The engine's clock: a Rust thread that collects and signals the loop once per answer."""
        return NativeTicker(self)

    def close(self) -> None:
        self._engine.close()
        # The log outlives the Rust engine: this takes what close() itself
        # logged (a read still hung) along with anything not yet taken.
        self._flush_log()

    def flush_log(self) -> None:
        self._flush_log()

    def _flush_log(self) -> None:
        for level, message in self._engine.take_log():
            log.log(logging.WARNING if level == "warning" else logging.INFO, "%s", message)


class NativeTicker:
    """`contract.Ticker` over ``_native.StatsTicker``; the engine's log is taken at each drain."""

    def __init__(self, engine: NativeStatsEngine) -> None:
        self._owner = engine
        self._ticker = _native.StatsTicker(engine._engine)

    def fileno(self) -> int:
        return int(self._ticker.fileno())

    def set_intervals(self, intervals_ns: Sequence[int]) -> None:
        self._ticker.set_intervals(list(intervals_ns))

    def track(self, devices: Sequence[TrackedDevice]) -> None:
        self._ticker.track([(d.device_id, d.uuid, d.group, d.gpu) for d in devices])

    def drain(self) -> list[tuple[int, bytes]]:
        answers: list[tuple[int, bytes]] = self._ticker.drain()
        self._owner.flush_log()
        return answers

    @property
    def closed(self) -> bool:
        return bool(self._ticker.closed)

    @property
    def collections(self) -> int:
        return int(self._ticker.collections)

    def close(self) -> None:
        self._ticker.close()
