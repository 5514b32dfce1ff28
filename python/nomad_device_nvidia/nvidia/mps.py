"""MPS (NVIDIA's Multi-Process Service): which GPUs use it, is their daemon there, what a task gets.

The `mps {}` block takes HashiCorp's keys (hashicorp/nomad-device-nvidia PR #97).
A GPU uses MPS when the block is enabled and either no per-GPU list is given
(every whole GPU, one daemon) or the list names it (its own daemon). MIG
instances never do (HashiCorp marks them ineligible): they are offered as
before, without MPS, and `mps = "ineligible"` says so.

`MpsWatch` connects to each configured daemon's control socket, on a thread of
its own every probe interval, under the call deadline: the RPCs only read what
it found. A GPU whose daemon does not answer is unhealthy (CUDA in a task
would fail to start on it), and healthy again when it answers.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from nomad_device_nvidia.nvidia.config import MpsConfig, NvidiaConfig
from nomad_device_nvidia.nvidia.fingerprint import MEMORY, GpuDevice, Inventory
from nomad_device_nvidia.nvidia.grouping import Offered
from nomad_device_nvidia.sdk import Attribute, ConfigError, DeviceGroup, Mount, Reservation, ReservationRefused

log = logging.getLogger(__name__)

# The socket the control daemon (nvidia-cuda-mps-control -d) listens on, in its pipe directory.
CONTROL_SOCKET = "control"
# The group attribute and its values.
ATTRIBUTE = "mps"
READY = "ready"  # the daemon's control socket accepts a connection
UNREACHABLE = "unreachable"  # configured, but the daemon does not answer
INELIGIBLE = "ineligible"  # a MIG instance: offered without MPS
# What NVIDIA's MPS clients (the CUDA driver in the task) read.
PIPE_DIRECTORY_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_DIRECTORY_ENV = "CUDA_MPS_LOG_DIRECTORY"
THREAD_PERCENTAGE_ENV = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
MEM_LIMIT_ENV = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
# How long a probe waits before it connects again to a daemon whose backlog is full.
_BUSY_RETRY_S = 0.05
# HashiCorp's PR passes `mps_user` to the task under this name; kept for jobs written for it.
USER_ENV = "MPS_USER"


@dataclass(frozen=True)
class Daemon:
    """The MPS control daemon a GPU's tasks connect to."""

    pipe_directory: str
    log_directory: str

    @property
    def socket_path(self) -> str:
        return os.path.join(self.pipe_directory, CONTROL_SOCKET)


# Per device ID: its daemon, or INELIGIBLE; devices without MPS are absent.
Plan = Mapping[str, "Daemon | str"]


def daemons(cfg: MpsConfig) -> list[Daemon]:
    """Every daemon the config names, each once."""
    if not cfg.enabled:
        return []
    if cfg.device_specific_mps_config:
        found = [Daemon(e.mps_pipe_directory, e.mps_log_directory) for e in cfg.device_specific_mps_config]
    else:
        found = [Daemon(cfg.mps_pipe_directory, cfg.mps_log_directory)]
    return list(dict.fromkeys(found))


def mig_conflicts(cfg: MpsConfig, devices: Sequence[GpuDevice]) -> list[tuple[str, str]]:
    """(key, GPU UUID) of each per-GPU entry that names a GPU in MIG mode."""
    if not cfg.enabled:
        return []
    mig_parents = {d.parent_uuid for d in devices if d.parent_uuid}
    key = "mps.device_specific_mps_config"
    return [(f"{key}[{i}].uuid", e.uuid) for i, e in enumerate(cfg.device_specific_mps_config) if e.uuid in mig_parents]


def check(cfg: MpsConfig, inventory: Inventory | None) -> None:
    """Refuses (ConfigError naming the key) an MPS entry for a GPU known to be in MIG mode."""
    if inventory is None:
        return  # not scanned yet: the plan logs it when the scan finds it
    for key, uuid in mig_conflicts(cfg, inventory.devices):
        raise ConfigError(key, f"GPU {uuid} is in MIG mode; MPS is for whole GPUs (disable MIG on it, or drop the entry)")


def plan(cfg: MpsConfig, devices: Sequence[GpuDevice]) -> dict[str, Daemon | str]:
    """Which devices use MPS, and through which daemon."""
    out: dict[str, Daemon | str] = {}
    if not cfg.enabled:
        return out
    listed = {e.uuid: Daemon(e.mps_pipe_directory, e.mps_log_directory) for e in cfg.device_specific_mps_config}
    everyone = None if listed else Daemon(cfg.mps_pipe_directory, cfg.mps_log_directory)
    for dev in devices:
        if dev.parent_uuid:
            if everyone is not None or dev.parent_uuid in listed:
                out[dev.id] = INELIGIBLE
            continue
        daemon = everyone or listed.get(dev.id)
        if daemon is not None:
            out[dev.id] = daemon
    return out


