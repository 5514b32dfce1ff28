"""The NVML lifecycle and the device scan, on one thread per process.

States (one state machine, here only):

  absent     no libnvidia-ml.so.1 (or the configured one cannot load): checked
             again every fingerprint_period; one log line per change of state
  not ready  nvmlInit fails: retried with backoff (1 s doubling, at most
             fingerprint_period)
  ready      scans every fingerprint_period, probes every health.probe_interval,
             an event watcher reads XIDs
  gone       the driver went away or was replaced (DRIVER_NOT_LOADED,
             UNINITIALIZED, LIB_RM_VERSION_MISMATCH, or every GPU lost): every
             device is unhealthy with that reason; once no NVML call is live
             NVML is released and the watch goes back to not ready

Every NVML call runs on the `CallRunner` under the call deadline, one lane per
GPU, so a blocked GPU delays nothing else: the fingerprint streams only read
what this watch has recorded, and are woken when it changes.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

import pynvml

from nomad_device_nvidia.nvidia.nvml import diagnosis
from nomad_device_nvidia.nvidia import fingerprint as fp
from nomad_device_nvidia.nvidia.nvml.executor import SYSTEM, CallRunner, Calls, CallTimeout, Job, RunnerClosed
from nomad_device_nvidia.nvidia.config import NvidiaConfig, format_duration
from nomad_device_nvidia.nvidia.health.book import DRIVER, FABRIC, HealthBook
from nomad_device_nvidia.nvidia.health.events import EventWatcher
from nomad_device_nvidia.nvidia.health.probes import probe_all
from nomad_device_nvidia.nvidia.nvml.session import (
    DRIVER_GONE_CODES,
    NvmlAbsent,
    NvmlSession,
    NvmlUnavailable,
    SessionClosed,
)

if TYPE_CHECKING:
    from nomad_device_nvidia.nvidia.stats.contract import StatsEngine

log = logging.getLogger(__name__)

ScanFunction = Callable[["fp.Inventory | None"], "fp.Inventory"]

_BACKOFF_FIRST_S = 1.0
# While the driver is gone: how often to look whether the last calls returned.
_GONE_POLL_S = 0.1


class NvmlState(enum.Enum):
    ABSENT = "absent"
    NOT_READY = "not ready"
    READY = "ready"
    GONE = "gone"


class DriverGone(Exception):
    """The scan found that the driver itself went away or was replaced."""


class _Backoff:
    def __init__(self) -> None:
        self._next = _BACKOFF_FIRST_S

    def reset(self) -> None:
        self._next = _BACKOFF_FIRST_S

    def delay(self, cap: float) -> float:
        d = min(self._next, cap)
        self._next = min(self._next * 2, cap)
        return d


def _lane(prior: Sequence[fp.GpuDevice], index: int) -> Hashable:
    # Keyed by the GPU's UUID once known, the key the probes and stats use too.
    return prior[0].physical_uuid if prior else f"gpu{index}"


class DeviceWatch:
    """Owns NVML for the plugin: init, scans, probes, events, and what they found.

    `config` returns the config in force; `nvml_choice` the (library, simulate)
    pair to load; `on_change` is called whenever what a fingerprint would say
    may have changed (devices, health, NVML state).
    """

    def __init__(
        self,
        *,
        config: Callable[[], NvidiaConfig],
        nvml_choice: Callable[[NvidiaConfig], tuple[str, str]],
        book: HealthBook,
        runner: CallRunner,
        on_change: Callable[[], None],
        scan: ScanFunction | None = None,
    ) -> None:
        self._config = config
        self._nvml_choice = nvml_choice
        self._book = book
        self._runner = runner
        self._on_change = on_change
        self._scan_seam = scan
        self._session = NvmlSession()
        self._lock = threading.Lock()
        self._state = NvmlState.NOT_READY
        self._said = ""  # the last state line logged
        self._reason = ""  # why there is no NVML (the last such line, without what the watch does next)
        self._announced = -1  # the NVML epoch whose coming up was logged
        self._inventory: fp.Inventory | None = None
        self._events: EventWatcher | None = None
        self._retiring: list[EventWatcher] = []  # stopped, not ended yet
        self._engines: set[StatsEngine] = set()
        self._kick = threading.Event()
        self._probe_now = threading.Event()
        self._scan_now = threading.Event()
        self._stop = threading.Event()
        self._first = threading.Event()  # the first init + scan + probe attempt has ended
        self._thread: threading.Thread | None = None
        self._scans = 0
        runner.on_return(self._call_returned)

    # -- what the streams read --

    @property
    def state(self) -> NvmlState:
        return self._state

    @property
    def epoch(self) -> int:
        return self._session.epoch

    @property
    def reason(self) -> str:
        """Why NVML is not ready (empty once it is): what `probe` tells a person."""
        return "" if self._state is NvmlState.READY else self._reason

    def library(self, driver_version: str) -> str:
        """The library in use, for a person (path, driver version, branch)."""
        return diagnosis.library(self._session.library_path, driver_version, self._session.simulated)

    @property
    def inventory(self) -> fp.Inventory | None:
        with self._lock:
            return self._inventory

    @property
    def scans(self) -> int:
        return self._scans

    def wait_first(self, timeout: float) -> bool:
        """Wait for the first attempt (init, scan, probe) to end; False on timeout."""
        return self._first.wait(timeout)

    # -- control --

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="nvidia-watch", daemon=True)
            self._thread.start()

    def kick(self) -> None:
        """Look at the config again now (a new period, health turned on or off)."""
        self._kick.set()

    def probe_soon(self) -> None:
        self._probe_now.set()
        self._kick.set()

    def _call_returned(self, _lane: Hashable) -> None:
        # A blocked GPU answers again: probe it (to clear its mark) and scan (a GPU
        # blocked in its first scan was never offered).
        self._scan_now.set()
        self.probe_soon()

    def add_engine(self, engine: StatsEngine) -> None:
        with self._lock:
            self._engines.add(engine)

    def remove_engine(self, engine: StatsEngine) -> None:
        with self._lock:
            self._engines.discard(engine)

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the thread and the event watcher; True when the thread has ended within `timeout`.

        The event watcher is not waited for: its wait in progress returns on its
        own (see `close_session`).
        """
        self._stop.set()
        self._kick.set()
        with self._lock:
            thread, events = self._thread, self._events
            self._events = None
        if events is not None:
            self._retire(events)
        stopped = True
        if thread is not None:
            thread.join(timeout)
            stopped = not thread.is_alive()
        self._first.set()
        return stopped

    def _retire(self, events: EventWatcher) -> None:
        """Stop `events` without waiting; it is counted until its wait in progress returns."""
        events.stop()
        with self._lock:
            self._retiring = [w for w in self._retiring if w.alive] + [events]

    def close_session(self) -> None:
        """Shut NVML down for good once the stopped event watchers' last waits have returned.

        Call it with no other NVML call of ours live. A wait in progress cannot
        be cut short, so NVML is shut down when it returns (within one event
        wait), on its thread; at once when there is none.
        """
        with self._lock:
            waiting = next((w for w in self._retiring if w.alive), None)
        if waiting is None:
            self._session.close()
            return
        log.debug("an NVML event wait is still open; NVML is shut down when it returns")
        waiting.when_ended(self.close_session)  # then again, for any other still waiting

    # -- the thread --

    def _run(self) -> None:
        backoff = _Backoff()
        next_try = next_scan = next_probe = 0.0
        scanned_at = 0.0
        period = self._config().fingerprint_period
        while not self._stop.is_set():
            cfg = self._config()
            self._runner.set_timeout(cfg.health.call_timeout)
            if cfg.fingerprint_period != period:
                # A new period counts from the last scan, not from the old next one.
                next_scan = min(next_scan, scanned_at + cfg.fingerprint_period)
                period = cfg.fingerprint_period
            now = time.monotonic()
            try:
                if self._state is NvmlState.GONE and self._release_when_idle():
                    # Re-init with backoff: a driver that is back but whose GPUs are all
                    # still lost must not make this a loop.
                    next_try = now + backoff.delay(cfg.fingerprint_period)
                if self._state in (NvmlState.ABSENT, NvmlState.NOT_READY) and now >= next_try:
                    delay = self._open(cfg, backoff)
                    next_try = now + delay
                    if delay == 0.0:  # up: scan and probe now
                        next_scan = next_probe = now
                if self._state is NvmlState.READY:
                    if now >= next_scan or self._scan_now.is_set():
                        self._scan_now.clear()
                        scanned_at = now
                        next_scan = now + self._scan(cfg, backoff)
                    if self._state is NvmlState.READY:
                        self._follow_health_config(cfg)
                    if self._state is NvmlState.READY and cfg.health.enabled and (
                        now >= next_probe or self._probe_now.is_set()
                    ):
                        self._probe_now.clear()
                        self._probe()
                        next_probe = time.monotonic() + cfg.health.probe_interval
            except (RunnerClosed, SessionClosed):
                return
            except Exception:  # a bug here must not leave the node without devices for good
                log.exception("the NVIDIA device watch failed; trying again")
                next_scan = time.monotonic() + backoff.delay(cfg.fingerprint_period)
            finally:
                self._first.set()
            # Sleeps until the next scan, probe or try: a config change, stop, a returned
            # blocked call or trouble in the event watcher kicks it earlier.
            if self._state is not NvmlState.READY:
                wake = next_try
            elif cfg.health.enabled:
                wake = min(next_scan, next_probe)
            else:
                wake = next_scan
            if self._state is NvmlState.GONE:
                wake = now + _GONE_POLL_S  # waiting for the last calls to return
            self._kick.wait(max(0.0, wake - time.monotonic()))
            self._kick.clear()

    def _set_state(self, state: NvmlState, reason: str, level: int) -> None:
        self._say(level, reason)
        changed = state is not self._state
        self._state = state
        if changed:
            self._on_change()

    def _say(self, level: int, line: str) -> None:
        # One line per change of state, not per try: a line equal to the last one
        # said (the same failure again, another cycle of a driver that flaps) is not repeated.
        if line != self._said:
            log.log(level, "%s", line)
            self._said = line

    def _open(self, cfg: NvidiaConfig, backoff: _Backoff) -> float:
        """Try to init NVML; seconds until the next try (0 once it is up)."""
        library, simulate = self._nvml_choice(cfg)
        try:
            self._session.open(library, simulate, self._runner)
        except SessionClosed:
            raise
        except NvmlAbsent as exc:
            level = logging.ERROR if library or simulate else logging.INFO
            self._reason = str(exc)
            self._set_state(
                NvmlState.ABSENT,
                f"{exc}; no NVIDIA devices will be reported (checking again every "
                f"{format_duration(cfg.fingerprint_period)})",
                level,
            )
            return cfg.fingerprint_period
        except (NvmlUnavailable, CallTimeout) as exc:
            delay = backoff.delay(cfg.fingerprint_period)
            reason = str(exc) if isinstance(exc, NvmlUnavailable) else f"NVML failed to initialise: {exc}"
            self._reason = reason
            self._set_state(NvmlState.NOT_READY, f"{reason}; retrying with backoff", logging.WARNING)
            return delay
        # Not logged yet: "NVML initialised" is said by the first scan that finds the
        # driver well, so a driver that comes back with every GPU lost logs nothing new.
        self._state = NvmlState.READY
        self._on_change()
        return 0.0

    def _follow_health_config(self, cfg: NvidiaConfig) -> None:
        with self._lock:
            events = self._events
            if cfg.health.enabled and events is None and not self._stop.is_set():
                events = self._events = EventWatcher(self._runner, self._book, cfg.health, self.probe_soon)
                inventory = self._inventory
                if inventory is not None:
                    events.track(inventory.devices)
                events.start()
                return
            if not cfg.health.enabled:
                self._events = None
        if events is None:
            return
        if cfg.health.enabled:
            events.configure(cfg.health)
            events.start()  # again, if the events lane was still busy when it was made
        else:
            log.info("health monitoring disabled by config; stopping the NVML event watcher")
            self._retire(events)
            # Its lane is free again then: a watcher made meanwhile starts without waiting a round.
            events.when_ended(self._kick.set)

    # -- scans --

    def _scan(self, cfg: NvidiaConfig, backoff: _Backoff) -> float:
        """One scan; seconds until the next one."""
        previous = self.inventory
        try:
            inventory = self._scan_once(previous)
        except DriverGone as exc:
            self._driver_gone(str(exc))
            return 0.0
        self._scans += 1
        if self._announced != self._session.epoch:
            self._announced = self._session.epoch
            self._say(
                logging.INFO,
                f"NVML initialised: {len(inventory.devices)} devices; {self.library(inventory.driver_version)}",
            )
        for dev in inventory.devices:
            failure = inventory.failures.get(dev.id)
            if failure is not None:
                self._book.failed(dev.id, failure)
            else:
                self._book.answered(dev.id)
        self._book.retain(d.id for d in inventory.devices)
        with self._lock:
            self._inventory = inventory
            events = self._events
        if events is not None:
            events.track(inventory.devices)
        self._on_change()
        if inventory.fatal:
            self._say(logging.WARNING, f"{inventory.fatal}; keeping the last known devices and retrying")
        elif self._said.startswith("NVML enumeration failed"):
            self._say(logging.INFO, "NVML enumeration answers again")
        if inventory.fatal or inventory.failures:
            return backoff.delay(cfg.fingerprint_period)
        backoff.reset()
        return cfg.fingerprint_period

    def _scan_once(self, previous: fp.Inventory | None) -> fp.Inventory:
        if self._scan_seam is not None:
            seam = self._scan_seam
            return self._runner.run(SYSTEM, lambda c: seam(previous))
        try:
            system = self._runner.run(SYSTEM, fp.read_system)
        except CallTimeout as exc:
            return fp.failed_enumeration(previous, f"NVML enumeration failed ({exc})", fp.ScanFailure(str(exc), False))
        except pynvml.NVMLError as exc:
            if exc.value in DRIVER_GONE_CODES:
                raise DriverGone(f"NVIDIA driver unavailable ({exc})") from exc
            return fp.failed_enumeration(previous, f"NVML enumeration failed ({exc})", fp.failure_of(exc))
        prior = fp.prior_by_index(previous)
        jobs: list[tuple[int, Job[fp.GpuScan] | CallTimeout]] = []
        for i in range(system.count):
            mine = prior.get(i, [])

            def work(c: Calls, i: int = i, mine: list[fp.GpuDevice] = mine) -> fp.GpuScan:
                return fp.scan_gpu(c, i, mine)

            try:
                jobs.append((i, self._runner.submit(_lane(mine, i), work)))
            except CallTimeout as exc:
                jobs.append((i, exc))
        parts = []
        for i, job in jobs:
            if isinstance(job, Job):
                try:
                    parts.append(self._runner.wait(job))
                    continue
                except CallTimeout as exc:
                    stuck = exc
            else:
                stuck = job
            part = fp.GpuScan()
            part.keep_previous(fp.ScanFailure(str(stuck), False), prior.get(i, []), f"GPU {i}")
            parts.append(part)
        inventory = fp.assemble(system, parts)
        # Every GPU lost at once is the driver, not the GPUs; one lost GPU of a
        # one-GPU node is just that GPU (reported as lost).
        gpus = {d.physical_uuid for d in inventory.devices}
        if len(gpus) > 1 and len(inventory.failures) == len(inventory.devices):
            if all(f.lost for f in inventory.failures.values()):
                raise DriverGone("NVIDIA driver unavailable (every GPU answers GPU_IS_LOST)")
        return inventory

    def _probe(self) -> None:
        inventory = self.inventory
        if inventory is None:
            return
        # Every device, the ones whose last read failed too: a probe is how a lost
        # GPU is found back (and how a GPU is found lost without any event).
        fabric_waiting = self._book.having(FABRIC)
        codes = probe_all(self._runner, inventory.devices, self._book)
        with self._lock:
            events = self._events
        if events is not None:
            events.check()  # a blocked event wait cannot say so itself
        if codes & DRIVER_GONE_CODES:
            self._kick.set()  # scan now: the scan decides whether the driver is gone
        if fabric_waiting - self._book.having(FABRIC):
            # A fabric is ready again: its cluster and clique attributes come with a scan, now.
            self._scan_now.set()
            self._kick.set()

    # -- the driver went away --

    def _driver_gone(self, reason: str) -> None:
        inventory = self.inventory
        for dev in inventory.devices if inventory is not None else ():
            self._book.mark(dev.id, DRIVER, f"{reason}; waiting for it to come back")
        with self._lock:
            events, self._events = self._events, None
            engines = list(self._engines)
        self._set_state(NvmlState.GONE, f"{reason}; releasing NVML to initialise it again", logging.WARNING)
        if events is not None:
            self._retire(events)  # ends on its own soon; its waits fail fast now
        for engine in engines:
            # Each native engine holds its own NVML reference; all must go for a fresh session.
            engine.close()

    def _release_when_idle(self) -> bool:
        """Release NVML once nothing of ours is in it; whether it did."""
        with self._lock:
            self._retiring = [w for w in self._retiring if w.alive]
            retiring = bool(self._retiring)
        if self._runner.live() or retiring:
            return False  # nvmlShutdown never runs under a live call, nor before the old event set is freed
        self._session.release(self._runner)
        self._state = NvmlState.NOT_READY  # the next _open logs a new outcome
        return True
