"""Choosing a stats engine: the native (Rust) one, or the pure-Python one.

The contract both engines implement lives in stats.contract (imported by both,
so neither imports this module); it is re-exported here for callers.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from nomad_device_nvidia.nvidia.config import STATS_ENGINES
from nomad_device_nvidia.nvidia.stats.contract import EngineOptions, StatsEngine, TrackedDevice

__all__ = ["EngineOptions", "StatsEngine", "TrackedDevice", "make_stats_engine"]

log = logging.getLogger(__name__)


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
            from nomad_device_nvidia.nvidia.stats.native import NativeStatsEngine

            engine: StatsEngine = NativeStatsEngine(opts)
            log.info("stats engine: native", extra={"extended": opts.extended})
            return engine
        except Exception as exc:  # ImportError, or the extension failing to open NVML
            log.warning("native stats engine unavailable (%s); using the python engine", exc)
    from nomad_device_nvidia.nvidia.stats.python import PythonStatsEngine

    engine = PythonStatsEngine(opts)
    log.info("stats engine: python", extra={"extended": opts.extended})
    return engine
