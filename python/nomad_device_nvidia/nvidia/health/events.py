"""The NVML event watcher: XIDs and double-bit ECC errors, as they come."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pynvml

from nomad_device_nvidia.nvidia.config import HealthConfig
from nomad_device_nvidia.nvidia.fingerprint import UNSUPPORTED_CODES, GpuDevice, physical_devices
from nomad_device_nvidia.nvidia.health.book import ECC, HealthBook, xid_description
from nomad_device_nvidia.nvidia.nvml.executor import EVENTS, SYSTEM, CallRunner, Calls, CallTimeout, Job, RunnerClosed
from nomad_device_nvidia.nvidia.nvml.fields import handle_address

log = logging.getLogger(__name__)

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


class EventWatcher:
    """Waits on NVML events (XIDs, double-bit ECC) and marks the devices concerned.

    It runs as one long job on the runner's events lane (a worker, no thread
    of its own): it waits, handles what came, and waits again. A wait that
    blocks past the deadline cannot report itself, so the device watch calls
    `check` at each probe round: it is reported once there, and health relies
    on the probes until the wait returns. `on_trouble` is called when reading
    events fails (the caller probes then). A stop takes effect when the wait
    in progress returns (one `event_wait_ms` at most, unless it blocks);
    `when_ended` runs something after that, such as shutting NVML down.
    """

    def __init__(
        self,
        runner: CallRunner,
        book: HealthBook,
        config: HealthConfig,
        on_trouble: Callable[[], None],
    ) -> None:
        self._runner = runner
        self._book = book
        self._config = config
        self._on_trouble = on_trouble
        self._wait_ms = event_wait_ms(config)
        self._ended = False  # the job has run to its end
        self._after: list[Callable[[], None]] = []  # what runs then
        self._lock = threading.Lock()
        self._devices: tuple[GpuDevice, ...] = ()
        self._resync = threading.Event()
        self._stop = threading.Event()
        self._job: Job[None] | None = None
        self._event_set: Any = None
        self._by_address: dict[int, str] = {}
        self._registered: set[str] = set()  # physical GPU UUIDs registered on the set
        self._failing = ""  # why events cannot be read now ("" when they can)
        self._app_xids: dict[str, tuple[float, int]] = {}  # GPU -> (last logged, XIDs not logged since)

    def configure(self, config: HealthConfig) -> None:
        with self._lock:
            self._config = config
            self._wait_ms = event_wait_ms(config)  # from the next wait
            job = self._job
        if job is not None:
            job.grace = max(job.grace, self._wait_ms / 1000)  # the wait in progress keeps its length

    def track(self, devices: Sequence[GpuDevice]) -> None:
        """The devices to watch; GPUs not registered yet (new, or failed before) are registered soon."""
        with self._lock:
            self._devices = tuple(devices)
            missing = set(physical_devices(self._devices)) - self._registered
        if missing:
            self._resync.set()

    def start(self) -> None:
        if self._job is not None:
            return
        try:
            # Not waiting: an earlier watcher's last wait may still hold the lane;
            # the device watch calls start again on its next round.
            self._job = self._runner.try_submit(EVENTS, self._run, grace=self._wait_ms / 1000)
        except RunnerClosed:
            pass

    @property
    def alive(self) -> bool:
        """Started and not ended: it may still call NVML."""
        with self._lock:
            return self._job is not None and not self._ended

    def check(self) -> None:
        """Report a wait blocked past the deadline (called from the device watch's probe rounds)."""
        call = self._runner.stuck().get(EVENTS, (0.0, ""))[1]
        if call:
            self._trouble(str(CallTimeout(call, self._runner.timeout, EVENTS)))

    def when_ended(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the watcher has ended (at once if it has, or never started)."""
        with self._lock:
            if self._job is not None and not self._ended:
                self._after.append(callback)
                return
        callback()

    def stop(self) -> None:
        """Stop the watcher: at once if it is between waits, else when its wait returns."""
        self._stop.set()

    # -- the job --

    def _run(self, c: Calls) -> None:
        # Named for what it does while it does it (thread dumps, py-spy).
        worker = threading.current_thread()
        worker_name, worker.name = worker.name, "nvidia-events"
        try:
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
            for callback in after:
                try:
                    callback()
                except Exception:
                    log.exception("running what waited for the NVML event watcher failed")
            worker.name = worker_name

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
        if EVENTS in self._runner.stuck():
            log.debug("an NVML event wait is still blocked; the event set is left allocated")
            return
        try:
            self._runner.call(SYSTEM, pynvml.nvmlEventSetFree, event_set)
        except (pynvml.NVMLError, CallTimeout, RunnerClosed) as exc:
            log.debug("freeing the NVML event set failed: %s", exc)

    def _register(self) -> None:
        """Registers every tracked GPU not registered yet, in parallel, each on its lane.

        The set is kept: a GPU that failed (blocked, say) is retried at the next
        track() without losing the events waiting in the set for the others.
        """
        with self._lock:
            physical = [u for u in physical_devices(self._devices) if u not in self._registered]
        if not physical:
            return
        if self._event_set is None:
            try:
                self._event_set = self._runner.call(SYSTEM, pynvml.nvmlEventSetCreate)
            except (pynvml.NVMLError, CallTimeout) as exc:
                log.warning("NVML events unavailable (%s); health relies on probes and scans", exc)
                return
        event_set = self._event_set

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
                jobs.append((uuid, self._runner.submit(uuid, functools.partial(register, uuid))))
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

    def _wait_for_event(self, c: Calls) -> None:
        wait_ms = self._wait_ms
        event_set = self._event_set
        try:
            # One wait, then whatever else is waiting: a storm of XIDs is
            # handled in batches, each marked in the book at once.
            batch = [c(pynvml.nvmlEventSetWait_v2, event_set, wait_ms)]
            while len(batch) < _EVENT_BATCH:
                try:
                    batch.append(c(pynvml.nvmlEventSetWait_v2, event_set, 0))
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
