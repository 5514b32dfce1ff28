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

    def close(self) -> None:
        self._engine.close()
        # The log outlives the Rust engine: this takes what close() itself
        # logged (a read still hung) along with anything not yet taken.
        self._flush_log()

    def _flush_log(self) -> None:
        for level, message in self._engine.take_log():
            log.log(logging.WARNING if level == "warning" else logging.INFO, "%s", message)