def probe(pipe_directory: str, timeout: float) -> str:
    """Connect to the daemon's control socket: "" when it accepts, else why not.

    The daemon's socket type is tried as SOCK_SEQPACKET (what HashiCorp's PR
    dials), then SOCK_STREAM when the kernel says the type is wrong.
    """
    path = os.path.join(pipe_directory, CONTROL_SOCKET)
    if len(path.encode()) >= 108:  # sun_path
        return f"MPS control socket path {path} is too long for a unix socket"
    deadline = time.monotonic() + timeout
    kinds = [socket.SOCK_SEQPACKET, socket.SOCK_STREAM]
    while True:
        sock = socket.socket(socket.AF_UNIX, kinds[0])
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(path)
            return ""
        except OSError as exc:
            error = exc
        finally:
            sock.close()
        if error.errno == errno.EPROTOTYPE and len(kinds) > 1:
            kinds.pop(0)  # the daemon's socket is of the other type
            continue
        # A full backlog (EAGAIN: a unix connect does not wait in non-blocking mode) is a busy
        # daemon, not a gone one: tried again until the deadline.
        if error.errno != errno.EAGAIN or time.monotonic() + _BUSY_RETRY_S >= deadline:
            break
        time.sleep(_BUSY_RETRY_S)
    if isinstance(error, TimeoutError) or error.errno is None:
        why = f"no answer within {timeout:g}s"
    else:
        why = os.strerror(error.errno).lower()
    return f"MPS control daemon not reachable at {path}: {why}"


class MpsWatch:
    """Probes the configured daemons on its own thread; `reachability` is what it last found.

    `on_change` is called when a daemon comes or goes. The thread runs while
    MPS is enabled (it ends when a new config disables it) and until `stop`.
    """

    def __init__(self, config: Callable[[], NvidiaConfig], on_change: Callable[[], None]) -> None:
        self._config = config
        self._on_change = on_change
        self._lock = threading.Lock()
        self._found: dict[str, str] = {}  # pipe directory -> "" (answers) or why not
        self._thread: threading.Thread | None = None
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._rounds = 0
        self._round_done = threading.Condition(self._lock)
        self._said_mig: set[tuple[str, str]] = set()

    def configure(self) -> None:
        """Follow the config in force: start probing (now) when MPS is enabled."""
        thread = None
        with self._lock:
            # Under the lock the thread's own "MPS is off, I end" decision takes: one
            # that is ending has already cleared _thread, so a new one starts here.
            if self._thread is None and not self._stop.is_set() and self._config().mps.enabled:
                thread = self._thread = threading.Thread(target=self._run, name="nvidia-mps", daemon=True)
        self._kick.set()  # a running thread probes now, or sees MPS disabled and ends
        if thread is not None:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    def wait_round(self, timeout: float) -> bool:
        """Wait (bounded) until a probe round ends after this call; False when none did."""
        with self._lock:
            if self._thread is None:
                return True
            seen = self._rounds
            return self._round_done.wait_for(lambda: self._rounds > seen or self._thread is None, timeout)

    def wait_known(self, timeout: float) -> bool:
        """Wait (bounded) until every configured daemon has been probed once; at once after that."""
        with self._lock:
            return self._round_done.wait_for(
                lambda: self._thread is None or all(d.pipe_directory in self._found for d in daemons(self._config().mps)),
                timeout,
            )

    def reachability(self, pipe_directory: str) -> str | None:
        """"" when the daemon answered at the last probe, why not when it did not; None when not probed yet."""
        with self._lock:
            return self._found.get(pipe_directory)

    def plan(self, cfg: MpsConfig, devices: Sequence[GpuDevice]) -> dict[str, Daemon | str]:
        """`plan`, and a per-GPU entry naming a GPU in MIG mode said once (its instances are ineligible)."""
        for key, uuid in mig_conflicts(cfg, devices):
            if (key, uuid) not in self._said_mig:
                self._said_mig.add((key, uuid))
                log.error('config key "%s": GPU %s is in MIG mode; MPS is for whole GPUs: its MIG instances '
                          "are offered without MPS", key, uuid)
        return plan(cfg, devices)

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    cfg = self._config()
                    if self._stop.is_set() or not cfg.mps.enabled:
                        self._thread = None
                        break
                self._kick.clear()
                self._round(cfg)
                self._kick.wait(cfg.health.probe_interval)
        except Exception:  # a bug here must not take the plugin down
            log.exception("the MPS daemon watch stopped unexpectedly")
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None  # ended by an exception
                if self._thread is None:
                    self._found = {}  # no stale answer is kept for a later thread
                self._round_done.notify_all()
            self._on_change()

    def _round(self, cfg: NvidiaConfig) -> None:
        found = {d.pipe_directory: probe(d.pipe_directory, cfg.health.call_timeout) for d in daemons(cfg.mps)}
        with self._lock:
            before, self._found = self._found, found
            self._rounds += 1
            self._round_done.notify_all()
        changed = False
        for directory, why in found.items():
            was = before.get(directory)
            if was == why:
                continue
            changed = True
            if why:
                log.warning("%s", why)
            elif was is not None:
                log.info("MPS control daemon at %s answers again", os.path.join(directory, CONTROL_SOCKET))
        if changed or set(before) != set(found):
            self._on_change()


