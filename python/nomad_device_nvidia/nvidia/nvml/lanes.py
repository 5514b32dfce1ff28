"""The per-GPU lane table the executor and the Rust stats engine share.

A thread takes a GPU's lane before it calls NVML on that GPU and gives it back
after, so a GPU that stops answering keeps one thread in the whole process:
whoever comes next finds the lane held past the deadline and skips the GPU at
once. With the extension loaded the table is `_native.Lanes`
(src_rust/stats_core/src/lanes.rs), the very one the native stats engine's
workers take lanes from; without it, `PyLanes` here, the same interface for
the Python side alone (the native engine cannot run then anyway).

The table also holds the process's one NVML deadline: the executor sets it
(`health { call_timeout }`), the native engine's tick reads it.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

# (owner, seconds held, what) of a lane's holder.
Holder = tuple[int, float, str]


class LaneTable(Protocol):
    @property
    def deadline(self) -> float: ...

    def set_deadline(self, deadline: float) -> None: ...

    def try_hold(self, key: str, owner: int, what: str) -> Holder | None:
        """Take `key` for `owner` if it is free or already theirs (None); else who holds it."""
        ...

    def release(self, key: str, owner: int) -> bool: ...

    def holder(self, key: str) -> Holder | None: ...

    def held(self) -> list[tuple[str, int, float, str]]:
        """Every lane held now: (key, owner, seconds held, what)."""
        ...


def _check(deadline: float) -> float:
    if not deadline > 0:
        raise ValueError(f"deadline must be a positive number of seconds, got {deadline}")
    return deadline


class PyLanes:
    """`_native.Lanes` in Python, for a process without the extension."""

    def __init__(self, deadline: float) -> None:
        self._deadline = _check(deadline)
        self._lock = threading.Lock()
        self._held: dict[str, tuple[int, float, str]] = {}  # key -> (owner, since, what)

    @property
    def deadline(self) -> float:
        return self._deadline

    def set_deadline(self, deadline: float) -> None:
        self._deadline = _check(deadline)

    def try_hold(self, key: str, owner: int, what: str) -> Holder | None:
        with self._lock:
            held = self._held.get(key)
            if held is None:
                self._held[key] = (owner, time.monotonic(), what)
                return None
            if held[0] == owner:
                return None
            return (held[0], time.monotonic() - held[1], held[2])

    def release(self, key: str, owner: int) -> bool:
        with self._lock:
            held = self._held.get(key)
            if held is None or held[0] != owner:
                return False
            del self._held[key]
            return True

    def holder(self, key: str) -> Holder | None:
        with self._lock:
            held = self._held.get(key)
            return None if held is None else (held[0], time.monotonic() - held[1], held[2])

    def held(self) -> list[tuple[str, int, float, str]]:
        now = time.monotonic()
        with self._lock:
            return [(k, o, now - since, what) for k, (o, since, what) in self._held.items()]


def make_lanes(deadline: float) -> LaneTable:
    """The extension's table when it loads (so the native engine can share it), else PyLanes."""
    try:
        from nomad_device_nvidia import _native
    except ImportError:
        return PyLanes(deadline)
    lanes: LaneTable = _native.Lanes(deadline)
    return lanes
