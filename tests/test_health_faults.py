"""Health and fingerprint that hold when the driver misbehaves, proved through
Nomad's own client code.

Each test launches the real plugin executable on the simulated driver
(tests/scenarios/fault-*.toml) through `harness timeline` (tests/harness/timeline.go):
the Fingerprint stream stays open as the device manager keeps it, Stats opens after the
first fingerprint, every response and plugin log line is printed with its time in ms
since launch, and the run goes on until a list of steps has been met in order, each
within a bounded wait (a limit that catches a hang). The assertions are on what was
answered and on the order of events, never on how long something took: the times are
recorded (build/fault-timelines.json), not asserted.

The simulated driver's clock (fault `after_s`, event `at_s`) starts at the NVML init that
activates it. The plugin cannot init before SetConfig nor report devices before init, so
the init lies in [set_config_call, first fingerprint with devices]: every "due" time
below is that window shifted by the scenario's offset, and a lag is measured from the
earliest possible due time (the conservative bound).

Every test writes what it measured to build/fault-timelines.json (one entry per test)
before asserting, so a failing run still leaves its timeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO_ROOT, HarnessRun, merge_json

RunHarness = Callable[..., HarnessRun]

SCENARIOS = REPO_ROOT / "tests" / "scenarios"
SIM_LIB = REPO_ROOT / "build" / "sim" / "libnvidia-ml.so.1"
TIMELINES = REPO_ROOT / "build" / "fault-timelines.json"

CALL_TIMEOUT = "1s"
PROBE_INTERVAL_S = 0.5
STATS_INTERVAL = "500ms"
FAST_HEALTH = {"call_timeout": CALL_TIMEOUT, "probe_interval": "500ms"}

# Texts of the contract (notes/contract.md) the plugin's answers and logs must contain.
DID_NOT_RETURN = f"did not return within {CALL_TIMEOUT}"
DRIVER_UNAVAILABLE = "NVIDIA driver unavailable"
INIT_FAILED = "NVML failed to initialise"
INIT_OK = "NVML initialised"
NO_LIBRARY = "no libnvidia-ml.so.1 on this machine"
EVENTS_FAILED = "reading an NVML event failed"
EVENTS_BACK = "NVML events are read again"


# --- the simulated machine, seen through pynvml in a child process ---

_LOOKUP = r"""
import ctypes, json, sys
# Loaded first and globally, so pynvml's dlopen("libnvidia-ml.so.1") gets this object.
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import pynvml as n
for attempt in range(3):  # a scenario whose first inits fail (fail_count)
    try:
        n.nvmlInit()
        break
    except n.NVMLError:
        pass
else:
    n.nvmlInit()  # raises the scenario's own error
gpus = []
for i in range(n.nvmlDeviceGetCount()):
    h = n.nvmlDeviceGetHandleByIndex(i)
    migs = []
    try:
        enabled = n.nvmlDeviceGetMigMode(h)[0] == n.NVML_DEVICE_MIG_ENABLE
    except n.NVMLError:
        enabled = False
    if enabled:
        for k in range(n.nvmlDeviceGetMaxMigDeviceCount(h)):
            try:
                m = n.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
            except n.NVMLError:
                continue
            migs.append({"uuid": n.nvmlDeviceGetUUID(m), "gpu_instance": n.nvmlDeviceGetGpuInstanceId(m)})
    gpus.append({"uuid": n.nvmlDeviceGetUUID(h), "migs": migs})
n.nvmlShutdown()
print(json.dumps(gpus))
"""


def sim_gpus(scenario: Path) -> list[dict[str, Any]]:
    """The scenario's GPUs by NVML index: {"uuid", "migs": [{"uuid", "gpu_instance"}]}.

    UUIDs depend only on the scenario's name and the GPU index, so this fresh process
    (its own simulated clock, no persist dir) names the devices the plugin will offer."""
    assert SIM_LIB.exists(), f"{SIM_LIB} missing: run `make sim`"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVML_SIM_")}
    env["NVML_SIM_SCENARIO"] = str(scenario)
    proc = subprocess.run([sys.executable, "-c", _LOOKUP, str(SIM_LIB)], capture_output=True, text=True,
                          env=env, timeout=60)
    lines = list(dict.fromkeys(proc.stderr.splitlines()))  # the sim repeats its complaint per init
    assert proc.returncode == 0, f"pynvml on {scenario.name}:\n" + "\n".join(lines[-12:])
    gpus: list[dict[str, Any]] = json.loads(proc.stdout)
    return gpus


def uuids(scenario: Path) -> list[str]:
    return [g["uuid"] for g in sim_gpus(scenario)]


# --- config files and the harness run ---


def _hcl_body(values: dict[str, Any], indent: str) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key} {{\n{_hcl_body(value, indent + '  ')}{indent}}}\n")
        else:
            lines.append(f"{indent}{key} = {json.dumps(value)}\n")
    return "".join(lines)


def config_file(tmp_path: Path, name: str, **settings: Any) -> Path:
    """A config in the launcher's form, `config { ... }`, which the harness reads as the agent does."""
    path = tmp_path / f"{name}.hcl"
    path.write_text("config {\n" + _hcl_body(settings, "  ") + "}\n")
    return path