def state(target: Daemon | str | None, reachability: Callable[[str], str | None]) -> str | None:
    """The `mps` attribute's value for one device (None: no MPS, or not probed yet)."""
    if target is None or isinstance(target, str):
        return target
    why = reachability(target.pipe_directory)
    if why is None:
        return None
    return UNREACHABLE if why else READY


def health(target: Daemon | str | None, reachability: Callable[[str], str | None]) -> str:
    """Why a device is unhealthy for MPS ("" when it is not)."""
    if not isinstance(target, Daemon):
        return ""
    return reachability(target.pipe_directory) or ""


def with_attribute(
    groups: Sequence[DeviceGroup], offered: Sequence[Offered], states: Mapping[str, str | None]
) -> list[DeviceGroup]:
    """Each group with `mps` set when every member device has the same MPS state."""
    members: dict[str, set[str | None]] = {}
    for o in offered:
        members.setdefault(o.group, set()).add(states.get(o.device.id))
    out = []
    for g in groups:
        values = members.get(g.name, set())
        value = next(iter(values)) if len(values) == 1 else None
        if value is not None:
            g = dataclasses.replace(g, attributes={**g.attributes, ATTRIBUTE: Attribute(value)})
        out.append(g)
    return out


def shares_per_device(device_ids: Sequence[str], offered: Mapping[str, Offered]) -> Counter[str]:
    """How many of the asked IDs (each counted once) are shares of each device."""
    return Counter(offered[i].device.id for i in dict.fromkeys(device_ids) if i in offered)


def thread_percentage(cfg: MpsConfig, shares: int, taken: int) -> int:
    """CUDA_MPS_ACTIVE_THREAD_PERCENTAGE for `taken` of a GPU's `shares`."""
    if cfg.active_thread_percentage:
        return min(100, cfg.active_thread_percentage * taken)
    return max(1, min(100, 100 * taken // shares))


def memory_limit_mib(cfg: MpsConfig, dev: GpuDevice, shares: int, taken: int) -> int | None:
    """The pinned device memory limit for `taken` of the GPU's `shares`, in MiB; None when its memory is unknown."""
    memory = dev.attributes.get(MEMORY)
    total = memory.value if memory is not None and isinstance(memory.value, int) else None
    if cfg.pinned_device_mem_limit_mib:
        limit = cfg.pinned_device_mem_limit_mib * taken
        return limit if total is None else min(total, limit)
    if total is None:
        return None
    return max(1, total * taken // shares)


def add_to_reservation(
    res: Reservation,
    device_ids: Sequence[str],
    offered: Mapping[str, Offered],
    devices: Sequence[GpuDevice],
    targets: Plan,
    cfg: NvidiaConfig,
) -> Reservation:
    """`res` with the MPS environment, the pipe directory mounted and the limits of the shares taken.

    One process talks to one MPS daemon: devices of two daemons, or MPS devices
    with devices without MPS, are refused together.
    """
    on_mps = [d for d in devices if isinstance(targets.get(d.id), Daemon)]
    if not on_mps:
        return res
    without = [d.id for d in devices if not isinstance(targets.get(d.id), Daemon)]
    if without:
        raise ReservationRefused(
            f"{on_mps[0].id} uses MPS and {without[0]} does not: a task's devices must all use one MPS daemon, "
            "or none"
        )
    used = {t for d in on_mps if isinstance(t := targets[d.id], Daemon)}
    if len(used) > 1:
        dirs = sorted(t.pipe_directory for t in used)
        raise ReservationRefused(
            f"the devices use different MPS daemons ({', '.join(dirs)}): a task can use one MPS daemon"
        )
    daemon = used.pop()
    shares = max(1, cfg.sharing.shares)
    taken = shares_per_device(device_ids, offered)
    # One percentage for the whole process: the smallest of its GPUs', so no GPU gets more than its shares.
    percent = min(thread_percentage(cfg.mps, shares, taken[d.id] or 1) for d in on_mps)
    limits = []
    for dev in on_mps:
        mib = memory_limit_mib(cfg.mps, dev, shares, taken[dev.id] or 1)
        if mib is None:
            log.warning("memory of %s unknown; no MPS memory limit set for it", dev.id)
            continue
        limits.append(f"{dev.id}={mib}M")
    envs = dict(res.envs)
    envs[PIPE_DIRECTORY_ENV] = daemon.pipe_directory
    envs[LOG_DIRECTORY_ENV] = daemon.log_directory
    envs[THREAD_PERCENTAGE_ENV] = str(percent)
    if limits:
        envs[MEM_LIMIT_ENV] = ",".join(limits)
    if cfg.mps.mps_user:
        envs[USER_ENV] = cfg.mps.mps_user
    mount = Mount(task_path=daemon.pipe_directory, host_path=daemon.pipe_directory, read_only=False)
    return dataclasses.replace(res, envs=envs, mounts=(*res.mounts, mount))
