"""One stats engine per plugin process, shared by every Stats stream.

Each stream keeps its own interval and gets a tick of its own, but all ticks go
through one engine: one NVML session, one worker pool and one XID event set
however many streams Nomad (or anyone) opens. The engine is built on the first
tick, rebuilt when `stats_engine` / `extended_stats` change or NVML was
re-initialised, and closed when the last stream closes or the driver goes away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from nomad_device_nvidia.nvidia.nvml.executor import SYSTEM, Executor, CallTimeout, RunnerClosed
from nomad_device_nvidia.nvidia.config import NvidiaConfig
from nomad_device_nvidia.nvidia.device_watch import DeviceWatch, NvmlState
from nomad_device_nvidia.nvidia.stats.choose import EngineOptions, StatsEngine, TrackedDevice, make_stats_engine

log = logging.getLogger(__name__)

Tracked = Callable[[], tuple[int, list[TrackedDevice]]]


def open_stats_engine(kind: str, options: EngineOptions) -> StatsEngine:
    return make_stats_engine(kind, options=options)


class StatsHub:
    """`tracked` returns (generation, devices) of what the fingerprint offers now."""

    def __init__(
        self, *, watch: DeviceWatch, runner: Executor, config: Callable[[], NvidiaConfig], tracked: Tracked
    ) -> None:
        self._watch = watch
        self._runner = runner
        self._config = config
        self._tracked = tracked
        self._lock = threading.Lock()
        self._streams = 0
        self._engine: StatsEngine | None = None
        # (kind, extended, tick deadline, NVML epoch) of the engine in use
        self._built_for: tuple[str, bool, float, int] = ("", False, 0.0, -1)
        self._generation = -1

    def join(self) -> None:
        with self._lock:
            self._streams += 1

    def leave(self) -> None:
        with self._lock:
            self._streams -= 1
            if self._streams > 0:
                return
            engine, self._engine = self._engine, None
        self._drop(engine)

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        self._drop(engine)

    def collect(self) -> bytes | None:
        """One tick for one stream; None while NVML is not ready (nothing to read)."""
        with self._lock:
            if self._watch.state is not NvmlState.READY or self._watch.inventory is None:
                engine, self._engine = self._engine, None
                self._drop(engine)
                return None
            cfg = self._config()
            # One deadline for every NVML call: a tick waits `call_timeout` for a device.
            timeout = cfg.health.call_timeout
            wanted = (cfg.stats_engine, cfg.extended_stats, timeout, self._watch.epoch)
            if self._engine is None or wanted != self._built_for:
                self._drop(self._engine)
                self._engine = None
                options = EngineOptions(
                    extended=cfg.extended_stats, timeout=timeout, calls=self._runner, lanes=self._runner.lanes
                )
                try:
                    # Building one inits NVML and makes an event set: under the deadline too.
                    self._engine = self._runner.call(SYSTEM, open_stats_engine, cfg.stats_engine, options)
                except (CallTimeout, RunnerClosed) as exc:
                    log.warning("opening the stats engine: %s; trying again at the next tick", exc)
                    return None
                self._watch.add_engine(self._engine)
                self._built_for, self._generation = wanted, -1
            engine = self._engine
            generation, devices = self._tracked()
            try:
                if generation != self._generation:
                    engine.track(devices)
                    self._generation = generation
                return engine.collect()
            except RuntimeError as exc:  # closed by the watch as the driver went away
                log.info("stats engine closed (%s); reopening once NVML is back", exc)
                self._engine = None
                self._drop(engine)
                return None

    def _drop(self, engine: StatsEngine | None) -> None:
        if engine is not None:
            self._watch.remove_engine(engine)
            engine.close()