def sim_config(tmp_path: Path, scenario: Path, name: str = "config", **settings: Any) -> Path:
    assert scenario.exists(), scenario
    assert SIM_LIB.exists(), f"{SIM_LIB} missing: run `make sim`"
    return config_file(tmp_path, name, simulate=str(scenario), nvml_library=str(SIM_LIB), **settings)


class Timeline:
    """One `harness timeline` run, read back."""

    def __init__(self, run: HarnessRun) -> None:
        self.run = run

    def describe(self) -> str:
        return self.run.describe()

    def ok(self) -> Timeline:
        self.run.ok()
        return self

    def ms(self, kind: str) -> float:
        found = self.run.of(kind)
        assert found, f"no {kind!r} event: {self.describe()}"
        return float(found[0]["ms"])

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.run.of("step")

    def step(self, index: int) -> dict[str, Any]:
        for s in self.steps:
            if s["index"] == index:
                return s
        raise AssertionError(f"step {index} was not met: {self.describe()}")

    def met_ms(self, index: int) -> float:
        return float(self.step(index)["met_ms"])

    def by(self, index: int) -> dict[str, Any]:
        """The response that met step `index` (a fingerprint or stats event)."""
        src = self.step(index)["by"]
        kind, _, seq = src.partition("#")
        if kind not in ("fingerprint", "stats"):
            raise AssertionError(f"step {index} was met by {src}, not by an answer")
        for e in self.run.of(kind):
            if str(e.get("seq")) == seq:
                return e
        raise AssertionError(f"step {index} met by {src}, which is not in the events")

    @property
    def fingerprints(self) -> list[dict[str, Any]]:
        """Fingerprint answers (not the client's own cancel at the end)."""
        return [e for e in self.run.of("fingerprint") if e["error"] is None]

    @property
    def stats(self) -> list[dict[str, Any]]:
        return [e for e in self.run.of("stats") if e["error"] is None]

    def first_with_devices(self) -> dict[str, Any]:
        for e in self.fingerprints:
            if e["devices"] > 0:
                return e
        raise AssertionError(f"no fingerprint with devices: {self.describe()}")

    def init_window(self) -> tuple[float, float]:
        """When NVML can have been initialised (the simulated clock's zero), in ms since launch."""
        return self.ms("set_config_call"), float(self.first_with_devices()["ms"])

    def plugin_logs(self, contains: str, level: str | None = None) -> list[dict[str, Any]]:
        out = []
        for e in self.run.of("log"):
            entry = e["entry"]
            if not e["from_plugin"] or contains not in str(entry.get("@message", "")):
                continue
            if level is None or entry.get("@level") == level:
                out.append(e)
        return out

    def shutdown(self) -> dict[str, Any]:
        return self.run.one("shutdown")

    def streams(self) -> dict[str, Any]:
        return self.run.one("streams")

    def ended_by_plugin(self) -> list[str]:
        """Streams that ended before the harness cancelled them (Nomad treats that as final)."""
        ended = []
        cutoff = self.streams()["ms"]
        for kind in ("fingerprint_end", "stats_end"):
            ended += [kind for e in self.run.of(kind) if e["ms"] < cutoff]
        return ended


