"""The executor: NVML work under one deadline, on worker threads, one lane per GPU.

A GPU about to fall off the bus often makes every NVML call on it block. So
no thread that reports health or answers an RPC calls NVML itself: it hands
the work to the `Executor`, which runs it on a bounded pool of workers and
waits at most `timeout` for each NVML call the work makes. Work is keyed by a
lane (a GPU): one piece of work per lane at a time, so a blocked GPU holds at
most one thread however many scans, probes, streams or Reserve calls come, and
further work on that lane is refused at once until the blocked call returns.
A worker held by a blocked call is replaced, so the other GPUs keep their pace.

The GPU lanes (a GPU's UUID as the key) live in a table shared with the native
stats engine (`lanes.py`): whichever side enters a GPU first holds its lane,
and the other skips the GPU while it is stuck there. The table carries the
deadline too, so `set_timeout` reaches the native engine's tick as well.

The protocol: `submit(lane, work)` -> `Job`, `wait(job)` (or `wait_until`),
`stuck()`; `Calls.hold` for work that reads several GPUs in one job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, ParamSpec, Protocol, TypeVar

from nomad_device_nvidia.nvidia.config import format_duration
from nomad_device_nvidia.nvidia.nvml.lanes import Holder, LaneTable, make_lanes

log = logging.getLogger(__name__)

T = TypeVar("T")
T2 = TypeVar("T2")
P = ParamSpec("P")

# Lanes for the calls that are not about one GPU.
SYSTEM = "system"
EVENTS = "events"
PROBE = "probe"  # a probe round's lane is (PROBE, a new object)


def _is_gpu(lane: Hashable) -> bool:
    """A GPU's lane (its UUID, or `gpuN` before the first scan knows it): shared with the native engine."""
    return isinstance(lane, str) and lane not in (SYSTEM, EVENTS)

# An idle worker exits after this long without work (a burst's extra workers go
# soon; the one or two that steady work keeps busy stay).
_IDLE_EXIT_S = 10.0
# How often a submitter re-checks a busy lane.
_POLL_S = 0.05
# The longest a waiter sleeps on a call in flight before it looks again (a
# deadline lowered by SetConfig meanwhile applies within this).
_WAIT_SLICE_S = 5.0


class CallTimeout(Exception):
    """An NVML call did not return within the deadline (it may still return later)."""

    def __init__(self, call: str, timeout: float, lane: Hashable) -> None:
        super().__init__(f"{call} did not return within {format_duration(timeout)}")
        self.call = call
        self.timeout = timeout
        self.lane = lane


class RunnerClosed(Exception):
    """The runner is shut down; no more NVML work is accepted."""


class Calls(Protocol):
    """What work functions call NVML through: `c(pynvml.nvmlDeviceGetName, handle)`.

    Work that reads several GPUs in one job (the python stats engine's tick)
    holds each GPU's lane while it reads it, so other work on that GPU waits or
    is refused as if it were queued there, and a blocked read shows on its lane.
    """

    def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    def hold(self, lane: Hashable, until: float) -> bool:
        """Take `lane` for this job, waiting for it until time.monotonic() reaches `until`;
        False when it is still busy then, or its call is overdue."""
        ...

    def release(self, lane: Hashable) -> None: ...


class _Direct:
    """`Calls` without a deadline or lanes, for code that runs outside the plugin (probe, tests)."""

    def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return fn(*args, **kwargs)

    def hold(self, lane: Hashable, until: float) -> bool:
        return True

    def release(self, lane: Hashable) -> None:
        pass


direct: Calls = _Direct()


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__name__", None) or repr(fn)


