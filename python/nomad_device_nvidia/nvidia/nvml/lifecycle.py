"""The NVML lifecycle as a state machine: states, events, one transition function, the backoff.

  absent     no libnvidia-ml.so.1 (or the configured one cannot load): tried
             again every fingerprint_period
  not ready  nvmlInit fails: retried with backoff (1 s doubling, at most
             fingerprint_period)
  ready      the driver answers; the device watch scans, probes and reads events
  gone       the driver went away or was replaced: once no NVML call of ours is
             live, NVML is released and the lifecycle is not ready again (the
             next init waits a backoff step, so a flapping driver is no loop)
  closed     the plugin is shut down: nothing opens NVML again

Every change of state goes through `Lifecycle.handle`, which logs one line per
change (never the same line twice in a row) and calls `on_change` when the
state changed. `Lifecycle` decides; it never waits: the device watch
(device_watch.py) schedules it, asking `due` when to come back.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nomad_device_nvidia.nvidia.config import format_duration
from nomad_device_nvidia.nvidia.nvml.executor import CallTimeout
from nomad_device_nvidia.nvidia.nvml.session import NvmlAbsent, NvmlUnavailable, SessionClosed

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0


class NvmlState(enum.Enum):
    ABSENT = "absent"
    NOT_READY = "not ready"
    READY = "ready"
    GONE = "gone"
    CLOSED = "closed"


# -- events --


@dataclass(frozen=True)
class LibraryAbsent:
    """No library to load. `configured`: the config named one (or a scenario), so its absence is an error."""

    reason: str
    configured: bool


@dataclass(frozen=True)
class InitFailed:
    """The library loaded but nvmlInit failed or did not return in time."""

    reason: str


@dataclass(frozen=True)
class Initialised:
    """nvmlInit succeeded."""


@dataclass(frozen=True)
class DriverLost:
    """A scan found the driver gone or replaced (not one GPU)."""

    reason: str


@dataclass(frozen=True)
class Released:
    """NVML was given back after the driver went away."""


@dataclass(frozen=True)
class ShutDown:
    """The plugin is shut down."""


Event = LibraryAbsent | InitFailed | Initialised | DriverLost | Released | ShutDown


class Session(Protocol):
    """What the lifecycle needs of an NVML session (`session.NvmlSession`, or a test's fake)."""

    def open(self, library: str, simulate: str) -> bool: ...

    def release(self) -> None: ...


class Backoff:
    """1 s, doubling, capped by the caller's period (which may change between steps)."""

    def __init__(self, first: float = BACKOFF_FIRST_S) -> None:
        self._first = first
        self._next = first

    def reset(self) -> None:
        self._next = self._first

    def delay(self, cap: float) -> float:
        d = min(self._next, cap)
        self._next = min(self._next * 2, cap)
        return d


class Lifecycle:
    """The state machine. Not thread-safe: one thread (the device watch's) drives it;
    others only read `state` and `reason`.

    `backoff` is shared with the watch's scans: it is reset only by a scan that finds
    the driver well, so a driver that comes back with every GPU lost backs off too.
    """

    def __init__(
        self,
        session: Session,
        on_change: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self._session = session
        self._on_change = on_change
        self._clock = clock
        self._log = logger
        self.backoff = Backoff()
        self._state = NvmlState.NOT_READY
        self._reason = ""
        self._said = ""
        self._next_try = 0.0
        self._tries = 0

    @property
    def state(self) -> NvmlState:
        return self._state

    @property
    def reason(self) -> str:
        """Why there is no NVML (the last such line, without what happens next); "" while ready."""
        return "" if self._state is NvmlState.READY else self._reason

    @property
    def tries(self) -> int:
        """How many times the session was asked to init NVML."""
        return self._tries

    @property
    def said(self) -> str:
        """The last line logged."""
        return self._said

    def due(self) -> float | None:
        """When the lifecycle wants its next step (a clock reading); None while ready, gone or closed."""
        if self._state in (NvmlState.ABSENT, NvmlState.NOT_READY):
            return self._next_try
        # Gone: no timer; the last call of ours returning wakes the scheduler
        # (the executor's when_idle, a retiring event watcher's when_ended).
        return None

    def say(self, level: int, line: str) -> None:
        """Log `line` unless it is the last line said: one line per change, not per try
        (the same failure again, another cycle of a driver that flaps)."""
        if line != self._said:
            self._log.log(level, "%s", line)
            self._said = line

    # -- the steps: each asks the session, then hands its outcome to `handle` --

    def open(self, library: str, simulate: str, period: float) -> NvmlState:
        """Try to init NVML (when absent or not ready and due); the state after."""
        if self._state not in (NvmlState.ABSENT, NvmlState.NOT_READY) or self._clock() < self._next_try:
            return self._state
        event: Event
        self._tries += 1
        # Should open raise something unforeseen (a bug), the next try is a period away,
        # not at once; `handle` sets the real time for every outcome it knows.
        self._next_try = self._clock() + period
        try:
            self._session.open(library, simulate)
        except SessionClosed:
            event = ShutDown()
        except NvmlAbsent as exc:
            event = LibraryAbsent(str(exc), bool(library or simulate))
        except NvmlUnavailable as exc:
            event = InitFailed(str(exc))
        except CallTimeout as exc:
            event = InitFailed(f"NVML failed to initialise: {exc}")
        else:
            event = Initialised()
        return self.handle(event, period)

    def release(self, idle: bool, period: float) -> NvmlState:
        """While gone: give NVML back once `idle` (no NVML call of ours live); the state after."""
        if self._state is NvmlState.GONE and idle:
            self._session.release()
            return self.handle(Released(), period)
        return self._state

    # -- the one transition function --

    def handle(self, event: Event, period: float) -> NvmlState:
        """Apply `event`: the new state, its log line, `on_change`, and when to try next.

        `period` is fingerprint_period: the absent state's retry interval and
        the cap of the backoff. Raises ValueError for an event the state has no
        transition for (a bug in the caller). Closed takes no event.
        """
        before = self._state
        if before is NvmlState.CLOSED:
            return before
        now = self._clock()
        waiting = before in (NvmlState.ABSENT, NvmlState.NOT_READY)
        if isinstance(event, ShutDown):
            self._state = NvmlState.CLOSED
            self._reason = "the plugin is shut down"
        elif isinstance(event, LibraryAbsent) and waiting:
            self._state = NvmlState.ABSENT
            self._reason = event.reason
            self._next_try = now + period
            self.say(
                logging.ERROR if event.configured else logging.INFO,
                f"{event.reason}; no NVIDIA devices will be reported (checking again every {format_duration(period)})",
            )
        elif isinstance(event, InitFailed) and waiting:
            self._state = NvmlState.NOT_READY
            self._reason = event.reason
            self._next_try = now + self.backoff.delay(period)
            self.say(logging.WARNING, f"{event.reason}; retrying with backoff")
        elif isinstance(event, Initialised) and waiting:
            # Not logged here: "NVML initialised" is said by the first scan that finds
            # the driver well, so a driver that comes back with every GPU lost logs nothing new.
            self._state = NvmlState.READY
        elif isinstance(event, DriverLost) and before is NvmlState.READY:
            self._state = NvmlState.GONE
            self._reason = event.reason
            self.say(logging.WARNING, f"{event.reason}; releasing NVML to initialise it again")
        elif isinstance(event, Released) and before is NvmlState.GONE:
            # Not logged: the next init says how it went. It waits a backoff step.
            self._state = NvmlState.NOT_READY
            self._next_try = now + self.backoff.delay(period)
        else:
            raise ValueError(f"the NVML lifecycle has no transition from {before.value} on {type(event).__name__}")
        if self._state is not before:
            self._on_change()
        return self._state