def device_status(event: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """{id: (healthy, health_desc)} of one fingerprint event."""
    return {d["id"]: (d["healthy"], d["health_desc"]) for g in event["groups"] for d in g["devices"]}


def stats_ids(event: dict[str, Any]) -> set[str]:
    return {i for g in event["groups"] for i in g["ids"]}


def instance_stats(event: dict[str, Any], device_id: str) -> dict[str, Any]:
    for g in event["groups"]:
        if device_id in g["instances"]:
            stats: dict[str, Any] = g["instances"][device_id]
            return stats
    raise AssertionError(f"no stats for {device_id} in {event}")


@pytest.fixture
def timeline(run_harness: RunHarness, plugin_bin: Path) -> Callable[..., Timeline]:
    def run(config: Path, steps: Iterable[str], *, stats: bool = True, interval: str = STATS_INTERVAL,
            reserves: Iterable[Iterable[str]] = (), kill: bool = False, env: dict[str, str] | None = None,
            timeout: str = "20s") -> Timeline:
        args: list[str | Path] = ["timeline", "--plugin", plugin_bin, "--config", config, "--logs",
                                  "--timeout", timeout]
        if stats:
            args += ["--stats", "--interval", interval]
        for s in steps:
            args += ["--until", s]
        for ids in reserves:
            args += ["--reserve", ",".join(ids)]
        if kill:
            args.append("--kill")
        for k, v in (env or {}).items():
            args += ["--env", f"{k}={v}"]
        return Timeline(run_harness(*args, timeout=120))

    return run


def record(request: pytest.FixtureRequest, **measured: Any) -> None:
    """Merge this test's measured timeline into build/fault-timelines.json."""
    merge_json(TIMELINES, request.node.name, measured)


def window(lo_hi: tuple[float, float], offset_s: float) -> list[float]:
    return [round(lo_hi[0] + offset_s * 1000, 1), round(lo_hi[1] + offset_s * 1000, 1)]


def met_or_none(tl: Timeline, index: int) -> float | None:
    """When the client had what step `index` waits for: the time of the answer that met it
    (a state step can be met by an answer that came before the previous step), else the
    time the step was met (log lines, actions)."""
    if not any(s["index"] == index for s in tl.steps):
        return None
    try:
        return float(tl.by(index)["ms"])
    except AssertionError:
        return tl.met_ms(index)


def init_window_or_none(tl: Timeline) -> tuple[float, float] | None:
    try:
        return tl.init_window()
    except AssertionError:
        return None


# --- (a) a blocked GPU ---


def test_blocked_gpu_is_unhealthy_an_xid_elsewhere_arrives_and_it_recovers(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    scenario = SCENARIOS / "fault-blocked-gpu.toml"
    gpus = uuids(scenario)
    blocked, xid_gpu = gpus[1], gpus[2]
    others = [gpus[0], gpus[2], gpus[3]]
    hang_at, xid_at, hang_until = 1.0, 4.0, 7.0
    cfg = sim_config(tmp_path, scenario, fingerprint_period="2s", health=FAST_HEALTH)
    tl = timeline(cfg, [
        "devices:4@15s",
        "healthy:all",
        f"unhealthy:{blocked}:{DID_NOT_RETURN}@6s",
        f"unhealthy:{xid_gpu}:XID 79@6s",
        f"healthy:{blocked}@8s",
    ])
    init = init_window_or_none(tl)
    blocked_seen, xid_seen, healthy_seen = met_or_none(tl, 2), met_or_none(tl, 3), met_or_none(tl, 4)
    if init:
        record(request, fault="every NVML call on GPU 1 blocks from 1 s to 7 s; XID 79 on GPU 2 at 4 s",
               nvml_init_ms=list(init), hang_due_ms=window(init, hang_at), blocked_gpu_unhealthy_ms=blocked_seen,
               blocked_gpu_desc=device_status(tl.by(2))[blocked][1] if blocked_seen is not None else None,
               xid_due_ms=window(init, xid_at), xid_seen_ms=xid_seen,
               xid_lag_ms=None if xid_seen is None else round(xid_seen - (init[0] + xid_at * 1000), 1),
               hang_end_due_ms=window(init, hang_until), blocked_gpu_healthy_again_ms=healthy_seen)
    tl.ok()
    lo, _ = tl.init_window()

    # Unhealthy at once when its calls pass the deadline; nobody else.
    unhealthy = device_status(tl.by(2))
    assert not unhealthy[blocked][0] and DID_NOT_RETURN in unhealthy[blocked][1]
    assert all(unhealthy[g][0] for g in others), unhealthy
    assert blocked_seen is not None and blocked_seen >= lo + hang_at * 1000, "unhealthy before the block began"

    # The XID on a neighbour reaches Nomad while GPU 1's call is still blocked: the block
    # holds up nothing else.
    xid_answer = device_status(tl.by(3))
    assert not xid_answer[blocked][0], "the blocked GPU stays unhealthy while blocked"
    assert xid_seen is not None and xid_seen >= lo + xid_at * 1000, "XID reported before it was due"
    assert healthy_seen is not None and xid_seen < healthy_seen, "the XID came only once the block was over"

    # Healthy again once its calls return, and not before the block ends.
    assert healthy_seen is not None and healthy_seen >= lo + hang_until * 1000
    back = device_status(tl.by(4))
    assert back[blocked] == (True, ""), back[blocked]
    assert not back[xid_gpu][0], "the XID is not forgotten"

    # Stats keep flowing for the others during the block.
    during = [e for e in tl.stats if blocked_seen <= e["ms"] <= healthy_seen]
    assert len(during) >= 2, f"{len(during)} stats answers while GPU 1 was blocked"
    for e in during:
        assert set(others) <= stats_ids(e), f"stats at {e['ms']} ms miss a healthy GPU"
    # The stream never ended, and the plugin left gracefully.
    assert tl.ended_by_plugin() == []
    s = tl.streams()
    assert s["fingerprint_open"] and s["stats_open"], s


def test_blocked_gpu_reserve_answers_and_shutdown_exits_with_a_call_stuck(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    scenario = SCENARIOS / "fault-blocked-gpu-stuck.toml"
    gpus = uuids(scenario)
    blocked, healthy = gpus[1], gpus[0]
    cfg = sim_config(tmp_path, scenario, fingerprint_period="2s", health=FAST_HEALTH)
    tl = timeline(cfg, ["devices:4@15s", "healthy:all", f"unhealthy:{blocked}:{DID_NOT_RETURN}@6s"],
                  reserves=[[healthy], [blocked]])
    init = init_window_or_none(tl)
    reserves = tl.run.of("reserve")
    shutdown = tl.run.of("shutdown")
    if init:
        record(request, fault="every NVML call on GPU 1 blocks from 1 s on, for good",
               nvml_init_ms=list(init), hang_due_ms=window(init, 1.0), blocked_gpu_unhealthy_ms=met_or_none(tl, 2),
               reserve_healthy_took_ms=reserves[0]["took_ms"] if reserves else None,
               reserve_blocked_took_ms=reserves[1]["took_ms"] if len(reserves) > 1 else None,
               shutdown_took_ms=shutdown[0]["kill_ms"] if shutdown else None)
    tl.ok()

    ok, refused = reserves
    assert ok["error"] is None, ok
    assert ok["reservation"]["envs"] == {"NVIDIA_VISIBLE_DEVICES": healthy}, ok
    assert refused["error"] is not None and blocked in refused["error"], refused
    assert DID_NOT_RETURN in refused["error"], refused  # the health book's words, not a deadline of its own
    # Reserve does not wait on the blocked GPU: both answered while GPU 1's call was still in
    # progress. It never returns (the hang is for good): every answer from the mark on says
    # so, and at shutdown, after both Reserves, the plugin finds the call still in progress.
    marked = met_or_none(tl, 2)
    assert marked is not None
    later = [device_status(e)[blocked] for e in tl.fingerprints if e["ms"] >= marked]
    assert later and all(not ok_ and DID_NOT_RETURN in why for ok_, why in later), later
    still = tl.plugin_logs("an NVML call is still in progress")
    assert len(still) == 1, [e["entry"] for e in tl.run.of("log") if e["from_plugin"]][-10:]
    for r in reserves:
        assert marked <= r["ms"] and r["ms"] + r["took_ms"] <= still[0]["ms"], (r, still[0]["ms"])

    # Shutdown with a call still stuck: the plugin exits by itself (go-plugin would kill it).
    down = tl.shutdown()
    assert down["exited"] and down["graceful"] and down["signal"] is None, down
    assert down["exit_code"] == 0, down
    assert down["streams_closed"], down


# --- (b) the driver late at boot ---


def test_late_driver_answers_at_once_keeps_the_stream_and_sends_the_devices(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    scenario = SCENARIOS / "fault-late-driver.toml"
    gpus = uuids(scenario)
    cfg = sim_config(tmp_path, scenario, fingerprint_period="2s", health=FAST_HEALTH)
    # Backoff 1 s then 2 s (capped at the 2 s period): the third init, ~3 s after the first, works.
    tl = timeline(cfg, ["devices:0@15s", "devices:2@6s", "healthy:all", "stats:all@4s"])
    call = tl.ms("fingerprint_call")
    first = tl.fingerprints[0] if tl.fingerprints else None
    devices_at = met_or_none(tl, 1)
    warnings = tl.plugin_logs(INIT_FAILED)
    record(request, fault="nvmlInit answers DRIVER_NOT_LOADED twice, then works",
           fingerprint_call_ms=call, first_answer_ms=first["ms"] if first else None,
           first_answer_devices=first["devices"] if first else None, devices_ms=devices_at,
           stats_follow_ms=met_or_none(tl, 3), init_failed_log_lines=len(warnings))
    tl.ok()

    assert first is not None and first["devices"] == 0
    assert devices_at is not None
    assert set(device_status(tl.by(1))) == set(gpus)
    # One WARNING for the state change, not one per try; then an INFO when NVML comes up.
    assert len(warnings) == 1, [w["entry"] for w in warnings]
    assert warnings[0]["entry"]["@level"] == "warn"
    assert warnings[0]["ms"] < devices_at
    up = tl.plugin_logs(INIT_OK, level="info")
    assert len(up) == 1 and warnings[0]["ms"] < up[0]["ms"], [u["entry"] for u in up]
    # The first answer does not wait for the driver: it came before NVML was initialised.
    assert first["ms"] < up[0]["ms"], (first["ms"], up[0]["ms"])
    assert tl.ended_by_plugin() == []
    s = tl.streams()
    assert s["fingerprint_open"] and s["stats_open"], s


# --- (c) the driver replaced or gone mid-run ---


@pytest.mark.parametrize("scenario_name", ["fault-driver-replaced", "fault-driver-all-lost"])
def test_driver_gone_mid_run_marks_every_device_and_recovers_without_restart(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest, scenario_name: str) -> None:
    scenario = SCENARIOS / f"{scenario_name}.toml"
    gpus = uuids(scenario)
    gone_at, back_after = 1.5, 2.0
    cfg = sim_config(tmp_path, scenario, fingerprint_period="2s", health=FAST_HEALTH)
    tl = timeline(cfg, [
        "devices:2@15s",
        "healthy:all",
        f"unhealthy:all:{DRIVER_UNAVAILABLE}@5s",
        # Re-init with backoff from 1 s: up within back_after + 1 s + 2 s, plus a probe.
        "healthy:all@8s",
        "ticks:2",
        "stats:all@3s",
    ])
    init = init_window_or_none(tl)
    gone_seen, back_seen = met_or_none(tl, 2), met_or_none(tl, 3)
    # The first answer with a sick device, whatever its reason (the step waits for the driver's).
    first_sick = next((e for e in tl.fingerprints if e["unhealthy"]), None)
    if init:
        record(request, fault=f"{scenario_name}: driver unusable from 1.5 s after init, for 2 s",
               nvml_init_ms=list(init), gone_due_ms=window(init, gone_at),
               first_unhealthy_ms=first_sick["ms"] if first_sick else None,
               first_unhealthy_desc=first_sick["unhealthy"][0]["health_desc"] if first_sick else None,
               all_unhealthy_ms=gone_seen,
               back_due_ms=window(init, gone_at + back_after), all_healthy_again_ms=back_seen,
               stats_after_recovery_ms=met_or_none(tl, 5),
               nvml_initialised_lines=len(tl.plugin_logs(INIT_OK)),
               init_failed_lines=len(tl.plugin_logs(INIT_FAILED)),
               stats_answers_while_away=None if gone_seen is None or back_seen is None else
               len([e for e in tl.stats if gone_seen <= e["ms"] <= back_seen]))
    tl.ok()
    lo, _ = tl.init_window()

    gone = device_status(tl.by(2))
    assert set(gone) == set(gpus), "the devices stay listed while the driver is away"
    assert gone_seen is not None and gone_seen >= lo + gone_at * 1000
    assert back_seen is not None and back_seen >= lo + (gone_at + back_after) * 1000
    assert all(v == (True, "") for v in device_status(tl.by(3)).values())
    # No restart: one launch, one stream each, both open to the end.
    assert len(tl.run.of("launch")) == 1
    assert tl.ended_by_plugin() == []
    s = tl.streams()
    assert s["fingerprint_open"] and s["stats_open"], s
    # One log line per change of state, not per try: NVML comes up once at start, once after.
    ups = tl.plugin_logs(INIT_OK)
    assert len(ups) == 2, [(u["ms"], u["entry"]["@message"]) for u in ups]
    assert len(tl.plugin_logs(INIT_FAILED)) <= 1
    # Stats answered through the outage (empty answers are allowed) and follow the devices again.
    assert any(gone_seen <= e["ms"] <= back_seen for e in tl.stats), "no stats answer while the driver was away"


# --- (d) an integrated GPU ---


def host_memtotal_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_integrated_gpu_is_offered_with_the_hosts_memory(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    scenario = SCENARIOS / "fault-integrated-gb10.toml"
    (gpu,) = uuids(scenario)
    cfg = sim_config(tmp_path, scenario, fingerprint_period="1h", health=FAST_HEALTH)
    tl = timeline(cfg, ["devices:1@15s", f"stats:{gpu}@5s"])
    memtotal = host_memtotal_mib()
    fps = tl.fingerprints
    memory_attr = None
    if fps and fps[0]["groups"]:
        memory_attr = fps[0]["groups"][0]["attributes"].get("memory")
    record(request, fault="nvmlDeviceGetMemoryInfo answers NOT_SUPPORTED from init on (GB10)",
           fingerprint_call_ms=tl.ms("fingerprint_call") if tl.run.of("fingerprint_call") else None,
           offered_ms=met_or_none(tl, 0), memory_stats_ms=met_or_none(tl, 1),
           host_memtotal_mib=memtotal, memory_attribute=memory_attr)
    tl.ok()

    (group,) = tl.by(0)["groups"]
    assert group["validate_error"] is None, group
    assert [d["id"] for d in group["devices"]] == [gpu]
    assert group["devices"][0]["healthy"], group["devices"][0]
    memory = group["attributes"]["memory"]
    assert (memory["type"], memory["unit"], memory["value"]) == ("int", "MiB", memtotal), memory
    state = instance_stats(tl.by(1), gpu)["stats"]["Attributes"]["Memory state"]
    assert state["Unit"] == "MiB" and state["IntDenominatorVal"] == memtotal, state
    assert 0 < state["IntNumeratorVal"] <= memtotal, state


# --- (e) retirement kept by the driver across a relaunch ---


def test_retirement_survives_a_killed_and_relaunched_plugin(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    first = SCENARIOS / "fault-retirement.toml"
    later = SCENARIOS / "fault-retirement-later.toml"
    gpus = uuids(first)
    assert uuids(later) == gpus, "the relaunch scenario must describe the same machine"
    healthy, remap_failed, pending = gpus
    persist = tmp_path / "driver-state"
    persist.mkdir()
    env = {"NVML_SIM_PERSIST_DIR": str(persist)}

    cfg = sim_config(tmp_path, first, "first", fingerprint_period="1h", health=FAST_HEALTH)
    tl = timeline(cfg, [
        "devices:3@15s",
        f"unhealthy:{remap_failed}:row remapping failed@5s",
        f"unhealthy:{pending}:pending page retirement@5s",
    ], kill=True, env=env)
    cfg2 = sim_config(tmp_path, later, "relaunch", fingerprint_period="1h", health=FAST_HEALTH)
    again = timeline(cfg2, ["devices:3@15s"], env=env)
    # Control: the same relaunch with a fresh driver state sees healthy GPUs.
    fresh = tmp_path / "fresh-state"
    fresh.mkdir()
    control = timeline(cfg2, ["devices:3@15s"], env={"NVML_SIM_PERSIST_DIR": str(fresh)})

    init = init_window_or_none(tl)
    relaunch_first = next((e for e in again.fingerprints if e["devices"] > 0), None)
    record(request, fault="row remapping failed on GPU 1, pages pending retirement on GPU 2, 0.5 s after init",
           nvml_init_ms=list(init) if init else None, fault_due_ms=window(init, 0.5) if init else None,
           remap_failed_seen_ms=met_or_none(tl, 1), retirement_pending_seen_ms=met_or_none(tl, 2),
           killed_at_ms=tl.run.of("shutdown")[0]["ms"] if tl.run.of("shutdown") else None,
           relaunch_first_devices_ms=relaunch_first["ms"] if relaunch_first else None,
           relaunch_first_unhealthy=relaunch_first["unhealthy"] if relaunch_first else None)
    tl.ok()
    again.ok()
    control.ok()

    lo, _ = tl.init_window()
    seen = met_or_none(tl, 1)
    assert seen is not None and seen >= lo + 500, "unhealthy before the fault was due"
    killed = tl.shutdown()
    assert killed["mode"] == "sigkill" and killed["signal"] == "killed", killed

    assert relaunch_first is not None
    status = device_status(relaunch_first)
    assert relaunch_first is again.fingerprints[0], "the relaunched plugin's first answer already has the devices"
    assert status[healthy] == (True, ""), status
    assert not status[remap_failed][0] and "row remapping failed" in status[remap_failed][1], status
    assert not status[pending][0] and "pending page retirement" in status[pending][1], status
    assert all(v == (True, "") for v in device_status(control.first_with_devices()).values()), \
        "without the kept driver state the relaunch must see healthy GPUs"


# --- (f) an XID on one MIG instance ---


def test_xid_with_a_gpu_instance_marks_only_that_mig_device(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    scenario = SCENARIOS / "fault-mig-xid.toml"
    gpus = sim_gpus(scenario)
    migs = {m["gpu_instance"]: m["uuid"] for m in gpus[1]["migs"]}
    assert sorted(migs) == [1, 2, 3, 4], gpus[1]
    target = migs[2]
    cfg = sim_config(tmp_path, scenario, fingerprint_period="1h", health=FAST_HEALTH)
    # ticks: four more probe intervals' worth of answers, in which nothing else may turn unhealthy.
    tl = timeline(cfg, ["devices:5@15s", "healthy:all", f"unhealthy:{target}:XID 94@4s", "ticks:4"])
    init = init_window_or_none(tl)
    seen = met_or_none(tl, 2)
    if init:
        record(request, fault="XID 94 on GPU 1, GPU instance 2, at 1 s", nvml_init_ms=list(init),
               xid_due_ms=window(init, 1.0), xid_seen_ms=seen,
               xid_lag_ms=None if seen is None else round(seen - (init[0] + 1000), 1))
    tl.ok()
    lo, _ = tl.init_window()

    assert seen is not None and seen >= lo + 1000
    for e in tl.fingerprints:
        if e["ms"] < seen:
            continue
        sick = sorted(i for i, (ok, _) in device_status(e).items() if not ok)
        assert sick == [target], f"at {e['ms']} ms: {e['unhealthy']}"


# --- (g) event waits failing for a while ---


def _events_in_trouble(timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest,
                       scenario_name: str, fault: str, due_names: tuple[str, str],
                       warn_by: str) -> tuple[Timeline, list[float], str, str]:
    """The timeline both event-trouble scenarios share: event reading in trouble from 1 s to 4 s,
    GPU 1 lost 2-3 s (only probes can see it), XID 79 on GPU 0 at 5 s once events are read
    again. Asserts what both must show; returns the timeline, when each step was met, and
    the XID and lost GPUs."""
    scenario = SCENARIOS / scenario_name
    xid_gpu, lost_gpu = uuids(scenario)
    cfg = sim_config(tmp_path, scenario, fingerprint_period="1h", health=FAST_HEALTH)
    tl = timeline(cfg, [
        "devices:2@15s",
        "healthy:all",
        f"log:{EVENTS_FAILED}@{warn_by}",
        f"unhealthy:{lost_gpu}@3s",
        f"healthy:{lost_gpu}@3s",
        f"log:{EVENTS_BACK}@4s",
        f"unhealthy:{xid_gpu}:XID 79@4s",
    ])
    init = init_window_or_none(tl)
    warned, back = tl.plugin_logs(EVENTS_FAILED), tl.plugin_logs(EVENTS_BACK)
    if init:
        began, ended = due_names
        record(request, fault=fault, nvml_init_ms=list(init), warning_ms=met_or_none(tl, 2),
               lost_due_ms=window(init, 2.0), lost_seen_ms=met_or_none(tl, 3),
               found_due_ms=window(init, 3.0), found_seen_ms=met_or_none(tl, 4),
               events_back_info_ms=met_or_none(tl, 5), xid_due_ms=window(init, 5.0), xid_seen_ms=met_or_none(tl, 6),
               warning_lines=len(warned), recovery_lines=len(back),
               **{began: window(init, 1.0), ended: window(init, 4.0)})
    tl.ok()
    lo, hi = tl.init_window()

    assert len(warned) == 1 and warned[0]["entry"]["@level"] == "warn", [w["entry"] for w in warned]
    assert len(back) == 1 and back[0]["entry"]["@level"] == "info", [b["entry"] for b in back]
    seen = [met_or_none(tl, i) or 0.0 for i in range(7)]
    assert seen[3] >= lo + 2000 and seen[4] >= lo + 3000, "lost/found before the GPU was lost/back"
    assert seen[5] >= lo + 4000, "the recovery line came before waits worked again"
    assert lo + 5000 <= seen[6] <= hi + 6000, "the XID after recovery came more than 1 s late"
    return tl, seen, xid_gpu, lost_gpu


def test_event_wait_failure_falls_back_to_probes_and_recovers(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    tl, seen, xid_gpu, _ = _events_in_trouble(
        timeline, tmp_path, request, "fault-event-wait.toml",
        "nvmlEventSetWait fails from 1 s to 4 s; GPU 1 lost 2-3 s; XID 79 on GPU 0 at 5 s",
        ("wait_error_due_ms", "events_back_due_ms"), warn_by="3s")
    lo, _ = tl.init_window()
    assert seen[2] >= lo + 1000, "the warning came before event waits failed"
    assert seen[6] <= lo + 6000, "the XID after recovery came more than 1 s late"
    assert device_status(tl.by(3))[xid_gpu] == (True, "")


def test_blocked_event_wait_is_reported_by_the_probes_and_recovers(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    tl, seen, _, lost_gpu = _events_in_trouble(
        timeline, tmp_path, request, "fault-event-wait-hang.toml",
        "nvmlEventSetWait blocks from 1 s to 4 s; GPU 1 lost 2-3 s; XID 79 on GPU 0 at 5 s",
        ("hang_due_ms", "hang_end_due_ms"), warn_by="4s")
    lo, _ = tl.init_window()
    warned = tl.plugin_logs(EVENTS_FAILED)
    assert DID_NOT_RETURN in warned[0]["entry"]["@message"], warned[0]["entry"]
    # The wait that blocks began at 1 s at the earliest; it is overdue a wait (500 ms) and a
    # deadline later, and the next probe round reports it.
    assert seen[2] >= lo + 1000 + 500, "the warning came before the wait could be overdue"
    # The blocked wait is about events, not a GPU: no device was marked for it.
    for e in tl.fingerprints:
        for uuid, (ok, desc) in device_status(e).items():
            assert ok or uuid == lost_gpu or "XID" in desc, (e["ms"], uuid, desc)


# --- (h) no libnvidia-ml.so.1, then the driver installed ---


def test_no_library_then_the_driver_installed_without_restart(
        timeline: Callable[..., Timeline], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    scenario = SCENARIOS / "fault-no-library.toml"
    gpus = uuids(scenario)
    libdir = tmp_path / "lib"
    libdir.mkdir()
    target = libdir / "libnvidia-ml.so.1"
    assert SIM_LIB.exists(), f"{SIM_LIB} missing: run `make sim`"
    period_ms = 1000
    cfg = config_file(tmp_path, "config", fingerprint_period="1s", health=FAST_HEALTH)
    # LD_DEBUG=libs makes the dynamic loader write a line for every file it tries, relayed
    # as the plugin's stderr: the plugin's own checks become events. Four lookups in the
    # library's directory after the INFO line are at least two more checks, in which the
    # plugin could have logged again.
    lookup = f"log:trying file={target}"
    tl = timeline(cfg, [
        f"log:{NO_LIBRARY}@15s",
        "devices:0@2s",
        lookup, lookup, lookup, lookup,
        f"copy:{SIM_LIB}:{target}",
        f"devices:2@{period_ms + 2000}ms",
        "stats:all@3s",
    ], env={"LD_LIBRARY_PATH": str(libdir), "NVML_SIM_SCENARIO": str(scenario), "LD_DEBUG": "libs"})
    copied = next((a["ms"] for a in tl.run.of("action")), None)
    devices_at = met_or_none(tl, 7)
    lines = tl.plugin_logs(NO_LIBRARY)
    record(request, fault="no libnvidia-ml.so.1 in reach; the library copied in later",
           first_answer_ms=met_or_none(tl, 1), info_line_ms=met_or_none(tl, 0),
           rechecks_seen_by_ms=met_or_none(tl, 5), library_copied_ms=copied, devices_ms=devices_at,
           lag_ms=None if copied is None or devices_at is None else round(devices_at - copied, 1),
           stats_follow_ms=met_or_none(tl, 8), no_library_lines=len(lines))
    tl.ok()

    assert tl.fingerprints[0]["devices"] == 0, "the first answer is the empty one"
    assert len(lines) == 1 and lines[0]["entry"]["@level"] == "info", [e["entry"] for e in lines]
    assert copied is not None and devices_at is not None
    # The first answer did not wait for a library, and the devices came with the library.
    assert tl.fingerprints[0]["ms"] < copied < devices_at, (tl.fingerprints[0]["ms"], copied, devices_at)
    assert set(device_status(tl.by(7))) == set(gpus)
    assert all(v == (True, "") for v in device_status(tl.by(7)).values())
    assert len(tl.run.of("launch")) == 1, "no restart"
    assert tl.ended_by_plugin() == []
    s = tl.streams()
    assert s["fingerprint_open"] and s["stats_open"], s
