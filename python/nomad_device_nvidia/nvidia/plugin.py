"""NvidiaDevicePlugin: config, fingerprint, health, stats and reserve wired together.

Nothing touches NVML until a Fingerprint, Stats or Reserve call needs it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nomad_device_nvidia.nvidia import fingerprint as fp
from nomad_device_nvidia.nvidia.config import NvidiaConfig, config_spec
from nomad_device_nvidia.nvidia.health import HealthBook, HealthMonitor, check_memory_retirement
from nomad_device_nvidia.nvidia.nvml_session import NvmlAbsent, NvmlSession, NvmlUnavailable
from nomad_device_nvidia.nvidia.reserve import reservation, resolve
from nomad_device_nvidia.sdk import DeviceGroup, DevicePlugin, PluginDisabled, PluginInfo, Reservation

if TYPE_CHECKING:
    from nomad_device_nvidia._proto.nomad import device_pb2, hclspec_pb2
    from nomad_device_nvidia.nvidia.stats_engine import TrackedDevice

log = logging.getLogger(__name__)

PLUGIN_NAME = "nvidia-gpu"
# How often a waiting stream looks at its stop event; bounds how late it returns.
_STOP_CHECK_S = 0.2
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 30.0


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
    """`nvml_library` / `simulate` come from the CLI flags; the config keys, when set, win."""

    def __init__(self, *, nvml_library: str = "", simulate: str = "") -> None:
        self._default_library = nvml_library
        self._default_simulate = simulate
        self._config = NvidiaConfig()
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self._session = NvmlSession()
        self._inventory: fp.Inventory | None = None
        self._offered: dict[str, fp.Offered] = {}
        self._offered_generation = 0
        self._subscribers: set[threading.Event] = set()
        self._book = HealthBook(self._wake_streams)
        self._monitor: HealthMonitor | None = None
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
        if monitor is not None:
            monitor.configure(new.health)
        self._wake_streams()  # ignored IDs / sharing apply at once

    @property
    def config(self) -> NvidiaConfig:
        return self._config

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            monitor, self._monitor = self._monitor, None
        self._wake_streams()
        if monitor is not None:
            monitor.stop()
        self._session.close()

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
            self._session.open(*self._nvml_choice(cfg))
            inventory = fp.scan(self._inventory)
            if inventory.fatal:
                log.warning("%s; keeping the last known devices and retrying", inventory.fatal)
            for dev in inventory.devices:
                failure = inventory.failures.get(dev.id)
                if failure is not None:
                    self._book.failed(dev.id, failure)
                else:
                    self._book.answered(dev.id)
            self._book.retain(d.id for d in inventory.devices)
            if cfg.health.enabled:
                answering = [d for d in inventory.devices if d.id not in inventory.failures]
                check_memory_retirement(answering, self._book)
                self._monitor_for(cfg).track(inventory.devices)
            with self._lock:
                self._inventory = inventory
            return inventory

    def _refresh_unless_stopped(self, cfg: NvidiaConfig, stop: threading.Event) -> fp.Inventory | None:
        """`_refresh` on a worker thread, so a hung NVML call cannot keep the stream from stopping."""
        result: list[fp.Inventory | Exception] = []

        def work() -> None:
            try:
                result.append(self._refresh(cfg))
            except Exception as exc:  # handed to the stream's thread
                result.append(exc)

        worker = threading.Thread(target=work, name="nvidia-scan", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(_STOP_CHECK_S)
            if stop.is_set() or self._closed:
                return None  # the scan finishes on its own; its result is still recorded
        outcome = result[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _monitor_for(self, cfg: NvidiaConfig) -> HealthMonitor:
        with self._lock:
            if self._monitor is None and not self._closed:
                self._monitor = HealthMonitor(self._book, cfg.health)
                self._monitor.start()
            assert self._monitor is not None
            return self._monitor

    def _ensure_inventory(self, cfg: NvidiaConfig) -> None:
        if self._inventory is None:
            self._refresh(cfg)
            self._render(cfg)

    def _render(self, cfg: NvidiaConfig) -> list[DeviceGroup]:
        with self._lock:
            inventory = self._inventory
        if inventory is None:
            return []
        groups, offered = fp.render(inventory, self._book.status, cfg.ignored_gpu_ids, cfg.sharing.shares)
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
            log.info("%s (no NVIDIA driver on this node?); no NVIDIA devices will be reported", exc)

    # -- device plugin --

    def fingerprint(self, stop: threading.Event) -> Iterator[Sequence[DeviceGroup]]:
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
        backoff = _Backoff()
        next_scan = 0.0
        last: list[DeviceGroup] | None = None
        while not stop.is_set() and not self._closed:
            cfg = self._config
            if not cfg.enabled:
                log.info("plugin disabled by config; ending the fingerprint stream")
                return
            kick.clear()
            if time.monotonic() >= next_scan:
                try:
                    inventory = self._refresh_unless_stopped(cfg, stop)
                    if inventory is None:
                        return
                except NvmlAbsent as exc:
                    self._absent(cfg, exc)
                    return
                except NvmlUnavailable as exc:
                    delay = backoff.delay(cfg.fingerprint_period)
                    log.warning("%s; retrying in %.0fs", exc, delay)
                else:
                    if inventory.fatal or inventory.failures:
                        delay = backoff.delay(cfg.fingerprint_period)
                    else:
                        backoff.reset()
                        delay = cfg.fingerprint_period
                next_scan = time.monotonic() + delay
            groups = self._render(cfg)
            if groups != last:
                last = groups
                yield groups
            self._wait(stop, kick, next_scan)

    def stats(self, interval: float, stop: threading.Event) -> Iterator[bytes | device_pb2.StatsResponse]:
        cfg = self._config
        if not cfg.enabled:
            raise PluginDisabled()
        backoff = _Backoff()
        while True:
            try:
                self._ensure_inventory(cfg)
                break
            except NvmlAbsent:
                return  # the fingerprint stream says why, once
            except NvmlUnavailable as exc:
                delay = backoff.delay(max(interval, 1.0))
                log.warning("%s; stats retry in %.0fs", exc, delay)
                if stop.wait(delay):
                    return
        from nomad_device_nvidia.nvidia.stats_engine import make_stats_engine

        engine = make_stats_engine(cfg.stats_engine, cfg.extended_stats)
        try:
            generation = -1
            while not stop.is_set() and not self._closed:
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
        try:
            self._ensure_inventory(cfg)
        except (NvmlAbsent, NvmlUnavailable) as exc:
            log.warning("reserve: %s", exc)  # every ID is then unknown, and refused by name
        self._render(cfg)  # the current ignore list and sharing decide what exists
        with self._lock:
            offered = self._offered
        devices = resolve(device_ids, offered, self._book.status)
        return reservation(devices, cfg.reserve)
