"""MPS: the `mps {}` block with HashiCorp's keys, the daemon check as an attribute
and as health, Reserve's MPS environment with the limits of the shares taken, MIG instances.

The MPS control daemon is played by tests/mps_standin.py (a process serving a unix socket
named `control` in a pipe directory), which the tests start and kill. The plugin is driven
by Nomad's client code (the Go harness) on the simulated driver.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from conftest import HarnessRun
from nomad_device_nvidia.nvidia import mps
from nomad_device_nvidia.nvidia.config import MpsConfig, MpsDeviceConfig, NvidiaConfig
from nomad_device_nvidia.nvidia.fingerprint import MEMORY, GpuDevice
from nomad_device_nvidia.nvidia.grouping import Offered, share_ids
from nomad_device_nvidia.nvidia.plugin import NvidiaDevicePlugin
from nomad_device_nvidia.sdk import Attribute, ConfigError, Reservation, ReservationRefused
from test_health_faults import SIM_LIB, device_status, sim_gpus

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
STANDIN = TESTS / "mps_standin.py"
TWO_GPUS = TESTS / "scenarios" / "matrix-2gpu.toml"
MIXED_MIG = REPO / "scenarios" / "8xa100-mixed-mig.toml"
UNREACHABLE = "MPS control daemon not reachable at"


# --- the stand-in daemon ---


class Daemon:
    """tests/mps_standin.py serving PIPE/control; start() and kill() as often as needed."""

    def __init__(self, pipe: Path, kind: str = "seqpacket") -> None:
        self.pipe = pipe
        self.kind = kind
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Daemon:
        assert self.proc is None
        self.proc = subprocess.Popen([sys.executable, str(STANDIN), str(self.pipe), "--type", self.kind],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until it listens (or dies)
        assert line.strip() == "ready", f"stand-in daemon did not start: {line!r}"
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # as a crash: the socket file stays behind
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "mps-pipe")
    try:
        yield d.start()
    finally:
        if d.proc is not None:
            d.kill()


# --- config: HashiCorp's keys and defaults, ours, errors naming the key ---


def test_defaults_are_hashicorps() -> None:
    cfg = NvidiaConfig.from_mapping({}).mps
    assert cfg == MpsConfig()
    assert not cfg.enabled
    assert (cfg.mps_pipe_directory, cfg.mps_log_directory, cfg.mps_user) == ("/tmp/nvidia-mps", "/var/log/nvidia-mps", "")
    on = NvidiaConfig.from_mapping({"mps": {"enabled": True}}).mps
    assert on.enabled and on.mps_pipe_directory == "/tmp/nvidia-mps" and on.mps_log_directory == "/var/log/nvidia-mps"
    # What the agent sends for an `mps { enabled = true }` block: every attribute with its schema default.
    agent = {"enabled": True, "mps_user": "", "mps_pipe_directory": "", "mps_log_directory": "",
             "device_specific_mps_config": [], "active_thread_percentage": 0, "pinned_device_mem_limit_mib": 0}
    assert NvidiaConfig.from_mapping({"mps": agent}).mps == on


def test_hashicorp_per_gpu_config_moves_over_unchanged() -> None:
    raw = {"enabled": True, "mps_user": "mpsuser", "device_specific_mps_config": [
        {"uuid": "GPU-1234", "mps_pipe_directory": "/tmp/nvidia-mps1", "mps_log_directory": "/var/log/nvidia-mps1"},
        {"uuid": "GPU-5678", "mps_pipe_directory": "/tmp/nvidia-mps2/", "mps_log_directory": "/var/log/nvidia-mps2"},
    ]}
    cfg = NvidiaConfig.from_mapping({"mps": raw}).mps
    assert cfg.mps_user == "mpsuser"
    assert cfg.device_specific_mps_config == (
        MpsDeviceConfig("GPU-1234", "/tmp/nvidia-mps1", "/var/log/nvidia-mps1"),
        MpsDeviceConfig("GPU-5678", "/tmp/nvidia-mps2", "/var/log/nvidia-mps2"),
    )
    assert [d.socket_path for d in mps.daemons(cfg)] == ["/tmp/nvidia-mps1/control", "/tmp/nvidia-mps2/control"]


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"enabled": "yes"}, "mps.enabled", "must be true or false"),
        ({"mps_pipe_directory": "tmp/nvidia-mps"}, "mps.mps_pipe_directory", "must be an absolute path, got 'tmp/nvidia-mps'"),
        ({"mps_log_directory": "var/log/nvidia-mps"}, "mps.mps_log_directory", "must be an absolute path"),
        ({"device_specific_mps_config": [{"uuid": "GPU-1", "mps_pipe_directory": "rel"}]},
         "mps.device_specific_mps_config[0].mps_pipe_directory", "must be an absolute path"),
        ({"device_specific_mps_config": [{"uuid": "GPU-1"}]},
         "mps.device_specific_mps_config[0].mps_pipe_directory", "must be set"),
        ({"device_specific_mps_config": [{"uuid": "MIG-1", "mps_pipe_directory": "/p"}]},
         "mps.device_specific_mps_config[0].uuid", "is a MIG instance"),
        ({"device_specific_mps_config": [{"uuid": "GPU-1", "mps_pipe_directory": "/p"},
                                         {"uuid": "GPU-1", "mps_pipe_directory": "/q"}]},
         "mps.device_specific_mps_config[1].uuid", "listed twice"),
        ({"mps_pipe_directory": "/p", "device_specific_mps_config": [{"uuid": "GPU-1", "mps_pipe_directory": "/q"}]},
         "mps.device_specific_mps_config", "cannot be set together with mps.mps_pipe_directory"),
        ({"active_thread_percentage": 101}, "mps.active_thread_percentage", "between 0 (an equal part) and 100"),
        ({"pinned_device_mem_limit_mib": -1}, "mps.pinned_device_mem_limit_mib", "0 (an equal part) or more"),
        ({"mps_user": "a b"}, "mps.mps_user", "must be a user name"),
        ({"mps_sock_addr": "control"}, "mps.mps_sock_addr", "unknown key"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        NvidiaConfig.from_mapping({"mps": raw})
    assert err.value.key == key, err.value
    assert fragment in str(err.value), err.value
    assert f'config key "{key}"' in str(err.value)


def test_a_bad_mps_block_keeps_the_last_good_config() -> None:
    plugin = NvidiaDevicePlugin()
    plugin.set_config({"mps": {"enabled": True, "mps_pipe_directory": "/run/mps"}})
    good = plugin.config
    with pytest.raises(ConfigError, match="mps.mps_pipe_directory"):
        plugin.set_config({"mps": {"enabled": True, "mps_pipe_directory": "run/mps"}})
    assert plugin.config == good
    plugin.shutdown()


# --- the check: a connect on the control socket ---


@pytest.mark.parametrize("kind", ["seqpacket", "stream"])
def test_probe_finds_the_daemon_and_its_absence(tmp_path: Path, kind: str) -> None:
    d = Daemon(tmp_path / "pipe", kind).start()
    assert mps.probe(str(d.pipe), 1.0) == ""
    d.kill()
    assert (d.pipe / "control").is_socket(), "a killed daemon leaves its socket behind"
    why = mps.probe(str(d.pipe), 1.0)
    assert why == f"{UNREACHABLE} {d.pipe}/control: connection refused", why
    d.start()  # a new daemon replaces the stale socket
    assert mps.probe(str(d.pipe), 1.0) == ""
    d.kill()


def test_probe_without_a_pipe_directory(tmp_path: Path) -> None:
    why = mps.probe(str(tmp_path / "absent"), 1.0)
    assert why == f"{UNREACHABLE} {tmp_path}/absent/control: no such file or directory", why
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "control").write_text("")  # a file, not a socket
    assert mps.probe(str(tmp_path / "plain"), 1.0).endswith("connection refused")


def test_probe_of_a_socket_nobody_accepts_on_is_bounded(tmp_path: Path) -> None:
    # A listener that never accepts, its backlog full: the connect must not wait past the deadline.
    pipe = tmp_path / "full"
    pipe.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(pipe / "control"))
    server.listen(0)
    held = []
    try:
        for _ in range(4):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(str(pipe / "control"))
            except BlockingIOError:
                pass
            held.append(c)
        outcome: list[str] = []
        t = threading.Thread(target=lambda: outcome.append(mps.probe(str(pipe), 0.2)))
        t.start()
        t.join(30)  # only catches a hang
        assert not t.is_alive() and outcome
        assert outcome[0].startswith(f"{UNREACHABLE} {pipe}/control: "), outcome  # full: not an answer
    finally:
        for c in held:
            c.close()
        server.close()


def test_watch_follows_the_config(daemon: Daemon) -> None:
    on = NvidiaConfig.from_mapping({"mps": {"enabled": True, "mps_pipe_directory": str(daemon.pipe)}})
    cfg = [on]
    watch = mps.MpsWatch(lambda: cfg[0], lambda: None)
    try:
        watch.configure()
        assert watch.wait_known(30)
        assert watch.reachability(str(daemon.pipe)) == ""
        # Known from then on: an RPC that waits for it (the first answer, Reserve) never waits again.
        assert watch.wait_known(0)
        cfg[0] = NvidiaConfig()  # MPS off: the thread ends and forgets what it found
        watch.configure()
        assert watch.wait_round(30)
        assert watch.reachability(str(daemon.pipe)) is None
        cfg[0] = on  # and on again: a new thread probes at once
        watch.configure()
        assert watch.wait_round(30)
        assert watch.reachability(str(daemon.pipe)) == ""
    finally:
        watch.stop()
    assert watch.wait_round(30)


# --- Reserve's environment, as a pure function over offered shares ---


def gpu(n: int, memory_mib: int | None = 81559) -> GpuDevice:
    attrs = {MEMORY: Attribute(memory_mib, "MiB")} if memory_mib is not None else {}
    return GpuDevice(id=f"GPU-{n}", name="H100", pci_bus_id="", slot=(n, -1), attributes=attrs, minor=n)


def offered_for(devices: list[GpuDevice], shares: int) -> dict[str, Offered]:
    return {sid: Offered(sid, d, "H100") for d in devices for sid in share_ids(d.id, shares)}


def reserve(cfg: NvidiaConfig, devices: list[GpuDevice], ids: list[str]) -> Reservation:
    offered = offered_for(devices, cfg.sharing.shares)
    picked = list({offered[i].device.id: offered[i].device for i in ids}.values())
    base = Reservation(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(d.id for d in picked)})
    return mps.add_to_reservation(base, ids, offered, picked, mps.plan(cfg.mps, devices), cfg)


def test_limits_of_the_shares_taken_are_added_up() -> None:
    cfg = NvidiaConfig.from_mapping({"sharing": {"shares": 4}, "mps": {"enabled": True}})
    a, b = gpu(0), gpu(1, 40960)
    one = reserve(cfg, [a, b], ["GPU-0::2"])
    assert one.envs == {
        "NVIDIA_VISIBLE_DEVICES": "GPU-0",
        "CUDA_MPS_PIPE_DIRECTORY": "/tmp/nvidia-mps",
        "CUDA_MPS_LOG_DIRECTORY": "/var/log/nvidia-mps",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "GPU-0=20389M",
    }
    assert [(m.task_path, m.host_path, m.read_only) for m in one.mounts] == [("/tmp/nvidia-mps", "/tmp/nvidia-mps", False)]
    three = reserve(cfg, [a, b], ["GPU-0::0", "GPU-0::3", "GPU-0::1", "GPU-0::3"])  # a repeated ID counts once
    assert three.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "75"
    assert three.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"GPU-0={81559 * 3 // 4}M"
    # Two GPUs, different shares of each: memory per GPU; one thread percentage per process, the smallest.
    mixed = reserve(cfg, [a, b], ["GPU-0::0", "GPU-0::1", "GPU-1::0"])
    assert mixed.envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-0,GPU-1"
    assert mixed.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"GPU-0={81559 // 2}M,GPU-1={40960 // 4}M"
    assert mixed.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"


def test_configured_limits_per_share_and_mps_user() -> None:
    cfg = NvidiaConfig.from_mapping({"sharing": {"shares": 3}, "mps": {
        "enabled": True, "active_thread_percentage": 40, "pinned_device_mem_limit_mib": 30000, "mps_user": "mps"}})
    a = gpu(0)
    one = reserve(cfg, [a], ["GPU-0::0"]).envs
    assert (one["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], one["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]) == ("40", "GPU-0=30000M")
    assert one["MPS_USER"] == "mps"
    # Added up, and never past the whole GPU.
    three = reserve(cfg, [a], ["GPU-0::0", "GPU-0::1", "GPU-0::2"]).envs
    assert (three["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], three["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]) == ("100", "GPU-0=81559M")
    # Thirds that do not divide: rounded down, so shares never add up past the GPU.
    even = NvidiaConfig.from_mapping({"sharing": {"shares": 3}, "mps": {"enabled": True}})
    assert reserve(even, [a], ["GPU-0::1"]).envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "33"
    # Memory unknown and not configured: no memory limit for that GPU, the rest is given.
    blind = reserve(even, [gpu(5, None)], ["GPU-5::0"]).envs
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in blind and blind["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "33"


def test_per_gpu_daemons_and_what_is_refused() -> None:
    cfg = NvidiaConfig.from_mapping({"sharing": {"shares": 2}, "mps": {"enabled": True, "device_specific_mps_config": [
        {"uuid": "GPU-0", "mps_pipe_directory": "/run/mps0", "mps_log_directory": "/var/log/mps0"},
        {"uuid": "GPU-1", "mps_pipe_directory": "/run/mps1"}]}})
    a, b, c = gpu(0), gpu(1), gpu(2)
    envs = reserve(cfg, [a, b, c], ["GPU-1::1"]).envs
    assert (envs["CUDA_MPS_PIPE_DIRECTORY"], envs["CUDA_MPS_LOG_DIRECTORY"]) == ("/run/mps1", "/var/log/nvidia-mps")
    # GPU-2 is not listed: no MPS for it, nothing added.
    assert reserve(cfg, [a, b, c], ["GPU-2::0"]).envs == {"NVIDIA_VISIBLE_DEVICES": "GPU-2"}
    with pytest.raises(ReservationRefused, match="different MPS daemons"):
        reserve(cfg, [a, b, c], ["GPU-0::0", "GPU-1::0"])
    with pytest.raises(ReservationRefused, match="GPU-0 uses MPS and GPU-2 does not"):
        reserve(cfg, [a, b, c], ["GPU-0::0", "GPU-2::0"])


def test_mig_instances_are_ineligible() -> None:
    whole = gpu(0)
    parent = "GPU-9"
    mig = GpuDevice(id="MIG-9a", name="A100 MIG 1g.5gb", pci_bus_id="", slot=(9, 0), attributes={}, parent_uuid=parent)
    on = NvidiaConfig.from_mapping({"mps": {"enabled": True}}).mps
    assert mps.plan(on, [whole, mig]) == {"GPU-0": mps.Daemon("/tmp/nvidia-mps", "/var/log/nvidia-mps"),
                                          "MIG-9a": mps.INELIGIBLE}
    per_gpu = NvidiaConfig.from_mapping({"mps": {"enabled": True, "device_specific_mps_config": [
        {"uuid": parent, "mps_pipe_directory": "/run/mps9"}]}}).mps
    assert mps.mig_conflicts(per_gpu, [whole, mig]) == [("mps.device_specific_mps_config[0].uuid", parent)]
    assert mps.plan(per_gpu, [whole, mig]) == {"MIG-9a": mps.INELIGIBLE}


# --- through Nomad's client code (the Go harness) ---


def _hcl(values: dict[str, Any], indent: str = "  ") -> str:
    """HCL for the launcher's `config { ... }` form; a list of dicts is a repeated block."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict):
            out.append(f"{indent}{key} {{\n{_hcl(value, indent + '  ')}{indent}}}\n")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.extend(f"{indent}{key} {{\n{_hcl(v, indent + '  ')}{indent}}}\n" for v in value)
        else:
            out.append(f"{indent}{key} = {json.dumps(value)}\n")
    return "".join(out)


