"""NvidiaDevicePlugin: config, fingerprint, health, stats and reserve wired together.

Nothing touches NVML until a Fingerprint, Stats or Reserve call needs it; then
one DeviceWatch thread owns NVML (init, scans, probes, events, recovery) and
the RPCs only read what it recorded, so no RPC waits on a blocked GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nomad_device_nvidia.nvidia import grouping, mps
from nomad_device_nvidia.nvidia.nvml.executor import EVENTS, Executor
from nomad_device_nvidia.nvidia.config import NvidiaConfig, config_spec
from nomad_device_nvidia.nvidia.device_watch import DeviceWatch, ScanFunction
from nomad_device_nvidia.nvidia.health.book import HealthBook
from nomad_device_nvidia.nvidia.reserve import reservation, resolve
from nomad_device_nvidia.nvidia.stats.hub import StatsHub
from nomad_device_nvidia.sdk import (
    DeviceGroup,
    DevicePlugin,
    PluginDisabled,
    PluginInfo,
    Reservation,
    ReservationRefused,
    StopEvent,
)

if TYPE_CHECKING:
    from nomad_device_nvidia.nvidia.stats.contract import TrackedDevice
    from nomad_device_nvidia.sdk.hclspec import Spec

log = logging.getLogger(__name__)

PLUGIN_NAME = "nvidia-gpu"
# How often a wait looks at a stop event that cannot wake it; bounds how late it returns.
_STOP_CHECK_S = 0.2
# The least time between two fingerprint answers of one stream.
_COALESCE_S = 0.05
# The first fingerprint answer waits this much longer than one call may take
# for the first scan; after that it answers with what is known.
_FIRST_ANSWER_SLACK_S = 1.0
# How long shutdown waits for the watch thread before leaving NVML initialised.
_SHUTDOWN_WAIT_S = 1.0


def _plugin_version() -> str:
    try:
        from nomad_device_nvidia import __version__

        return str(__version__)
    except ImportError:  # extension not built: the plugin still serves
        return "0.0.0"


class NvidiaDevicePlugin(DevicePlugin):
    """`nvml_library` / `simulate` come from the CLI flags; the config keys, when set, win.

    `scan` is a seam for tests (a scan that raises); it then replaces the
    per-GPU scan and runs as one piece under the call deadline.
    """

    def __init__(self, *, nvml_library: str = "", simulate: str = "", scan: ScanFunction | None = None) -> None:
        self._default_library = nvml_library
        self._default_simulate = simulate
        self._config = NvidiaConfig()
        self._lock = threading.Lock()
        self._offered: dict[str, grouping.Offered] = {}
        self._offered_generation = 0
        self._subscribers: set[threading.Event] = set()
        self._book = HealthBook(self._wake_streams)
        self._runner = Executor(self._config.health.call_timeout)
        self._watch = DeviceWatch(
            config=lambda: self._config,
            nvml_choice=self._nvml_choice,
            book=self._book,
            runner=self._runner,
            on_change=self._wake_streams,
            scan=scan,
        )
        self._stats = StatsHub(watch=self._watch, runner=self._runner, config=lambda: self._config,
                               tracked=self._tracked, generation=lambda: self._offered_generation)
        self._mps = mps.MpsWatch(config=lambda: self._config, on_change=self._wake_streams)
        self._mps_plan: dict[str, mps.Daemon | str] = {}
        self._closed = False

    # -- base --

    def info(self) -> PluginInfo:
        return PluginInfo(name=PLUGIN_NAME, version=_plugin_version())

    def config_spec(self) -> Spec:
        return config_spec()

    def set_config(self, config: Mapping[str, Any]) -> None:
        new = NvidiaConfig.from_mapping(config)  # raises ConfigError; old config stays
        mps.check(new.mps, self._watch.inventory)  # an MPS entry for a GPU in MIG mode, when known
        with self._lock:
            self._config = new
        self._runner.set_timeout(new.health.call_timeout)
        self._mps.configure()
        self._watch.kick()  # a new period or health setting applies at once
        self._wake_streams()  # ignored IDs / sharing apply at once

    @property
    def config(self) -> NvidiaConfig:
        return self._config

    @property
    def watch(self) -> DeviceWatch:
        """NVML's state and the last scan, for `probe` to say why nothing is offered."""
        return self._watch

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
        self._wake_streams()
        self._mps.stop()
        self._stats.close()
        stopped = self._watch.stop(_SHUTDOWN_WAIT_S)
        self._runner.close()
        # nvmlShutdown only once nothing of ours is inside NVML any more. The event
        # watcher's wait is one on purpose: NVML is shut down when it returns. A read
        # of the closed stats engine that never returned is one too, whichever side
        # (a probe or that engine) found the GPU stuck first.
        if not stopped or self._runner.live(besides=EVENTS) or self._runner.held_elsewhere():
            log.warning("an NVML call is still in progress; leaving NVML initialised")
            return
        self._watch.close_session()

    # -- streams wake on health, device or config changes --

    def _wake_streams(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for kick in subscribers:
            kick.set()

    def _wait(self, stop: threading.Event, kick: threading.Event, until: float) -> None:
        # The SDK's StopEvent wakes `kick` itself (linked in `fingerprint`), so
        # the wait sleeps through; a plain Event is looked at every _STOP_CHECK_S.
        step = None if isinstance(stop, StopEvent) else _STOP_CHECK_S
        while not stop.is_set() and not kick.is_set() and not self._closed:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            kick.wait(remaining if step is None else min(remaining, step))

    def _start_watch(self, stop: threading.Event | None) -> bool:
        """Start NVML's watch and wait (bounded) for its first scan; False when stopped meanwhile."""
        self._watch.start()
        deadline = time.monotonic() + self._config.health.call_timeout + _FIRST_ANSWER_SLACK_S
        while not self._watch.wait_first(_STOP_CHECK_S):
            if (stop is not None and stop.is_set()) or self._closed:
                return False
            if time.monotonic() >= deadline:
                break
        # The MPS daemons' first probe, so the first answer already says whether they answer.
        self._mps.wait_known(max(0.0, deadline - time.monotonic()))
        return True

    def _render(self, cfg: NvidiaConfig) -> list[DeviceGroup]:
        inventory = self._watch.inventory
        if inventory is None:
            return []
        plan = self._mps.plan(cfg.mps, inventory.devices)
        with self._lock:
            self._mps_plan = plan
        with self._book.together():  # every device's health as of one moment
            groups, offered = grouping.render(
                inventory,
                lambda device_id: self._status(device_id, plan),
                cfg.ignored_gpu_ids,
                cfg.sharing.shares,
                group_by=cfg.group_by,
            )
        if plan:
            states = {d: mps.state(t, self._mps.reachability) for d, t in plan.items()}
            groups = mps.with_attribute(groups, offered, states)
        by_id = {o.id: o for o in offered}
        with self._lock:
            if [(o.id, o.device.id, o.group) for o in by_id.values()] != [
                (o.id, o.device.id, o.group) for o in self._offered.values()
            ]:
                self._offered_generation += 1
            self._offered = by_id
        return groups

    def _status(self, device_id: str, plan: Mapping[str, mps.Daemon | str] | None = None) -> tuple[bool, str]:
        """A device's health: the health book's conditions, then its MPS daemon's (under `plan`,
        else the last rendered one)."""
        healthy, why = self._book.status(device_id)
        if not self._config.health.enabled:
            return healthy, why
        target = (self._mps_plan if plan is None else plan).get(device_id)
        mps_why = mps.health(target, self._mps.reachability)
        if not mps_why:
            return healthy, why
        return False, f"{why}; {mps_why}" if why else mps_why

    def _nvml_choice(self, cfg: NvidiaConfig) -> tuple[str, str]:
        if cfg.nvml_library or cfg.simulate:
            return cfg.nvml_library, cfg.simulate
        return self._default_library, self._default_simulate

    # -- device plugin --

    def fingerprint(self, stop: threading.Event) -> Generator[Sequence[DeviceGroup], None, None]:
        if not self._config.enabled:
            raise PluginDisabled()
        kick = threading.Event()
        with self._lock:
            self._subscribers.add(kick)
        if isinstance(stop, StopEvent):
            stop.on_set(kick.set)
        try:
            yield from self._fingerprint_loop(stop, kick)
        finally:
            with self._lock:
                self._subscribers.discard(kick)

    def _fingerprint_loop(self, stop: threading.Event, kick: threading.Event) -> Iterator[Sequence[DeviceGroup]]:
        # Yields on every wake; the SDK service drops answers equal to the last one sent.
        if self._closed or not self._start_watch(stop):
            return
        while not stop.is_set() and not self._closed:
            cfg = self._config
            if not cfg.enabled:
                log.info("plugin disabled by config; ending the fingerprint stream")
                return
            kick.clear()
            try:
                groups = self._render(cfg)
            except Exception:  # a bug here must not make Nomad drop every device
                log.exception("rendering the NVIDIA device groups failed")
            else:
                yield groups
            answered = time.monotonic()
            # Woken by the watch on every change; the timeout only bounds a lost wake-up.
            self._wait(stop, kick, answered + cfg.fingerprint_period)
            # Changes that come in a burst (an XID storm) make one answer per
            # _COALESCE_S, not one each: the first is not delayed.
            if time.monotonic() < answered + _COALESCE_S:
                stop.wait(answered + _COALESCE_S - time.monotonic())

    def stats_stream(self, interval: float, stop: threading.Event) -> AsyncIterator[bytes]:
        """The server's Stats path: answered on the event loop from the stats hub's clock."""
        return self._stats_stream(interval, stop)

    async def _stats_stream(self, interval: float, stop: threading.Event) -> AsyncIterator[bytes]:
        if not self._config.enabled:
            raise PluginDisabled()
        if self._closed:
            return  # a late call after shutdown: nothing may open NVML again
        self._watch.start()
        # The first stream of a process waits (bounded, off the loop) for the first scan.
        if not (self._watch.wait_first(0) and self._mps.wait_known(0)):
            if not await self._stats.off_loop(lambda: self._start_watch(stop)):
                return
        if self._closed:
            return
        sub = self._stats.subscribe(interval, stop)
        try:
            while (data := await sub.next()) is not None:
                yield data
        finally:
            self._stats.unsubscribe(sub)

    def stats(self, interval: float, stop: threading.Event) -> Generator[bytes, None, None]:
        if not self._config.enabled:
            raise PluginDisabled()
        if self._closed or not self._start_watch(stop):
            return  # a late call after shutdown: nothing may open NVML again
        self._stats.join()
        try:
            while not stop.is_set() and not self._closed:
                if not self._config.enabled:
                    log.info("plugin disabled by config; ending the stats stream")
                    return
                data = self._stats.collect()
                # While NVML is down: an empty StatsResponse (no groups), not stale
                # figures; the fingerprint says why.
                yield data if data is not None else b""
                stop.wait(interval)
        finally:
            self._stats.leave()

    def _tracked(self) -> tuple[int, list[TrackedDevice]]:
        if self._offered_generation == 0:
            self._render(self._config)  # stats before any fingerprint answer
        with self._lock:
            offered, generation = list(self._offered.values()), self._offered_generation
        return generation, grouping.tracked(offered)

    def reserve(self, device_ids: Sequence[str]) -> Reservation:
        if not device_ids:
            return Reservation(envs={})
        cfg = self._config
        if not cfg.enabled:
            raise PluginDisabled()
        if self._closed:
            asked = ", ".join(dict.fromkeys(device_ids))
            raise ReservationRefused(f"cannot reserve {asked}: the plugin is shut down")
        # Waits at most about one call deadline for the first scan; never for NVML after that.
        self._start_watch(None)
        self._render(cfg)  # the current ignore list and sharing decide what exists
        with self._lock:
            offered = self._offered
        devices = resolve(device_ids, offered, self._status)
        res = reservation(devices, cfg.reserve)
        with self._lock:
            plan = self._mps_plan
        return mps.add_to_reservation(res, device_ids, offered, devices, plan, cfg)