class Job(Generic[T]):
    """One piece of work on a lane; records which NVML call it is in and since when."""

    def __init__(self, runner: Executor, lane: Hashable, work: Callable[[Calls], T], what: str = "") -> None:
        self._runner = runner
        self.lane = lane
        self.what = what or "an NVML call of the plugin"  # for the native engine, should it find this stuck
        self.held: set[Hashable] = set()  # other lanes this job holds now
        self._work = work
        self.done = threading.Event()  # the work has run to its end
        self.wake = threading.Event()  # done, or the executor closed: whoever waits looks again
        self._result: T | None = None
        self._error: BaseException | None = None
        self.call = ""  # the NVML call in flight ("" between calls)
        self.call_started = 0.0  # time.monotonic() when it began; 0 between calls
        self.last_call = ""

    def __call__(self, fn: Callable[P, T2], *args: P.args, **kwargs: P.kwargs) -> T2:
        self.call = self.last_call = _name(fn)
        self.call_started = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.call_started = 0.0
            self.call = ""

    def hold(self, lane: Hashable, until: float) -> bool:
        return self._runner._hold(self, lane, until)  # type: ignore[arg-type]

    def release(self, lane: Hashable) -> None:
        self._runner._release(self, lane)  # type: ignore[arg-type]

    def run(self) -> None:
        try:
            self._result = self._work(self)
        except BaseException as exc:  # handed to whoever waits
            self._error = exc
        finally:
            self.done.set()
            self.wake.set()

    def overdue(self, timeout: float, now: float) -> str:
        """The call in flight when it has run past `timeout`, else ""."""
        started, call = self.call_started, self.call
        if started and now - started >= timeout:
            return call or self.last_call
        return ""

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class _Elsewhere:
    """A GPU lane held by someone outside this executor (the native stats engine's read)."""

    def __init__(self, lane: Hashable, holder: Holder) -> None:
        self.lane = lane
        self.what = holder[2]
        self._since = time.monotonic() - holder[1]

    def overdue(self, timeout: float, now: float) -> str:
        return self.what if now - self._since >= timeout else ""


