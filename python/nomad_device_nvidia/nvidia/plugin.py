"""NvidiaDevicePlugin: config, fingerprint, health, stats and reserve wired together.

Nothing touches NVML until a Fingerprint, Stats or Reserve call needs it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nomad_device_nvidia.nvidia import fingerprint as fp
from nomad_device_nvidia.nvidia import grouping
from nomad_device_nvidia.nvidia.config import NvidiaConfig, config_spec
from nomad_device_nvidia.nvidia.health import HealthBook, HealthMonitor, check_memory_retirement
from nomad_device_nvidia.nvidia.nvml_session import NvmlAbsent, NvmlSession, NvmlUnavailable, SessionClosed
from nomad_device_nvidia.nvidia.reserve import reservation, resolve
from nomad_device_nvidia.sdk import (
    DeviceGroup,
    DevicePlugin,
    PluginDisabled,
    PluginInfo,
    Reservation,
    ReservationRefused,
)

if TYPE_CHECKING:
    from nomad_device_nvidia._proto.nomad import device_pb2, hclspec_pb2
    from nomad_device_nvidia.nvidia.stats_engine import TrackedDevice

log = logging.getLogger(__name__)

PLUGIN_NAME = "nvidia-gpu"
# How often a waiting stream looks at its stop event; bounds how late it returns.
_STOP_CHECK_S = 0.2
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 30.0
# How long Reserve waits for NVML before refusing: Nomad's task start waits on it.
RESERVE_TIMEOUT_S = 10.0
# How long shutdown waits for a scan inside NVML before it leaves NVML initialised.
_SHUTDOWN_SCAN_WAIT_S = 5.0

ScanFunction = Callable[["fp.Inventory | None"], "fp.Inventory"]


class ScanTimeout(Exception):
    """NVML did not answer a scan in time (a hung driver call)."""


class _ScanJob:
    """One `_refresh` on a worker thread; every caller that needs a scan meanwhile waits on it.

    Sharing one job keeps a hung NVML call from piling up a thread per Reserve.
    """

    def __init__(self, work: Callable[[], fp.Inventory]) -> None:
        self.done = threading.Event()
        self._work = work
        self._outcome: fp.Inventory | Exception | None = None
        self.thread = threading.Thread(target=self._run, name="nvidia-scan", daemon=True)

    def _run(self) -> None:
        try:
            self._outcome = self._work()
        except Exception as exc:  # handed to whoever waits
            self._outcome = exc
        finally:
            self.done.set()

    def result(self) -> fp.Inventory:
        outcome = self._outcome
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is None:
            raise RuntimeError("the scan ended without a result")
        return outcome


class _Backoff:
    def __init__(self) -> None:
        self._next = _BACKOFF_FIRST_S

    def reset(self) -> None:
        self._next = _BACKOFF_FIRST_S

    def delay(self, cap: float) -> float:
        d = min(self._next, cap, _BACKOFF_MAX_S)
        self._next = min(self._next * 2, _BACKOFF_MAX_S)
        return d


def _plugin_version() -> str:
    try:
        from nomad_device_nvidia import __version__

        return str(__version__)
    except ImportError:  # extension not built: the plugin still serves
        return "0.0.0"


class NvidiaDevicePlugin(DevicePlugin):
    """`nvml_library` / `simulate` come from the CLI flags; the config keys, when set, win.

    `scan` and `reserve_timeout` are seams for tests (a failing scan, a short deadline).
    """

    def __init__(
        self,
        *,
        nvml_library: str = "",
        simulate: str = "",
        scan: ScanFunction = fp.scan,
        reserve_timeout: float = RESERVE_TIMEOUT_S,
    ) -> None:
        self._default_library = nvml_library
        self._default_simulate = simulate
        self._scan_devices = scan
        self._reserve_timeout = reserve_timeout
        self._config = NvidiaConfig()
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self._session = NvmlSession()
        self._job: _ScanJob | None = None
        self._inventory: fp.Inventory | None = None
        self._offered: dict[str, grouping.Offered] = {}
        self._offered_generation = 0
        self._subscribers: set[threading.Event] = set()
        self._book = HealthBook(self._wake_streams)
        self._monitor: HealthMonitor | None = None
        # Monitors stopped by a config change whose thread had not ended yet.
        self._stopping: list[HealthMonitor] = []
        self._closed = False

    # -- base --

    def info(self) -> PluginInfo:
        return PluginInfo(name=PLUGIN_NAME, version=_plugin_version())

    def config_spec(self) -> hclspec_pb2.Spec:
        return config_spec()

    def set_config(self, config: Mapping[str, Any]) -> None:
        new = NvidiaConfig.from_mapping(config)  # raises ConfigError; old config stays
        with self._lock:
            self._config = new
            monitor = self._monitor
            if not new.health.enabled:
                self._monitor = None
            inventory, closed = self._inventory, self._closed
        if monitor is not None and new.health.enabled:
            monitor.configure(new.health)
        elif monitor is not None:
            log.info("health monitoring disabled by config; stopping the health monitor")
            # Briefly: SetConfig must answer; one still inside NVML is waited for at shutdown.
            if not monitor.stop(timeout=1.0):
                with self._lock:
                    self._stopping.append(monitor)
        elif new.health.enabled and inventory is not None and not closed and self._session.initialised:
            # Re-enabled: watch the known devices now, not only after the next scan.
            try:
                watcher = self._monitor_for()
            except SessionClosed:
                watcher = None
            if watcher is not None:
                watcher.track(inventory.devices)
        self._wake_streams()  # ignored IDs / sharing / period apply at once

    @property
    def config(self) -> NvidiaConfig:
        return self._config

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            monitors = [m for m in (self._monitor, *self._stopping) if m is not None]
            self._monitor, self._stopping = None, []
        self._wake_streams()
        # nvmlShutdown only once nothing of ours is inside NVML any more.
        stopped = [m.stop() for m in monitors]
        if not self._scan_lock.acquire(timeout=_SHUTDOWN_SCAN_WAIT_S):
            log.warning("a device scan is still inside NVML after %.0fs; leaving NVML initialised", _SHUTDOWN_SCAN_WAIT_S)
            return
        try:
            if all(stopped):
                self._session.close()
            else:
                log.warning("the health monitor did not stop; leaving NVML initialised")
        finally:
            self._scan_lock.release()

    # -- streams wake on health or config changes --

    def _wake_streams(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for kick in subscribers:
            kick.set()

    def _wait(self, stop: threading.Event, kick: threading.Event, until: float) -> None:
        while not stop.is_set() and not kick.is_set() and not self._closed:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            kick.wait(min(remaining, _STOP_CHECK_S))

    # -- NVML reads --

    def _refresh(self, cfg: NvidiaConfig) -> fp.Inventory:
        """Init NVML if needed, scan, and record health; raises NvmlAbsent / NvmlUnavailable."""
        with self._scan_lock:
            if self._closed:
                raise SessionClosed("the plugin is shut down")
            self._session.open(*self._nvml_choice(cfg))
            inventory = self._scan_devices(self._inventory)
            if inventory.fatal:
                log.warning("%s; keeping the last known devices and retrying", inventory.fatal)
            for dev in inventory.devices:
                failure = inventory.failures.get(dev.id)
                if failure is not None:
                    self._book.failed(dev.id, failure)
                else:
                    self._book.answered(dev.id)
            self._book.retain(d.id for d in inventory.devices)
            monitor = self._monitor_for()
            if monitor is not None:
                answering = [d for d in inventory.devices if d.id not in inventory.failures]
                check_memory_retirement(answering, self._book)
                monitor.track(inventory.devices)
            with self._lock:
                self._inventory = inventory
            return inventory

    def _scan(self, cfg: NvidiaConfig, stop: threading.Event | None, timeout: float | None) -> fp.Inventory | None:
        """`_refresh` on the shared worker thread, so a hung NVML call blocks no caller for good.

        None when `stop` is set or the plugin shuts down first (the scan finishes on
        its own and its result is still recorded); ScanTimeout after `timeout` seconds.
        """
        with self._lock:
            if self._closed:
                raise SessionClosed("the plugin is shut down")
            job = self._job
            if job is None or job.done.is_set():
                job = _ScanJob(lambda: self._refresh(cfg))
                job.thread.start()
                self._job = job
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.done.wait(_STOP_CHECK_S):
            if (stop is not None and stop.is_set()) or self._closed:
                return None
            if deadline is not None and time.monotonic() >= deadline:
                raise ScanTimeout(f"NVML did not answer within {timeout:g}s (a driver call hangs)")
        return job.result()

    def _monitor_for(self) -> HealthMonitor | None:
        """The running health monitor, started on first use; None while health is disabled."""
        with self._lock:
            if self._closed:
                raise SessionClosed("the plugin is shut down")
            cfg = self._config  # the current one: a scan may have started before a config change
            if not cfg.health.enabled:
                return None
            if self._monitor is None:
                self._monitor = HealthMonitor(self._book, cfg.health)
                self._monitor.start()
            return self._monitor

    def _ensure_inventory(self, cfg: NvidiaConfig, stop: threading.Event | None, timeout: float | None) -> bool:
        """Scan once if nothing was scanned yet; False when stopped before the scan ended."""
        if self._inventory is None:
            if self._scan(cfg, stop, timeout) is None:
                return False
            self._render(cfg)
        return True

    def _render(self, cfg: NvidiaConfig) -> list[DeviceGroup]:
        with self._lock:
            inventory = self._inventory
        if inventory is None:
            return []
        groups, offered = grouping.render(inventory, self._book.status, cfg.ignored_gpu_ids, cfg.sharing.shares)
        by_id = {o.id: o for o in offered}
        with self._lock:
            if [(o.id, o.device.id, o.group) for o in by_id.values()] != [
                (o.id, o.device.id, o.group) for o in self._offered.values()
            ]:
                self._offered_generation += 1
            self._offered = by_id
        return groups

    def _nvml_choice(self, cfg: NvidiaConfig) -> tuple[str, str]:
        if cfg.nvml_library or cfg.simulate:
            return cfg.nvml_library, cfg.simulate
        return self._default_library, self._default_simulate

    def _absent(self, cfg: NvidiaConfig, exc: NvmlAbsent) -> None:
        if any(self._nvml_choice(cfg)):
            log.error("%s; no NVIDIA devices will be reported", exc)
        else:
            log.info("%s; no NVIDIA devices will be reported", exc)

    # -- device plugin --

    def fingerprint(self, stop: threading.Event) -> Generator[Sequence[DeviceGroup], None, None]:
        if not self._config.enabled:
            raise PluginDisabled()
        kick = threading.Event()
        with self._lock:
            self._subscribers.add(kick)
        try:
            yield from self._fingerprint_loop(stop, kick)
        finally:
            with self._lock:
                self._subscribers.discard(kick)

    def _fingerprint_loop(self, stop: threading.Event, kick: threading.Event) -> Iterator[Sequence[DeviceGroup]]:
        # Yields on every wake; the SDK service drops answers equal to the last one sent.
        backoff = _Backoff()
        next_scan = scanned_at = 0.0
        period = self._config.fingerprint_period
        while not stop.is_set() and not self._closed:
            cfg = self._config
            if not cfg.enabled:
                log.info("plugin disabled by config; ending the fingerprint stream")
                return
            if cfg.fingerprint_period != period:
                # A new period counts from the last scan, not from the old next one.
                next_scan = min(next_scan, scanned_at + cfg.fingerprint_period)
                period = cfg.fingerprint_period
            kick.clear()
            if time.monotonic() >= next_scan:
                scanned_at = time.monotonic()
                delay = self._scan_for_stream(cfg, stop, backoff)
                if delay is None:
                    return
                next_scan = time.monotonic() + delay
            try:
                groups = self._render(cfg)
            except Exception:  # a bug here must not make Nomad drop every device
                log.exception("rendering the NVIDIA device groups failed")
            else:
                yield groups
            self._wait(stop, kick, next_scan)

    def _scan_for_stream(self, cfg: NvidiaConfig, stop: threading.Event, backoff: _Backoff) -> float | None:
        """One scan for the fingerprint stream: seconds to the next one, or None to end the stream."""
        try:
            inventory = self._scan(cfg, stop, None)
        except SessionClosed:
            return None
        except NvmlAbsent as exc:
            self._absent(cfg, exc)
            return None
        except NvmlUnavailable as exc:
            delay = backoff.delay(cfg.fingerprint_period)
            log.warning("%s; retrying in %.0fs", exc, delay)
            return delay
        except Exception:
            # Ending the stream would make Nomad drop every device and stop asking:
            # keep offering the last inventory and try again.
            delay = backoff.delay(cfg.fingerprint_period)
            log.exception("scanning the NVIDIA devices failed; keeping the last known devices, retrying in %.0fs", delay)
            return delay
        if inventory is None:
            return None
        if inventory.fatal or inventory.failures:
            return backoff.delay(cfg.fingerprint_period)
        backoff.reset()
        return cfg.fingerprint_period

    def stats(self, interval: float, stop: threading.Event) -> Generator[bytes | device_pb2.StatsResponse, None, None]:
        cfg = self._config
        if not cfg.enabled:
            raise PluginDisabled()
        if self._closed:
            return  # a late call after shutdown: nothing may open NVML again
        backoff = _Backoff()
        while True:
            try:
                if not self._ensure_inventory(cfg, stop, None):
                    return  # stopped while NVML was busy
                break
            except NvmlAbsent:
                return  # the fingerprint stream says why, once
            except Exception as exc:  # NvmlUnavailable, or a failed scan: retry
                delay = backoff.delay(max(interval, 1.0))
                log.warning("%s; stats retry in %.0fs", exc, delay)
                if stop.wait(delay):
                    return
        from nomad_device_nvidia.nvidia.stats_engine import make_stats_engine

        engine = make_stats_engine(cfg.stats_engine, cfg.extended_stats)
        try:
            generation = -1
            while not stop.is_set() and not self._closed:
                if not self._config.enabled:
                    log.info("plugin disabled by config; ending the stats stream")
                    return
                current, tracked = self._tracked()
                if current != generation:
                    engine.track(tracked)
                    generation = current
                yield engine.collect()
                stop.wait(interval)
        finally:
            engine.close()

    def _tracked(self) -> tuple[int, list[TrackedDevice]]:
        from nomad_device_nvidia.nvidia.stats_engine import TrackedDevice

        with self._lock:
            offered, generation = list(self._offered.values()), self._offered_generation
        return generation, [TrackedDevice(device_id=o.id, uuid=o.device.id, group=o.group) for o in offered]

    def reserve(self, device_ids: Sequence[str]) -> Reservation:
        if not device_ids:
            return Reservation(envs={})
        cfg = self._config
        if not cfg.enabled:
            raise PluginDisabled()
        asked = ", ".join(dict.fromkeys(device_ids))
        if self._closed:
            raise ReservationRefused(f"cannot reserve {asked}: the plugin is shut down")
        try:
            if not self._ensure_inventory(cfg, None, self._reserve_timeout):
                raise SessionClosed("the plugin is shut down")
        except SessionClosed as exc:
            raise ReservationRefused(f"cannot reserve {asked}: {exc}") from None
        except ScanTimeout as exc:
            raise ReservationRefused(f"cannot reserve {asked}: {exc}; their state is unknown") from None
        except (NvmlAbsent, NvmlUnavailable) as exc:
            log.warning("reserve: %s", exc)  # every ID is then unknown, and refused by name
        self._render(cfg)  # the current ignore list and sharing decide what exists
        with self._lock:
            offered = self._offered
        devices = resolve(device_ids, offered, self._book.status)
        return reservation(devices, cfg.reserve)
