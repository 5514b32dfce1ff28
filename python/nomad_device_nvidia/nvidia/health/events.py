"""The NVML event watcher: XIDs and double-bit ECC errors, as they come.

It waits on a thread of its own (`nvidia-events`), not on the executor: the
wait is long on purpose, so it would only hold a worker, and nobody waits for
it. The thread says how long its wait has been in progress (`waiting`); the
device watch reads that at each probe round (`check`), and a wait past its
length plus the call deadline is reported once, health relying on the probes
until it returns. Its other calls (the event set, the registrations on each
GPU's lane, a device's UUID) are ordinary executor work under the deadline.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pynvml

from nomad_device_nvidia.nvidia.config import HealthConfig
from nomad_device_nvidia.nvidia.fingerprint import UNSUPPORTED_CODES, GpuDevice, physical_devices
from nomad_device_nvidia.nvidia.health.book import ECC, HealthBook, xid_description
from nomad_device_nvidia.nvidia.nvml.executor import EVENTS, SYSTEM, Calls, CallTimeout, Executor, RunnerClosed
from nomad_device_nvidia.nvidia.nvml.fields import handle_address

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

_NO_INSTANCE = 0xFFFFFFFF
_EVENT_TYPES = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError

# An event wait lasts the probe interval, within these bounds: the watcher wakes
# no more often than the probes, which are what report a wait that blocks. A
# wait returns at once when an event comes; a stop takes effect when it returns.
_EVENT_WAIT_MIN_MS = 500
_EVENT_WAIT_MAX_MS = 5000
# Events taken in one job at most.
_EVENT_BATCH = 256
# One log line per GPU this often at most for XIDs that are an application's fault.
_APP_XID_LOG_S = 60.0


def event_wait_ms(config: HealthConfig) -> int:
    """How long one NVML event wait lasts under `config`."""
    return max(_EVENT_WAIT_MIN_MS, min(_EVENT_WAIT_MAX_MS, round(config.probe_interval * 1000)))


@dataclass(frozen=True)
class EventSource:
    """The event-set calls the watcher makes: NVML's (the default), or a test's own.
    The functions are named as NVML's, which is how a blocked wait is named."""

    create: Callable[[], Any] = pynvml.nvmlEventSetCreate
    wait: Callable[[Any, int], Any] = pynvml.nvmlEventSetWait_v2
    free: Callable[[Any], None] = pynvml.nvmlEventSetFree