def config(tmp_path: Path, scenario: Path, name: str = "config", **settings: Any) -> Path:
    assert SIM_LIB.exists(), f"{SIM_LIB} missing: run `make sim`"
    path = tmp_path / f"{name}.hcl"
    body = {"simulate": str(scenario), "nvml_library": str(SIM_LIB), "fingerprint_period": "1h", **settings}
    path.write_text("config {\n" + _hcl(body) + "}\n")
    return path


def groups_of(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in event["groups"]}


def attribute(group: dict[str, Any], name: str) -> Any:
    a = group["attributes"].get(name)
    return None if a is None else a["value"]


@pytest.mark.parametrize("shares", [1, 2, 4])
def test_reserve_through_nomads_client(run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path,
                                       daemon: Daemon, shares: int) -> None:
    first, second = (g["uuid"] for g in sim_gpus(TWO_GPUS))
    cfg = config(tmp_path, TWO_GPUS, sharing={"shares": shares},
                 mps={"enabled": True, "mps_pipe_directory": str(daemon.pipe), "mps_log_directory": "/var/log/mps-t"})
    one, every = share_ids(first, shares)[:1], share_ids(first, shares)
    both = share_ids(first, shares)[:1] + share_ids(second, shares)
    run = run_harness("session", "--plugin", plugin_bin, "--config", cfg, "--fingerprints", "1",
                      "--reserve", ",".join(one), "--reserve", ",".join(every), "--reserve", ",".join(both)).ok()
    fp = next(e for e in run.of("fingerprint") if e.get("groups"))
    (group,) = fp["groups"]
    assert attribute(group, "mps") == "ready", group["attributes"]
    assert all(d["healthy"] for d in group["devices"]), group["devices"]
    memory = attribute(group, "memory")
    assert isinstance(memory, int) and memory > 0
    got = [r["reservation"] for r in run.of("reserve")]
    assert all(r["error"] is None for r in run.of("reserve")), run.of("reserve")
    pipe = str(daemon.pipe)
    for r in got:
        assert r["mounts"] == [{"task_path": pipe, "host_path": pipe, "read_only": False}], r
        assert r["envs"]["CUDA_MPS_PIPE_DIRECTORY"] == pipe
        assert r["envs"]["CUDA_MPS_LOG_DIRECTORY"] == "/var/log/mps-t"
    envs = [r["envs"] for r in got]
    # One share: that GPU once, its part of the SMs and of the memory.
    assert envs[0]["NVIDIA_VISIBLE_DEVICES"] == first
    assert envs[0]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == str(100 // shares)
    assert envs[0]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"{first}={memory // shares}M"
    # Every share of one GPU: the GPU once, all of it.
    assert envs[1]["NVIDIA_VISIBLE_DEVICES"] == first
    assert envs[1]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "100"
    assert envs[1]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"{first}={memory}M"
    # One share of the first GPU and all of the second: memory per GPU, the smaller thread percentage.
    assert envs[2]["NVIDIA_VISIBLE_DEVICES"] == f"{first},{second}"
    assert envs[2]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"{first}={memory // shares}M,{second}={memory}M"
    assert envs[2]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == str(100 // shares)


def _read_events(stdout: IO[str], on_event: Callable[[dict[str, Any]], None], out: list[dict[str, Any]]) -> None:
    for line in stdout:
        if line.strip():
            event = json.loads(line)
            out.append(event)
            on_event(event)


def test_daemon_killed_and_restarted(harness_bin: Path, plugin_bin: Path, tmp_path: Path, daemon: Daemon) -> None:
    """The daemon is killed once the GPUs are healthy with `mps = "ready"`, and started again once
    the client has them unhealthy: both GPUs go unhealthy naming the socket, then healthy again."""
    gpus = [g["uuid"] for g in sim_gpus(TWO_GPUS)]
    cfg = config(tmp_path, TWO_GPUS, health={"probe_interval": "200ms"},
                 mps={"enabled": True, "mps_pipe_directory": str(daemon.pipe)})
    steps = ["devices:2", "healthy:all", f"unhealthy:all:{UNREACHABLE}", "healthy:all"]
    args = [str(harness_bin), "timeline", "--plugin", str(plugin_bin), "--config", str(cfg), "--timeout", "30s",
            *[a for s in steps for a in ("--until", s)]]
    events: list[dict[str, Any]] = []
    acted: list[str] = []

    def act(event: dict[str, Any]) -> None:
        if event.get("event") != "step":
            return
        if event["index"] == 1:  # healthy:all met
            daemon.kill()
            acted.append("killed")
        elif event["index"] == 2:  # unhealthy:all met
            daemon.start()
            acted.append("restarted")

    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        reader = threading.Thread(target=_read_events, args=(proc.stdout, act, events))
        reader.start()
        try:
            stderr = proc.stderr.read()
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            reader.join(30)
    run = HarnessRun(args, proc.returncode, events, stderr)
    run.ok()
    assert acted == ["killed", "restarted"], run.describe()
    fps = run.of("fingerprint")
    steps_met = {s["index"]: s for s in run.of("step")}
    by = {i: int(s["by"].split("#")[1]) for i, s in steps_met.items() if s["by"].startswith("fingerprint#")}
    fp = {e["seq"]: e for e in fps}
    ready = fp[by[1]]
    (group,) = ready["groups"]
    assert attribute(group, "mps") == "ready"
    sick = fp[by[2]]
    (group,) = sick["groups"]
    assert attribute(group, "mps") == "unreachable"
    status = device_status(sick)
    assert set(status) == set(gpus)
    for ok, desc in status.values():
        assert not ok and desc == f"{UNREACHABLE} {daemon.pipe}/control: connection refused", desc
    back = fp[by[3]]
    (group,) = back["groups"]
    assert attribute(group, "mps") == "ready"
    assert all(ok for ok, _ in device_status(back).values())


def test_mig_instances_are_offered_without_mps(run_harness: Callable[..., HarnessRun], plugin_bin: Path,
                                               tmp_path: Path, daemon: Daemon) -> None:
    gpus = sim_gpus(MIXED_MIG)
    whole = next(g["uuid"] for g in gpus if not g["migs"])
    mig = next(m["uuid"] for g in gpus for m in g["migs"])
    cfg = config(tmp_path, MIXED_MIG, mps={"enabled": True, "mps_pipe_directory": str(daemon.pipe)})
    run = run_harness("session", "--plugin", plugin_bin, "--config", cfg, "--fingerprints", "1",
                      "--reserve", whole, "--reserve", mig).ok()
    fp = next(e for e in run.of("fingerprint") if e.get("groups"))
    values = {}
    for g in fp["groups"]:
        for d in g["devices"]:
            values[d["id"]] = attribute(g, "mps")
    assert values[whole] == "ready"
    assert values[mig] == "ineligible"
    assert {v for i, v in values.items() if i.startswith("MIG-")} == {"ineligible"}
    on_whole, on_mig = (r["reservation"]["envs"] for r in run.of("reserve"))
    assert on_whole["CUDA_MPS_PIPE_DIRECTORY"] == str(daemon.pipe)
    assert not any(k.startswith("CUDA_MPS_") for k in on_mig), on_mig


def test_mps_entry_for_a_gpu_in_mig_mode_is_refused(run_harness: Callable[..., HarnessRun], plugin_bin: Path,
                                                    tmp_path: Path, daemon: Daemon) -> None:
    gpus = sim_gpus(MIXED_MIG)
    wholes = [g["uuid"] for g in gpus if not g["migs"]]
    in_mig = next(g["uuid"] for g in gpus if g["migs"])
    entries = [{"uuid": u, "mps_pipe_directory": str(daemon.pipe)} for u in wholes]
    good = config(tmp_path, MIXED_MIG, "good", mps={"enabled": True, "device_specific_mps_config": entries})
    bad = config(tmp_path, MIXED_MIG, "bad", mps={"enabled": True, "device_specific_mps_config": [
        *entries, {"uuid": in_mig, "mps_pipe_directory": "/run/m"}]})
    relative = config(tmp_path, MIXED_MIG, "relative", mps={"enabled": True, "mps_pipe_directory": "run/mps"})
    run = run_harness("configs", "--plugin", plugin_bin, "--step", f"hcl:{good}", "--step", "probe",
                      "--step", f"hcl:{bad}", "--step", f"hcl:{relative}", "--step", "probe")
    errors = [e["error"] for e in run.of("set_config")]
    assert errors[0] is None, run.describe()
    key = f"mps.device_specific_mps_config[{len(entries)}].uuid"
    assert f'config key "{key}"' in errors[1], errors
    assert f"GPU {in_mig} is in MIG mode" in errors[1], errors
    assert 'config key "mps.mps_pipe_directory": must be an absolute path' in errors[2], errors
    # The plugin still serves, on the last good config: the listed GPUs use MPS; the
    # MIG instances' GPUs are not listed, so they have no MPS state at all.
    last = run.of("probe")[-1]
    assert last["info_error"] is None and last["fingerprint_error"] is None, last
    found = {d["id"]: attribute(g, "mps") for g in last["groups"] for d in g["devices"]}
    assert {found[u] for u in wholes} == {"ready"}, found
    assert {v for i, v in found.items() if i.startswith("MIG-")} == {None}, found


def test_mps_entry_for_a_gpu_in_mig_mode_before_the_first_scan(run_harness: Callable[..., HarnessRun],
                                                               plugin_bin: Path, tmp_path: Path,
                                                               daemon: Daemon) -> None:
    """At agent start SetConfig comes before any scan: the entry cannot be refused yet. The scan
    finds the GPU in MIG mode: the same key is logged as an error, its instances offered without MPS."""
    gpus = sim_gpus(MIXED_MIG)
    wholes = [g["uuid"] for g in gpus if not g["migs"]]
    in_mig = next(g for g in gpus if len(g["migs"]) == 2)  # the 3g.20gb pair: a group of its own
    entries = [{"uuid": u, "mps_pipe_directory": str(daemon.pipe)} for u in wholes]
    cfg = config(tmp_path, MIXED_MIG, mps={"enabled": True, "device_specific_mps_config": [
        *entries, {"uuid": in_mig["uuid"], "mps_pipe_directory": "/run/m"}]})
    run = run_harness("configs", "--plugin", plugin_bin, "--logs", "--step", f"hcl:{cfg}", "--step", "probe")
    assert [e["error"] for e in run.of("set_config")] == [None], run.describe()
    (probe,) = run.of("probe")
    found = {d["id"]: attribute(g, "mps") for g in probe["groups"] for d in g["devices"]}
    assert {found[u] for u in wholes} == {"ready"}, found
    assert {found[m["uuid"]] for m in in_mig["migs"]} == {"ineligible"}, found
    said = [str(e["entry"].get("@message")) for e in run.of("log") if e.get("from_plugin")
            and e["entry"].get("@level") == "error"]
    key = f'config key "mps.device_specific_mps_config[{len(entries)}].uuid"'
    assert [m for m in said if key in m and f"GPU {in_mig['uuid']} is in MIG mode" in m], said
