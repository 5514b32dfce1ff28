"""The device watch: one thread per process that drives the NVML lifecycle and
schedules the scans, the probe rounds and the event watcher.

The lifecycle's states and transitions (absent, not ready, ready, gone, closed)
are in nvml/lifecycle.py; this module decides when each step runs. While the
lifecycle is ready it scans every fingerprint_period (sooner after a failed
or blocked GPU, with the lifecycle's backoff), probes every
health.probe_interval, and keeps an event watcher reading XIDs.

Every NVML call runs on the `Executor` under the call deadline, one lane per
GPU, so a blocked GPU delays nothing else: the fingerprint streams only read
what this watch has recorded, and are woken when it changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

import pynvml

from nomad_device_nvidia.nvidia import fingerprint as fp
from nomad_device_nvidia.nvidia.config import NvidiaConfig
from nomad_device_nvidia.nvidia.health.book import DRIVER, FABRIC, HealthBook
from nomad_device_nvidia.nvidia.health.events import EventWatcher
from nomad_device_nvidia.nvidia.health.probes import probe_all
from nomad_device_nvidia.nvidia.nvml import diagnosis
from nomad_device_nvidia.nvidia.nvml.executor import SYSTEM, Executor, Calls, CallTimeout, Job, RunnerClosed
from nomad_device_nvidia.nvidia.nvml.lifecycle import DriverLost, Lifecycle
from nomad_device_nvidia.nvidia.nvml.lifecycle import NvmlState as NvmlState
from nomad_device_nvidia.nvidia.nvml.session import DRIVER_GONE_CODES, NvmlSession

if TYPE_CHECKING:
    from nomad_device_nvidia.nvidia.stats.contract import StatsEngine

log = logging.getLogger(__name__)

ScanFunction = Callable[["fp.Inventory | None"], "fp.Inventory"]


class DriverGone(Exception):
    """The scan found that the driver itself went away or was replaced."""


class _Schedule:
    """When the ready state's next scan and probe round are due (clock readings)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.next_scan = 0.0
        self.next_probe = 0.0
        self.scanned_at = 0.0

    def follow(self, period: float) -> None:
        if period != self.period:
            # A new period counts from the last scan, not from the old next one.
            self.next_scan = min(self.next_scan, self.scanned_at + period)
            self.period = period

    def at_once(self, now: float) -> None:
        self.next_scan = self.next_probe = now

    def due(self, cfg: NvidiaConfig) -> float:
        return min(self.next_scan, self.next_probe) if cfg.health.enabled else self.next_scan


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
        runner: Executor,
        on_change: Callable[[], None],
        scan: ScanFunction | None = None,
    ) -> None:
        self._config = config
        self._nvml_choice = nvml_choice
        self._book = book
        self._runner = runner
        self._on_change = on_change
        self._scan_seam = scan
        self._clock: Callable[[], float] = time.monotonic
        self._session = NvmlSession(runner)
        self._life = Lifecycle(self._session, on_change, clock=self._clock)
        self._notices = fp.Notices()  # what this driver cannot report, said once per plugin
        self._lock = threading.Lock()
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
        return self._life.state

    @property
    def epoch(self) -> int:
        return self._session.epoch

    @property
    def reason(self) -> str:
        """Why NVML is not ready (empty once it is): what `probe` tells a person."""
        return self._life.reason

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

    @property
    def tries(self) -> int:
        """How many times NVML's init was tried."""
        return self._life.tries

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
        plan = _Schedule(self._config().fingerprint_period)
        while not self._stop.is_set() and self._life.state is not NvmlState.CLOSED:
            cfg = self._config()
            self._runner.set_timeout(cfg.health.call_timeout)
            plan.follow(cfg.fingerprint_period)
            try:
                self._step(cfg, plan)
            except RunnerClosed:
                return
            except Exception:  # a bug here must not leave the node without devices for good
                log.exception("the NVIDIA device watch failed; trying again")
                plan.next_scan = self._clock() + self._life.backoff.delay(cfg.fingerprint_period)
            finally:
                self._first.set()
            # Sleeps until the lifecycle's next step, or while ready the next scan or probe:
            # a config change, stop, a returned blocked call or trouble in the event watcher
            # kicks it earlier.
            due = self._life.due()
            if self._life.state is NvmlState.GONE:
                # No timer to wait for: the last call of ours returning kicks (see _idle);
                # a fingerprint period is only a safety net.
                wake = self._clock() + cfg.fingerprint_period
            else:
                wake = plan.due(cfg) if due is None else due
            self._kick.wait(max(0.0, wake - self._clock()))
            self._kick.clear()

    def _step(self, cfg: NvidiaConfig, plan: _Schedule) -> None:
        """One round: the lifecycle's step when it is not ready, then, when ready, what is due."""
        life, period = self._life, cfg.fingerprint_period
        if life.state is NvmlState.GONE:
            life.release(self._idle(), period)
        if life.state in (NvmlState.ABSENT, NvmlState.NOT_READY):
            library, simulate = self._nvml_choice(cfg)
            if life.open(library, simulate, period) is NvmlState.READY:
                plan.at_once(self._clock())  # up: scan and probe now
        if life.state is not NvmlState.READY:
            return
        now = self._clock()
        if now >= plan.next_scan or self._scan_now.is_set():
            self._scan_now.clear()
            plan.scanned_at = now
            try:
                plan.next_scan = now + self._scan(cfg)
            except DriverGone as exc:
                self._driver_gone(str(exc), period)
                return
        self._follow_health_config(cfg)
        if cfg.health.enabled and (now >= plan.next_probe or self._probe_now.is_set()):
            self._probe_now.clear()
            self._probe()
            plan.next_probe = self._clock() + cfg.health.probe_interval

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

    def _scan(self, cfg: NvidiaConfig) -> float:
        """One scan; seconds until the next one. Raises DriverGone."""
        previous = self.inventory
        inventory = self._scan_once(previous)
        self._scans += 1
        say, backoff = self._life.say, self._life.backoff
        if self._announced != self._session.epoch:
            self._announced = self._session.epoch
            say(
                logging.INFO,
                f"NVML initialised: {len(inventory.devices)} devices; {self.library(inventory.driver_version)}",
            )
        with self._book.together():  # one fingerprint update for the scan
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
            say(logging.WARNING, f"{inventory.fatal}; keeping the last known devices and retrying")
        elif self._life.said.startswith("NVML enumeration failed"):
            say(logging.INFO, "NVML enumeration answers again")
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
                return fp.scan_gpu(c, i, mine, self._notices)

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

    def _driver_gone(self, reason: str, period: float) -> None:
        inventory = self.inventory
        with self._book.together():
            for dev in inventory.devices if inventory is not None else ():
                self._book.mark(dev.id, DRIVER, f"{reason}; waiting for it to come back")
        with self._lock:
            events, self._events = self._events, None
            engines = list(self._engines)
        self._life.handle(DriverLost(reason), period)
        if events is not None:
            self._retire(events)  # ends on its own soon; its waits fail fast now
        for engine in engines:
            # Each native engine holds its own NVML reference; all must go for a fresh session.
            engine.close()

    def _idle(self) -> bool:
        """Whether nothing of ours is in NVML: nvmlShutdown never runs under a live call,
        nor before the old event set is freed."""
        with self._lock:
            self._retiring = [w for w in self._retiring if w.alive]
            retiring = list(self._retiring)
        if retiring or self._runner.live():
            # Woken when that changes, not by polling: a call that returns, a wait that ends.
            self._runner.when_idle(self._kick.set)
            for watcher in retiring:
                watcher.when_ended(self._kick.set)
            return False
        return True