class _Timed:
    """`Calls` for the watcher's own thread: no lanes, each call timed for `waiting`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.call = ""  # the call in progress ("" between calls)
        self.since = 0.0  # the clock when it began
        self.length = 0.0  # how long it waits on purpose (an event wait's length), seconds

    def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        self.call = getattr(fn, "__name__", None) or repr(fn)
        self.since = self._clock()
        try:
            return fn(*args, **kwargs)
        finally:
            self.call, self.since, self.length = "", 0.0, 0.0

    def hold(self, lane: object, until: float) -> bool:
        return True

    def release(self, lane: object) -> None:
        pass


class EventWatcher:
    """Waits on NVML events (XIDs, double-bit ECC) and marks the devices concerned.

    It runs on a thread of its own: it waits, handles what came, and waits
    again. One watcher waits at a time in the process: its thread holds the
    executor's events lane while it lives, so a watcher made while a stopped
    one's last wait is still out starts at a later `start`. A wait that blocks
    past its length plus the deadline cannot report itself, so the device
    watch calls `check` at each probe round, which reads how long the thread
    has been waiting (`waiting`): it is reported once there, and health relies
    on the probes until the wait returns. `on_trouble` is called when reading
    events fails (the caller probes then). A stop takes effect when the wait
    in progress returns (one `event_wait_ms` at most, unless it blocks);
    `when_ended` runs something after that, such as shutting NVML down.
    `source` and `clock` are seams for its unit tests.
    """

    def __init__(
        self,
        runner: Executor,
        book: HealthBook,
        config: HealthConfig,
        on_trouble: Callable[[], None],
        *,
        source: EventSource = EventSource(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runner = runner
        self._source = source
        self._clock = clock
        self._calls = _Timed(clock)
        self._book = book
        self._config = config
        self._on_trouble = on_trouble
        self._wait_ms = event_wait_ms(config)
        self._ended = False  # the thread has run to its end
        self._after: list[Callable[[], None]] = []  # what runs then
        self._lock = threading.Lock()
        self._devices: tuple[GpuDevice, ...] = ()
        self._resync = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._claim: object | None = None  # the events lane, while the thread lives
        self._event_set: Any = None
        self._by_address: dict[int, str] = {}
        self._registered: set[str] = set()  # physical GPU UUIDs registered on the set
        self._failing = ""  # why events cannot be read now ("" when they can)
        self._app_xids: dict[str, tuple[float, int]] = {}  # GPU -> (last logged, XIDs not logged since)

    def configure(self, config: HealthConfig) -> None:
        with self._lock:
            self._config = config
            self._wait_ms = event_wait_ms(config)  # from the next wait; the one in progress keeps its length

    def track(self, devices: Sequence[GpuDevice]) -> None:
        """The devices to watch; GPUs not registered yet (new, or failed before) are registered soon."""
        with self._lock:
            self._devices = tuple(devices)
            missing = set(physical_devices(self._devices)) - self._registered
        if missing:
            self._resync.set()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            try:
                # Not waiting: an earlier watcher's last wait may still hold the lane;
                # the device watch calls start again on its next round.
                claim = self._runner.claim(EVENTS, "the NVML event watcher")
            except RunnerClosed:
                return
            if claim is None:
                return
            self._claim = claim
            self._thread = threading.Thread(target=self._run, name="nvidia-events", daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        """Started and not ended: it may still call NVML."""
        with self._lock:
            return self._thread is not None and not self._ended

    def waiting(self) -> tuple[str, float, float] | None:
        """The call the watcher's thread is in now, for how many seconds, and how long it
        waits on purpose (an event wait's length); None between calls."""
        calls = self._calls
        call, since, length = calls.call, calls.since, calls.length
        if not call or not since:
            return None
        return call, max(0.0, self._clock() - since), length

    def check(self) -> None:
        """Report a wait blocked past its length plus the deadline (the device watch's probe rounds call it)."""
        now = self.waiting()
        if now is None:
            return
        call, seconds, length = now
        if seconds >= length + self._runner.timeout:
            self._trouble(str(CallTimeout(call, self._runner.timeout, EVENTS)))

    def when_ended(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the watcher has ended (at once if it has, or never started)."""
        with self._lock:
            if self._thread is not None and not self._ended:
                self._after.append(callback)
                return
        callback()

    def stop(self) -> None:
        """Stop the watcher: at once if it is between waits, else when its wait returns."""
        self._stop.set()

    # -- the thread --

    def _run(self) -> None:
        c = self._calls
        try:
            self._resync.set()  # the event set first, whether or not there are GPUs yet
            while not self._stop.is_set():
                if self._resync.is_set():
                    self._resync.clear()
                    self._register()
                if self._event_set is not None:
                    self._wait_for_event(c)
                else:
                    self._stop.wait(self._wait_ms / 1000)
        except RunnerClosed:
            pass
        except Exception:  # the watcher must never take the plugin down
            log.exception("the NVML event watcher stopped unexpectedly")
        finally:
            self._free()
            with self._lock:
                self._ended = True
                after, self._after = self._after, []
            self._runner.unclaim(EVENTS, self._claim)
            for callback in after:
                try:
                    callback()
                except Exception:
                    log.exception("running what waited for the NVML event watcher failed")

    def _trouble(self, why: str) -> None:
        if not self._failing:
            log.warning("reading an NVML event failed (%s); probing the devices instead", why)
        # Only news asks for a probe now: `check` runs at every probe round while a
        # wait stays blocked, and asking each time would run the rounds back to back.
        news, self._failing = why != self._failing, why
        if news:
            self._on_trouble()

    def _free(self) -> None:
        event_set, self._event_set, self._by_address = self._event_set, None, {}
        with self._lock:
            self._registered = set()
        if event_set is None:
            return
        # Only this thread waits on the set, and it is not waiting now: free it.
        try:
            self._runner.call(SYSTEM, self._source.free, event_set)
        except (pynvml.NVMLError, CallTimeout, RunnerClosed) as exc:
            log.debug("freeing the NVML event set failed: %s", exc)

    def _register(self) -> None:
        """Registers every tracked GPU not registered yet, in parallel, each on its lane.

        The set is kept: a GPU that failed (blocked, say) is retried at the next
        track() without losing the events waiting in the set for the others.
        """
        if self._event_set is None:
            try:
                self._event_set = self._runner.call(SYSTEM, self._source.create)
            except (pynvml.NVMLError, CallTimeout) as exc:
                log.warning("NVML events unavailable (%s); health relies on probes and scans", exc)
                return
        event_set = self._event_set
        with self._lock:
            physical = [u for u in physical_devices(self._devices) if u not in self._registered]
        if not physical:
            return

        def register(uuid: str, c: Calls) -> Any:
            handle = c(pynvml.nvmlDeviceGetHandleByUUID, uuid)
            try:
                c(pynvml.nvmlDeviceRegisterEvents, handle, _EVENT_TYPES, event_set)
            except pynvml.NVMLError as exc:
                # nvml.h: NOT_SUPPORTED when some requested type is not (a GPU without
                # ECC has no double-bit events), and then none is registered: ask
                # again for the ones it has, XIDs above all. A mask of 0 is invalid.
                if exc.value != pynvml.NVML_ERROR_NOT_SUPPORTED:
                    raise
                types = _EVENT_TYPES & int(c(pynvml.nvmlDeviceGetSupportedEventTypes, handle))
                if not types:
                    raise
                c(pynvml.nvmlDeviceRegisterEvents, handle, types, event_set)
            return handle

        jobs = []
        for uuid in physical:
            try:
                jobs.append((uuid, self._runner.submit(uuid, functools.partial(register, uuid), what="an XID registration")))
            except CallTimeout as exc:
                log.warning("cannot watch GPU %s for XID events: %s; trying again at the next scan", uuid, exc)
        unsupported = []
        for uuid, job in jobs:
            try:
                handle = self._runner.wait(job)
            except pynvml.NVMLError as exc:
                if exc.value in UNSUPPORTED_CODES:
                    unsupported.append(uuid)
                    with self._lock:
                        self._registered.add(uuid)  # nothing to retry
                else:
                    log.warning("cannot watch GPU %s for XID events: %s", uuid, exc)
                continue
            except CallTimeout as exc:
                log.warning("cannot watch GPU %s for XID events: %s; trying again at the next scan", uuid, exc)
                continue
            self._by_address[handle_address(handle)] = uuid
            with self._lock:
                self._registered.add(uuid)
        if unsupported:
            log.info("XID events not supported on %d GPU(s), e.g. %s", len(unsupported), unsupported[0])

    def _wait_for_event(self, c: _Timed) -> None:
        wait_ms = self._wait_ms
        event_set = self._event_set
        try:
            # One wait, then whatever else is waiting: a storm of XIDs is
            # handled in batches, each marked in the book at once.
            c.length = wait_ms / 1000
            batch = [c(self._source.wait, event_set, wait_ms)]
            while len(batch) < _EVENT_BATCH:
                try:
                    batch.append(c(self._source.wait, event_set, 0))
                except pynvml.NVMLError:
                    break  # TIMEOUT: nothing more waiting (an error shows again at the next wait)
        except pynvml.NVMLError as exc:
            if exc.value == pynvml.NVML_ERROR_TIMEOUT:
                self._recovered()
                return
            if exc.value in UNSUPPORTED_CODES:
                log.info("waiting on NVML events is not supported (%s); health relies on probes", exc)
                self._free()
                return
            # Which device failed is unknown: the probes find out, so only the ones
            # that do not answer are marked, never the whole node.
            self._trouble(str(exc))
            self._stop.wait(wait_ms / 1000)
            return
        self._recovered()
        for data in batch:
            self._handle_event(data)

    def _application_xid(self, uuid: str, xid: int) -> None:
        # Logged once per GPU per _APP_XID_LOG_S, with the count of the others: a job
        # that faults in a loop must not flood the agent's log.
        now = time.monotonic()
        last, count = self._app_xids.get(uuid, (-_APP_XID_LOG_S, 0))
        if now - last < _APP_XID_LOG_S:
            self._app_xids[uuid] = (last, count + 1)
            return
        more = f" (and {count} more application-fault XIDs since the last line)" if count else ""
        log.info("GPU %s reported %s, an application fault; device stays healthy%s", uuid, xid_description(xid), more)
        self._app_xids[uuid] = (now, 0)

    def _recovered(self) -> None:
        if self._failing:
            log.info("NVML events are read again")
            self._failing = ""

    def _handle_event(self, data: Any) -> None:
        uuid = self._by_address.get(handle_address(data.device))
        if uuid is None:
            try:
                uuid = self._runner.call(SYSTEM, pynvml.nvmlDeviceGetUUID, data.device)
            except (pynvml.NVMLError, CallTimeout) as exc:
                log.warning("NVML event type 0x%x for an unknown device ignored (%s)", data.eventType, exc)
                return
        with self._lock:
            devices = [d for d in self._devices if d.physical_uuid == uuid]
            ignored = self._config.ignored_xids
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        if gi != _NO_INSTANCE:
            scoped = [d for d in devices if d.gpu_instance_id in (None, gi)]
            if ci != _NO_INSTANCE:
                scoped = [d for d in scoped if d.compute_instance_id in (None, ci)]
            devices = scoped or devices
        if data.eventType & pynvml.nvmlEventTypeXidCriticalError:
            xid = int(data.eventData)
            if xid in ignored:
                self._application_xid(uuid, xid)
                return
            for dev in devices:
                self._book.mark_xid(dev.id, xid)
        elif data.eventType & pynvml.nvmlEventTypeDoubleBitEccError:
            for dev in devices:
                self._book.mark(dev.id, ECC, "uncorrectable (double-bit) ECC error")
            self._on_trouble()  # a probe soon reads the retirement state