class Executor:
    """Runs NVML work on worker threads, one job per lane at a time, each call under `timeout`.

    Threads: at most `max_workers` running work that is on time or idle (an idle
    one exits after `_IDLE_EXIT_S`), plus one per lane whose call is overdue.
    `lanes`: the GPU lane table to share (one is made otherwise: the extension's
    when it loads, to hand to the native stats engine).
    """

    def __init__(self, timeout: float, *, max_workers: int = 8, name: str = "nvml",
                 lanes: LaneTable | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._timeout = timeout
        self._table = lanes if lanes is not None else make_lanes(timeout)
        self._table.set_deadline(timeout)
        self._max_workers = max(1, max_workers)
        self._name = name
        lock = threading.Lock()
        self._lock = lock
        self._cond = threading.Condition(lock)
        # Idle workers, each on a condition of its own, the latest idle last: work
        # goes to the worker that idled last, so the others time out and exit.
        self._sleepers: list[threading.Condition] = []
        self._freed = threading.Condition(lock)  # submitters wait here for a busy lane
        self._freed_waiters = 0  # how many: a lane given back notifies only when someone waits
        self._queue: deque[Job[object]] = deque()
        self._lanes: dict[Hashable, Job[object]] = {}  # lane -> job started or queued there
        self._running: set[Job[object]] = set()  # jobs a worker is running
        self._stuck: set[Job[object]] = set()  # running jobs seen overdue; their worker was replaced
        self._idle = 0
        self._closed = False
        self._on_return: list[Callable[[Hashable], None]] = []
        self._on_idle: list[Callable[[], None]] = []  # run once when no job is running

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def lanes(self) -> LaneTable:
        """The GPU lane table, with the deadline: the native stats engine takes both."""
        return self._table

    def set_timeout(self, timeout: float) -> None:
        """The one NVML deadline: every call of ours, and the native engine's tick (through the lanes)."""
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        with self._cond:
            self._timeout = timeout
            self._table.set_deadline(timeout)

    def on_return(self, callback: Callable[[Hashable], None]) -> None:
        """`callback(lane)` runs (on the worker) when a call that was overdue finally returns."""
        with self._cond:
            self._on_return.append(callback)

    def when_idle(self, callback: Callable[[], None]) -> None:
        """`callback()` once no job is running (at once when none is): what waits for NVML
        to be free of our calls waits for this, not on a timer. The same callback twice is kept once."""
        with self._cond:
            if self._running:
                if callback not in self._on_idle:
                    self._on_idle.append(callback)
                return
        callback()

    # -- state --

    def live(self, *, besides: Hashable | None = None) -> int:
        """Jobs a worker is running now (inside NVML or about to be), those on lane `besides` left out."""
        with self._cond:
            return sum(1 for job in self._running if besides is None or job.lane != besides)

    def held_elsewhere(self) -> int:
        """GPU lanes held by the native stats engine now: after it is closed, its reads that
        have not returned (each keeps its own NVML reference, so nobody waits for them)."""
        with self._cond:
            mine = {id(job) for job in self._running} | {id(job) for job in self._lanes.values()}
        return sum(1 for _key, owner, _held_for, _what in self._table.held() if owner not in mine)

    def overdue_on(self, lane: Hashable) -> str:
        """The overdue call of whoever holds `lane` (a job, on its own lane or one it holds,
        or the native stats engine on a GPU's lane), else ""."""
        with self._cond:
            now = time.monotonic()
            job = self._lanes.get(lane)
            if job is not None:
                return job.overdue(self._timeout, now)
            if _is_gpu(lane):
                holder = self._table.holder(lane)  # type: ignore[arg-type]
                if holder is not None:
                    return _Elsewhere(lane, holder).overdue(self._timeout, now)
            return ""

    def stuck(self) -> dict[Hashable, tuple[float, str]]:
        """Lane -> (seconds in it, the call), for every lane stuck past the deadline, whichever
        side is stuck there: a job (its own lane and the GPU lanes it holds) or the native engine."""
        now = time.monotonic()
        out: dict[Hashable, tuple[float, str]] = {}
        with self._cond:
            mine = {id(job) for job in self._lanes.values()}
            for job in self._running:
                call = job.overdue(self._timeout, now)
                if call:
                    for lane in (job.lane, *job.held):
                        out[lane] = (now - job.call_started if job.call_started else self._timeout, call)
        for key, owner, held_for, what in self._table.held():
            if owner not in mine and held_for >= self._timeout:
                out.setdefault(key, (held_for, what))
        return out

    def close(self) -> None:
        """Refuse new work; idle workers exit (busy ones when their job returns)."""
        with self._cond:
            self._closed = True
            for sleeper in self._sleepers:
                sleeper.notify()
            self._freed.notify_all()
            for job in (*self._running, *self._queue):
                job.wake.set()  # its waiter gets RunnerClosed now, not at its next look

    # -- submitting and waiting --

    def try_submit(self, lane: Hashable, work: Callable[[Calls], T], until: float = 0.0, *,
                   what: str = "") -> Job[T] | None:
        """Queue `work` on `lane` once it is free, waiting for it until time.monotonic()
        reaches `until` at most; None when it is still busy then, or its call is overdue."""
        def pause(busy: Job[object] | _Elsewhere) -> float | None:
            now = time.monotonic()
            if now >= until or busy.overdue(self._timeout, now):
                return None
            return min(until - now, _POLL_S)
        return self._when_free(lane, work, what, pause)

    def submit(self, lane: Hashable, work: Callable[[Calls], T], *, what: str = "") -> Job[T]:
        """Queue `work` on `lane` once the lane is free; CallTimeout at once if its call is overdue.
        `what` names the work for the native engine, should it find the GPU stuck in it."""
        def pause(busy: Job[object] | _Elsewhere) -> float:
            self._check_overdue(busy)  # raises when the lane's call is stuck
            return _POLL_S
        job = self._when_free(lane, work, what, pause)
        assert job is not None  # this pause never gives up: it raises
        return job

    def _when_free(self, lane: Hashable, work: Callable[[Calls], T], what: str,
                   pause: Callable[[Job[object] | _Elsewhere], float | None]) -> Job[T] | None:
        """Queue `work` on `lane` once it is free. While it is busy, `pause(its holder)`
        says how long to wait before looking again, or None to give up (None back)."""
        job: Job[T] = Job(self, lane, work, what)
        with self._cond:
            while True:
                if self._closed:
                    raise RunnerClosed("the plugin is shutting down")
                busy = self._take(lane, job)  # type: ignore[arg-type]
                if busy is None:
                    return self._enqueue(job)
                wait = pause(busy)
                if wait is None:
                    return None
                self._wait_freed(wait)

    def wait(self, job: Job[T]) -> T:
        """The job's result; CallTimeout as soon as one of its calls passes the deadline."""
        while not job.wake.wait(self._slice(job)):
            with self._cond:
                if self._closed:
                    raise RunnerClosed("the plugin is shutting down")
                self._reap()
                self._check_overdue(job)
        if not job.done.is_set():
            raise RunnerClosed("the plugin is shutting down")
        return job.result()

    def wait_until(self, job: Job[T], deadline: float) -> bool:
        """Wait for `job` until time.monotonic() reaches `deadline`; whether it finished."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with self._cond:
                    self._reap()
                return job.done.is_set()
            if job.wake.wait(min(remaining, self._slice(job))):
                return job.done.is_set()  # else the executor closed
            with self._cond:
                self._reap()

    def run(self, lane: Hashable, work: Callable[[Calls], T], *, what: str = "") -> T:
        return self.wait(self.submit(lane, work, what=what))

    def call(self, lane: Hashable, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One NVML call on `lane` under the deadline."""
        return self.run(lane, lambda c: c(fn, *args, **kwargs))

    def claim(self, lane: Hashable, what: str) -> object | None:
        """Hold `lane` for a thread of its own that calls NVML itself (the event watcher's
        wait), at once: a claim to give back with `unclaim`, or None when the lane is taken."""
        with self._cond:
            if self._closed:
                raise RunnerClosed("the plugin is shutting down")
            claim: Job[None] = Job(self, lane, lambda c: None, what=what)
            return claim if self._take(lane, claim) is None else None  # type: ignore[arg-type]

    def unclaim(self, lane: Hashable, claim: object) -> None:
        with self._cond:
            if claim is not None and self._lanes.get(lane) is claim:
                self._give_back(lane, claim)  # type: ignore[arg-type]
                self._notify_freed()

    def _hold(self, job: Job[object], lane: Hashable, until: float) -> bool:
        with self._cond:
            while True:
                busy = self._take(lane, job)
                if busy is None:
                    job.held.add(lane)
                    return True
                now = time.monotonic()
                if self._closed or now >= until or busy.overdue(self._timeout, now):
                    return False
                # A lane the native engine holds frees without a notify here: polled.
                self._wait_freed(min(until - now, _POLL_S))

    def _release(self, job: Job[object], lane: Hashable) -> None:
        with self._cond:
            if lane != job.lane and self._lanes.get(lane) is job:
                self._give_back(lane, job)
                self._notify_freed()
            job.held.discard(lane)

    # -- the lanes (under self._cond) --

    def _take(self, lane: Hashable, job: Job[object]) -> Job[object] | _Elsewhere | None:
        """Take `lane` for `job`: None when it did; else who holds it."""
        mine = self._lanes.get(lane)
        if mine is not None:
            return None if mine is job else mine
        if _is_gpu(lane):
            holder = self._table.try_hold(lane, id(job), job.what)  # type: ignore[arg-type]
            if holder is not None:
                return _Elsewhere(lane, holder)
        self._lanes[lane] = job
        return None

    def _give_back(self, lane: Hashable, job: Job[object]) -> None:
        del self._lanes[lane]
        if _is_gpu(lane):
            self._table.release(lane, id(job))  # type: ignore[arg-type]

    # -- internals (under self._cond) --

    def _wait_freed(self, timeout: float) -> None:
        self._freed_waiters += 1
        try:
            self._freed.wait(timeout)
        finally:
            self._freed_waiters -= 1

    def _notify_freed(self) -> None:
        # A probe round gives back a lane per GPU; notify_all costs a lock round trip
        # even with nobody waiting.
        if self._freed_waiters:
            self._freed.notify_all()

    def _slice(self, job: Job[object] | Job[T]) -> float:
        # Until the call in flight would be overdue, so a waiter wakes once a call;
        # a call that returns wakes it at once (job.wake), as does close().
        started = job.call_started
        if started:
            return max(0.005, min(_WAIT_SLICE_S, started + self._timeout - time.monotonic()))
        # Not started yet: its first call starts soon (a worker is on its way), and
        # a call that starts is not overdue before a full timeout anyway.
        return min(_WAIT_SLICE_S, self._timeout)

    def _check_overdue(self, job: Job[object] | Job[T] | _Elsewhere) -> None:
        call = job.overdue(self._timeout, time.monotonic())
        if call:
            if isinstance(job, Job):
                self._mark_stuck(job)  # type: ignore[arg-type]
            raise CallTimeout(call, self._timeout, job.lane)

    def _reap(self) -> None:
        """Find running jobs past the deadline, so their workers are replaced."""
        now = time.monotonic()
        for job in list(self._running):
            if job not in self._stuck and job.overdue(self._timeout, now):
                self._mark_stuck(job)

    def _mark_stuck(self, job: Job[object]) -> None:
        if job in self._running and job not in self._stuck:
            self._stuck.add(job)
            log.debug("NVML call %s on %s is overdue; its worker is replaced", job.call, job.lane)
            self._spawn_if_needed()

    def _enqueue(self, job: Job[T]) -> Job[T]:
        """Queue `job`, which holds its lane."""
        self._queue.append(job)  # type: ignore[arg-type]
        if self._sleepers:
            self._sleepers.pop().notify()
        self._spawn_if_needed()
        return job

    def _spawn_if_needed(self) -> None:
        on_time = len(self._running) - len(self._stuck)
        waiting = len(self._queue) - self._idle
        if waiting > 0 and on_time + self._idle < self._max_workers:
            self._idle += 1  # counted idle until it takes a job
            threading.Thread(target=self._worker, name=f"{self._name}-call", daemon=True).start()

    def _worker(self) -> None:
        wake = threading.Condition(self._lock)
        with self._cond:
            try:
                while True:
                    idle_since = time.monotonic()
                    while not self._queue:
                        left = idle_since + _IDLE_EXIT_S - time.monotonic()
                        if self._closed or left <= 0:
                            return
                        self._sleepers.append(wake)
                        wake.wait(left)
                        if wake in self._sleepers:  # timed out (a notify pops it)
                            self._sleepers.remove(wake)
                    job = self._queue.popleft()
                    self._idle -= 1
                    self._running.add(job)
                    self._cond.release()
                    try:
                        job.run()
                    finally:
                        self._cond.acquire()
                    self._running.discard(job)
                    if not self._running and self._on_idle:
                        idle, self._on_idle = self._on_idle, []
                        self._cond.release()
                        try:
                            self._run_callbacks(idle)
                        finally:
                            self._cond.acquire()
                    was_stuck = job in self._stuck
                    self._stuck.discard(job)
                    for lane in (job.lane, *job.held):
                        if self._lanes.get(lane) is job:
                            self._give_back(lane, job)
                    job.held.clear()
                    self._idle += 1
                    self._notify_freed()
                    if was_stuck:
                        callbacks = list(self._on_return)
                        self._cond.release()
                        try:
                            for cb in callbacks:
                                try:
                                    cb(job.lane)
                                except Exception:
                                    log.exception("NVML call return callback failed")
                        finally:
                            self._cond.acquire()
                        # The replacement took this worker's place: one of the two goes.
                        if len(self._running) - len(self._stuck) + self._idle > self._max_workers:
                            return
            finally:
                self._idle -= 1

    @staticmethod
    def _run_callbacks(callbacks: list[Callable[[], None]]) -> None:
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.exception("NVML executor idle callback failed")

