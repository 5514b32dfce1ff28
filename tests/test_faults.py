"""The fault matrix: each fault, what Nomad's client sees, how fast, what the plugin logs.

`ROWS` is the table; docs/reliability.md shows it between the `fault-matrix` markers,
and `test_reliability_doc_shows_the_matrix` fails when the two differ
(`.venv/bin/python tests/test_faults.py` rewrites the doc's copy). Every row names the
tests that back it; most are here, one per row, and a row that repeats a fault of
tests/test_health_faults.py names that test instead. The "how fast" column gives what
the test asserts (a bound, or the event that shows the plugin did not wait) and, in
brackets, what it measured on the 2-core development machine; every run writes its own
figures to build/fault-matrix.json.

The faults come from the simulated driver (tests/scenarios/matrix-*.toml), from the
plugin's launch environment, from a silent client on its socket, and from a real
`nomad agent -dev` (tests/e2e/agent.py) that launches, kills, restarts and dies
around the plugin. Waits are bounded; times come from recorded events, not sleeps.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import REPO_ROOT, HarnessRun, merge_json
from e2e.agent import NomadAgent, PluginSpec
from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2
from nomad_device_nvidia.sdk.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE
from nomad_device_nvidia.sdk.limits import DEFAULT_LIMITS
from test_health_faults import (  # noqa: F401 - timeline is a fixture
    FAST_HEALTH,
    PROBE_INTERVAL_S,
    SCENARIOS,
    SIM_LIB,
    Timeline,
    device_status,
    init_window_or_none,
    met_or_none,
    sim_config,
    stats_ids,
    timeline,
    uuids,
)

DOC = REPO_ROOT / "docs" / "reliability.md"
FIGURES = REPO_ROOT / "build" / "fault-matrix.json"
BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"
HERE = "tests/test_faults.py"
HEALTH = "tests/test_health_faults.py"

# Bounds the tests assert, named once so the table says what the tests check.
CALL_TIMEOUT_S = 1.0  # FAST_HEALTH's call_timeout
# How long a step may wait for what a fault makes the plugin say: a hang guard, not a bound.
HANG_S = 20.0
STORM_RATE = 1000  # XIDs per second
STORM_S = 5.0  # the full soak storms longer; 5 s at the same rate keeps `make test` short
STORM_CPU_CORES = 0.6
STORM_ANSWER_GAP_S = 0.05  # the plugin's least time between two answers of one Fingerprint stream
SILENT_CLIENTS = 64
SILENT_TLS_CLIENTS = 8
RELAUNCH_S = 10.0
STATS_BACK_S = 30.0
PARENT_DEATH_S = 1.0


@dataclass(frozen=True)
class Row:
    fault: str
    sees: str  # what Nomad's client sees
    fast: str  # the bound asserted (measured here)
    logs: str  # what the plugin logs
    tests: tuple[str, ...]  # "file::function" that back the row


ROWS: tuple[Row, ...] = (
    Row("NVML error mid-stream: every NVML call answers `UNKNOWN` from 1.5 s after init, for good",
        "every device unhealthy, `NVML error: Unknown Error` (scans and probes word it alike); devices stay "
        "listed; Fingerprint and Stats stay open, Stats at their interval with `N/A` values; a clean Shutdown",
        "unhealthy after the error, not before (0.02 s after it: the failing event wait triggers a probe)",
        "one WARNING per device (`device ... unhealthy`), one `reading an NVML event failed`, and "
        "`NVML enumeration failed ...; keeping the last known devices and retrying` once (scans retry with "
        "backoff 1 s doubling, at most `fingerprint_period`)",
        (f"{HERE}::test_nvml_error_mid_stream",)),
    Row("A lost GPU and its return: one GPU answers `GPU_IS_LOST` for 2 s",
        "that GPU unhealthy, `GPU is lost or needs a reset`, the others healthy throughout; healthy again, "
        "description empty, once it answers; Stats keep every device (the lost one `N/A`)",
        "unhealthy after the loss and healthy again after the return, each not before (0.04 s / 0.05 s "
        "after)",
        "one WARNING when it turns unhealthy, one INFO `is healthy again`",
        (f"{HERE}::test_lost_gpu_and_its_return",)),
    Row("A call that blocks: every call on one GPU blocks (for 6 s, or for good)",
        "that GPU unhealthy, `<nvml function> did not return within 1s`; an XID on another GPU still arrives; "
        "healthy again when the calls return; Reserve of a healthy GPU answers at once, of the blocked one "
        "refused at once; Shutdown exits with the call still stuck",
        "unhealthy once a call passes call_timeout (1.1 s after the block); the XID on a neighbour before the "
        "blocked GPU answers again (0.19 s after it was due); both Reserves answered while the call is still in "
        "progress (3 ms); the plugin exits by itself with it stuck (0.55 s)",
        "one WARNING per state change of the device; `an NVML call is still in progress; leaving NVML "
        "initialised` at shutdown",
        (f"{HEALTH}::test_blocked_gpu_is_unhealthy_an_xid_elsewhere_arrives_and_it_recovers",
         f"{HEALTH}::test_blocked_gpu_reserve_answers_and_shutdown_exits_with_a_call_stuck")),
    Row(f"An XID storm: {STORM_RATE:,} XIDs a second for {STORM_S:g} s (application XIDs 13 and 31 on two GPUs, "
        "critical XIDs 79 and 48 in turn on a third), then XID 94 on a fourth",
        "the critical GPU unhealthy (its description names the distinct XIDs seen, so it changes when a new "
        "kind comes, not per event), the application-XID GPUs and the "
        "quiet one healthy in every answer; the XID after the storm arrives on time (no backlog); Stats at their "
        f"interval; Fingerprint answers coalesced to at most one per {STORM_ANSWER_GAP_S * 1000:g} ms",
        "first critical XID (0.09 s after it was due); the XID after the storm (0.09 s after it was due); "
        f"plugin CPU during the storm at most {STORM_CPU_CORES:g} of a core "
        "(0.32); at most one answer per 50 ms (42 answers in 5 s)",
        "one WARNING for the critical GPU; for application XIDs one INFO line per GPU a minute at most, "
        "counting the ones not logged",
        (f"{HERE}::test_xid_storm_keeps_health_right_and_cpu_bounded",
         f"{HERE}::test_xid_storm_answers_are_coalesced",
         f"{HERE}::test_xid_storm_application_xid_logs_are_rate_limited")),
    Row("Init failure: `nvmlInit` answers `DRIVER_NOT_LOADED` (twice, then works)",
        "an empty device list at once; the stream stays open; the devices once init works, Stats follow",
        "the first answer before NVML is initialised (0.01 s); devices within the test's 6 s (3.0 s: the third "
        "try, after 1 s + 2 s of backoff)",
        "one WARNING `NVML failed to initialise` for the state, not per try; one INFO `NVML initialised`",
        (f"{HEALTH}::test_late_driver_answers_at_once_keeps_the_stream_and_sends_the_devices",)),
    Row("SIGKILL of the plugin under a real agent",
        "Nomad relaunches it; the node keeps its devices meanwhile; fresh stats for every device",
        f"new process within {RELAUNCH_S:g} s (0.04 s); stats stamped after the kill within "
        f"{STATS_BACK_S:g} s (1.0 s)",
        "the new process logs its start as any launch; nothing of the old one (it had no chance)",
        (f"{HERE}::test_agent_relaunches_a_killed_plugin",)),
    Row("Parent death: the agent is SIGKILLed",
        "(no client left) the plugin exits by itself; no orphan process",
        f"plugin gone within {PARENT_DEATH_S:g} s of the agent's death (0.5 s)",
        "`plugin shutting down` with the parent's death as reason, on a stderr no one reads any more",
        (f"{HERE}::test_plugin_exits_when_the_agent_is_killed",)),
    Row("Agent restart: SIGINT to the agent, then the agent started again on the same data dir",
        "the plugin is shut down with the agent (no orphan); the new agent launches a new one; devices and "
        "stats on the node again",
        f"old plugin gone when the agent has exited (the agent took 0.5 s); devices and fresh stats within "
        f"{STATS_BACK_S:g} s of the new start (2.2 s)",
        "`plugin shutting down` with reason `Shutdown requested by the host`, then the new process's start",
        (f"{HERE}::test_agent_restart_relaunches_the_plugin",)),
    Row("`PLUGIN_UNIX_SOCKET_DIR` missing, a file, or not writable",
        "the launch fails: go-plugin's `Unrecognized remote plugin message ... Failed to read any lines from "
        "plugin's stdout`, with the plugin's line `Error preparing plugin: [Errno N] <reason>: '<dir>/plugin...'` "
        "relayed (at debug level, as for a Go plugin); exit code 1, nothing left behind",
        "the plugin exits by itself, status 1, before go-plugin's launch gives up (0.45 s: the import time)",
        "that one stderr line",
        (f"{HERE}::test_socket_dir_missing_or_unwritable",)),
    Row(f"A client that connects and never speaks: {SILENT_CLIENTS} silent connections (one with half an HTTP/2 "
        f"preface) on the plain socket; {SILENT_TLS_CLIENTS} on the AutoMTLS socket",
        "other clients are answered at once; on the plain socket the plugin holds no thread per silent "
        "connection; the TLS relay holds one per connection (16 at most) and drops a connection whose "
        f"handshake has not finished after {DEFAULT_LIMITS.tls_handshake_timeout:g} s, its thread with it; "
        "SIGTERM exits with them open",
        f"PluginInfo and the first Fingerprint answered with them open (3 ms / 20 ms plain, 27 ms / 11 ms "
        f"TLS); silent TLS connections closed by {DEFAULT_LIMITS.tls_handshake_timeout + 3:g} s (10.02 s); "
        "SIGTERM: the plugin exits by itself, status 0 (1.1 s plain, 0.13 s TLS)",
        "nothing for plain connections; a debug line per dropped TLS connection (a connection that is not TLS "
        "at all is dropped at once)",
        (f"{HERE}::test_silent_client_on_the_plain_socket", f"{HERE}::test_silent_client_on_the_tls_socket")),
    # Faults test_health_faults.py proves, repeated here so the table lists every fault survived.
    Row("The driver replaced (`LIB_RM_VERSION_MISMATCH`) or every GPU lost, for 2 s",
        "every device unhealthy, `NVIDIA driver unavailable (...)`; healthy again without a restart; "
        "both streams open, Stats empty while NVML is down",
        "unhealthy and healthy again each within the test's waits of 5 s and 8 s (0.5 s after the driver went; "
        "1.6 to 1.7 s after it came back: re-init backs off 1 s, then 2 s)",
        "one WARNING per change of state; `NVML initialised` once at start and once after",
        (f"{HEALTH}::test_driver_gone_mid_run_marks_every_device_and_recovers_without_restart",)),
    Row("NVML event waits failing for 3 s",
        "health from probes meanwhile (a GPU lost inside the window is seen); XIDs again after",
        "the GPU lost inside the window within the test's 3 s (0.03 s); the XID after the window within 1 s "
        "(0.03 s)",
        "one WARNING `reading an NVML event failed`, one INFO `NVML events are read again`",
        (f"{HEALTH}::test_event_wait_failure_falls_back_to_probes_and_recovers",)),
    Row("No `libnvidia-ml.so.1`, then the library installed",
        "an empty device list at once, the stream open; the devices without a restart",
        "the first answer before the library is installed; devices after the install (1.0 s after it)",
        "one INFO `no libnvidia-ml.so.1 on this machine`, not one per check",
        (f"{HEALTH}::test_no_library_then_the_driver_installed_without_restart",)),
    Row("Pending retirement / failed row remapping, then SIGKILL and relaunch",
        "those GPUs unhealthy (`row remapping failed`, `pending page retirement`), and again in the "
        "relaunched plugin's first answer",
        "in the relaunched plugin's first answer (0.46 s after its launch)",
        "one WARNING per device",
        (f"{HEALTH}::test_retirement_survives_a_killed_and_relaunched_plugin",)),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_matrix() -> str:
    lines = ["| fault | what Nomad's client sees | how fast: asserted (measured here) | what the plugin logs | tests |",
             "| --- | --- | --- | --- | --- |"]
    for r in ROWS:
        tests = "<br>".join(f"`{t.split('::')[0].split('/')[-1]}::{t.split('::')[1]}`" for t in r.tests)
        lines.append(f"| {_cell(r.fault)} | {_cell(r.sees)} | {_cell(r.fast)} | {_cell(r.logs)} | {tests} |")
    return "\n".join(lines) + "\n"


def doc_with_matrix(doc: str) -> str:
    if BEGIN not in doc or END not in doc:
        raise ValueError(f"{DOC} has no {BEGIN} ... {END} section")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{render_matrix()}{END}{tail}"


def test_reliability_doc_shows_the_matrix() -> None:
    doc = DOC.read_text()
    assert doc_with_matrix(doc) == doc, (
        f"{DOC.relative_to(REPO_ROOT)} is not the table in {HERE}: run `.venv/bin/python {HERE}`")


def _defined_tests(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_row_is_backed_by_a_test_that_exists() -> None:
    for row in ROWS:
        assert row.tests, row.fault
        for ref in row.tests:
            file, _, name = ref.partition("::")
            assert name in _defined_tests(REPO_ROOT / file), f"{row.fault!r} names {ref}, which does not exist"


def record(key: str, **figures: Any) -> None:
    """Merge one row's measured figures into build/fault-matrix.json."""
    merge_json(FIGURES, key, figures)


def _due_lag(tl: Timeline, index: int, offset_s: float) -> float | None:
    """How long after its earliest possible due time step `index` was seen (s)."""
    init = init_window_or_none(tl)
    seen = met_or_none(tl, index)
    if init is None or seen is None:
        return None
    return round((seen - (init[0] + offset_s * 1000)) / 1000, 3)


# --- NVML error mid-stream ---


def test_nvml_error_mid_stream(timeline: Callable[..., Timeline], tmp_path: Path) -> None:
    scenario = SCENARIOS / "matrix-nvml-error.toml"
    gpus = uuids(scenario)
    error_at = 1.5
    cfg = sim_config(tmp_path, scenario, fingerprint_period="2s", health=FAST_HEALTH)
    tl = timeline(cfg, ["devices:2@15s", "healthy:all", f"unhealthy:all:Unknown Error@{HANG_S:g}s",
                        "ticks:8"])
    lag = _due_lag(tl, 2, error_at)
    per_device = [len(tl.plugin_logs(f"device {g} unhealthy")) for g in gpus]
    retries = tl.plugin_logs("NVML enumeration failed")
    record("nvml_error_mid_stream", unhealthy_lag_s=lag, device_warnings=per_device, enumeration_retry_lines=len(retries),
           stats_answers=len(tl.stats), fingerprint_answers=len(tl.fingerprints))
    tl.ok()

    lo, _ = tl.init_window()
    assert lag is not None and -0.05 <= lag, f"unhealthy {lag} s after the error was due"
    seen = met_or_none(tl, 2)
    assert seen is not None
    # From then on every answer has both devices listed and unhealthy, naming the error.
    for e in tl.fingerprints:
        if e["ms"] >= seen:
            status = device_status(e)
            assert set(status) == set(gpus), status
            assert all(not ok and "Unknown Error" in desc for ok, desc in status.values()), status
    # Stats kept their interval after the error, every device still in them (values N/A).
    after = [e for e in tl.stats if e["ms"] >= seen]
    assert len(after) >= 8 and all(stats_ids(e) == set(gpus) for e in after), after[-1:]
    # One WARNING per device, not per failed read; scan retries back off (1 s, then 2 s).
    assert per_device == [1, 1], per_device
    # The enumeration's failure is said once, however often the scan retries.
    assert len(retries) <= 1, f"{len(retries)} retry lines"
    assert tl.ended_by_plugin() == []
    down = tl.shutdown()
    assert down["graceful"] and down["exit_code"] == 0, down


# --- a lost GPU and its return ---


def test_lost_gpu_and_its_return(timeline: Callable[..., Timeline], tmp_path: Path) -> None:
    scenario = SCENARIOS / "matrix-lost-gpu.toml"
    gpus = uuids(scenario)
    lost = gpus[1]
    lost_at, back_at = 1.0, 3.0
    cfg = sim_config(tmp_path, scenario, fingerprint_period="1h", health=FAST_HEALTH)
    tl = timeline(cfg, ["devices:3@15s", "healthy:all", f"unhealthy:{lost}:lost@{HANG_S:g}s",
                        f"healthy:{lost}@{HANG_S:g}s", "ticks:2"])
    lost_lag, back_lag = _due_lag(tl, 2, lost_at), _due_lag(tl, 3, back_at)
    warned, healed = tl.plugin_logs(f"device {lost} unhealthy"), tl.plugin_logs(f"device {lost} is healthy again")
    record("lost_gpu_and_its_return", unhealthy_lag_s=lost_lag, healthy_again_lag_s=back_lag,
           warning_lines=len(warned), healthy_again_lines=len(healed))
    tl.ok()

    assert lost_lag is not None and -0.05 <= lost_lag, lost_lag
    assert back_lag is not None and -0.05 <= back_lag, back_lag
    sick = device_status(tl.by(2))
    assert "GPU is lost" in sick[lost][1], sick
    assert device_status(tl.by(3))[lost] == (True, "")
    # Nobody else was ever unhealthy, and Stats kept every device.
    for e in tl.fingerprints:
        status = device_status(e)
        assert all(ok for g, (ok, _) in status.items() if g != lost), status
    assert all(stats_ids(e) == set(gpus) for e in tl.stats if e["groups"]), "a device left the stats"
    assert [w["entry"]["@level"] for w in warned] == ["warn"], [w["entry"] for w in warned]
    assert [h["entry"]["@level"] for h in healed] == ["info"], [h["entry"] for h in healed]
    assert tl.ended_by_plugin() == []


# --- an XID storm ---


@dataclass
class SampledRun:
    run: HarnessRun
    pid: int | None
    cpu: list[tuple[float, float]]  # (ms since the harness started, plugin CPU seconds)

    def cpu_between(self, lo_ms: float, hi_ms: float) -> float:
        """Plugin CPU (in cores) over [lo, hi], from the samples nearest inside it."""
        inside = [s for s in self.cpu if lo_ms <= s[0] <= hi_ms]
        assert len(inside) >= 2, f"no CPU samples in [{lo_ms}, {hi_ms}]: {self.cpu[:3]}...{self.cpu[-3:]}"
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) / ((t1 - t0) / 1000)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_sampled(harness_bin: Path, args: list[str], timeout: float) -> SampledRun:
    """A harness run whose plugin's CPU time is sampled every 50 ms (the pid from its launch event)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([str(harness_bin), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    pid: list[int] = []
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            if pid:
                try:
                    samples.append(((time.monotonic() - t0) * 1000, _cpu_seconds(pid[0])))
                except (OSError, IndexError, ValueError):
                    pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr: list[str] = []
    err_reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)
    err_reader.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if not pid and '"event":"launch"' in line.replace(" ", ""):
                got = json.loads(line).get("pid")
                if got:
                    pid.append(int(got))
        proc.wait()
    finally:
        killer.cancel()
        done.set()
        sampler.join(5)
        err_reader.join(5)
        proc.stdout.close()
        proc.stderr.close()
    events = [json.loads(line) for line in lines if line.strip()]
    return SampledRun(HarnessRun(args, proc.returncode, events, "".join(stderr)), pid[0] if pid else None, samples)


STORM_START_S = 1.0


def storm_scenario(path: Path) -> Path:
    """matrix-xid-storm.toml plus the storm: events k = 0.. at 1 ms steps, in turn XID 13 on
    GPU 0, XID 31 on GPU 1, XID 79 and XID 48 on GPU 2; then XID 94 on GPU 3."""
    lines = [(SCENARIOS / "matrix-xid-storm.toml").read_text()]
    kinds = [(0, 13), (1, 31), (2, 79), (2, 48)]
    for k in range(int(STORM_RATE * STORM_S)):
        gpu, xid = kinds[k % 4]
        lines.append(f"[[events]]\ngpu = {gpu}\nat_s = {STORM_START_S + k / STORM_RATE:.4f}\nxid = {xid}\n")
    lines.append(f"[[events]]\ngpu = 3\nat_s = {STORM_START_S + STORM_S + 0.5:.4f}\nxid = 94\n")
    path.write_text("\n".join(lines))
    return path


@dataclass
class Storm:
    sampled: SampledRun
    tl: Timeline
    gpus: list[str]
    init: tuple[float, float]


@pytest.fixture(scope="module")
def storm(harness_bin: Path, plugin_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Storm:
    tmp = tmp_path_factory.mktemp("storm")
    scenario = storm_scenario(tmp / "matrix-xid-storm.toml")
    gpus = uuids(scenario)
    cfg = sim_config(tmp, scenario, fingerprint_period="1h", health=FAST_HEALTH)
    end_s = STORM_START_S + STORM_S + 0.5
    args = ["timeline", "--plugin", str(plugin_bin), "--config", str(cfg), "--logs", "--timeout", "20s",
            "--stats", "--interval", "500ms", "--until", "devices:4@15s", "--until", "healthy:all",
            "--until", f"unhealthy:{gpus[2]}:XID@{HANG_S:g}s",
            "--until", f"unhealthy:{gpus[3]}:XID 94@{HANG_S:g}s"]
    sampled = run_sampled(harness_bin, args, timeout=90)
    tl = Timeline(sampled.run)
    tl.ok()
    return Storm(sampled, tl, gpus, tl.init_window())


def test_xid_storm_keeps_health_right_and_cpu_bounded(storm: Storm) -> None:
    tl, gpus = storm.tl, storm.gpus
    lo, _ = storm.init
    start_ms, end_ms = lo + STORM_START_S * 1000, lo + (STORM_START_S + STORM_S) * 1000
    first_lag, after_lag = _due_lag(tl, 2, STORM_START_S), _due_lag(tl, 3, STORM_START_S + STORM_S + 0.5)
    cores = storm.sampled.cpu_between(start_ms + 200, end_ms)
    during = [e for e in tl.fingerprints if start_ms <= e["ms"] <= end_ms]
    app_lines = len(tl.plugin_logs("an application fault"))
    record("xid_storm", first_critical_lag_s=first_lag, after_storm_xid_lag_s=after_lag, cpu_cores=round(cores, 3),
           fingerprint_answers_during=len(during), application_xid_info_lines=app_lines,
           application_xid_lines_per_s=round(app_lines / STORM_S, 1),
           critical_warning_lines=len(tl.plugin_logs(f"device {gpus[2]} unhealthy")))

    # Both come, and not before they are due; how late (a backlog would show) is recorded, not asserted.
    assert first_lag is not None and -0.05 <= first_lag, first_lag
    assert after_lag is not None and -0.05 <= after_lag, after_lag
    assert cores <= STORM_CPU_CORES, f"the plugin used {cores:.2f} cores during the storm"
    seen = met_or_none(tl, 2)
    assert seen is not None
    for e in tl.fingerprints:
        status = device_status(e)
        assert status[gpus[0]] == (True, "") and status[gpus[1]] == (True, ""), status
        if e["ms"] >= seen:
            assert not status[gpus[2]][0] and "XID" in status[gpus[2]][1], status
        if e["ms"] < float(met_or_none(tl, 3) or 0):
            assert status[gpus[3]] == (True, ""), status
    # Stats kept flowing through the storm.
    ticks = [e for e in tl.stats if start_ms <= e["ms"] <= end_ms]
    assert len(ticks) >= 2, f"{len(ticks)} stats answers during the storm"
    # The critical GPU is logged once (the cause, not each XID).
    assert len(tl.plugin_logs(f"device {gpus[2]} unhealthy")) == 1
    assert tl.ended_by_plugin() == []
    assert tl.shutdown()["graceful"]


def test_xid_storm_answers_are_coalesced(storm: Storm) -> None:
    lo, _ = storm.init
    start_ms, end_ms = lo + STORM_START_S * 1000, lo + (STORM_START_S + STORM_S) * 1000
    during = [e for e in storm.tl.fingerprints if start_ms <= e["ms"] <= end_ms]
    # GPU 2's description changes when a new kind of XID comes (79, then 48): the stream coalesces
    # the changes to at most one answer per STORM_ANSWER_GAP_S, the first not delayed.
    assert len(during) <= STORM_S / STORM_ANSWER_GAP_S + 2, f"{len(during)} Fingerprint answers in {STORM_S:g} s"
    gaps = [b["ms"] - a["ms"] for a, b in zip(during, during[1:])]
    assert all(g >= STORM_ANSWER_GAP_S * 1000 / 2 for g in gaps), sorted(gaps)[:5]  # half: receive jitter


def test_xid_storm_application_xid_logs_are_rate_limited(storm: Storm) -> None:
    app_lines = storm.tl.plugin_logs("an application fault")
    # A rate limit worth the name: a few lines per GPU per storm, with a count of the rest.
    assert len(app_lines) <= 20, f"{len(app_lines)} INFO lines for application XIDs in {STORM_S:g} s"


# --- PLUGIN_UNIX_SOCKET_DIR missing or unwritable ---


@pytest.mark.parametrize("case", ["missing", "a file", "not writable"])
def test_socket_dir_missing_or_unwritable(run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path,
                                          request: pytest.FixtureRequest, case: str) -> None:
    plugin: Path = plugin_bin
    if case == "missing":
        sock_dir = tmp_path / "no" / "such" / "dir"
        reason = "No such file or directory"
    elif case == "a file":
        sock_dir = tmp_path / "a-file"
        sock_dir.write_text("")
        reason = "Not a directory"
    else:
        # Under a directory anyone may enter (pytest's own are 0700), so that only the mode
        # of this one stops the plugin.
        open_dir = Path(tempfile.mkdtemp(prefix="nde-sockdir-"))
        request.addfinalizer(lambda: shutil.rmtree(open_dir, ignore_errors=True))
        open_dir.chmod(0o755)
        sock_dir = open_dir / "read-only"
        sock_dir.mkdir()
        sock_dir.chmod(0o555)
        reason = "Permission denied"
        if os.geteuid() == 0:
            # Root writes anywhere: run the plugin as nobody, for whom the directory is read-only.
            setpriv = shutil.which("setpriv")
            assert setpriv, "setpriv (util-linux) is needed to run the plugin unprivileged as root"
            plugin = open_dir / "as-nobody"
            plugin.write_text(f"#!/bin/sh\nexec {setpriv} --reuid=65534 --regid=65534 --clear-groups {plugin_bin} \"$@\"\n")
            plugin.chmod(0o755)
    t0 = time.monotonic()
    run = run_harness("info", "--plugin", plugin, "--logs", "--timeout", "10s",
                      "--env", f"PLUGIN_UNIX_SOCKET_DIR={sock_dir}", timeout=60)
    took = time.monotonic() - t0
    launch = run.one("launch")
    lines = [e["entry"]["@message"] for e in run.of("log") if e["from_plugin"]]
    exited = [e["entry"] for e in run.of("log") if e["entry"].get("@message") == "plugin process exited"]
    record(f"socket_dir_{case.replace(' ', '_')}", took_s=round(took, 3), plugin_lines=lines,
           launch_error=str(launch.get("error"))[:200])

    assert launch.get("error") and "Failed to read any lines from plugin's stdout" in launch["error"], launch
    assert any(line.startswith("Error preparing plugin:") and reason in line and str(sock_dir) in line
               for line in lines), lines
    assert exited and exited[0].get("error") == "exit status 1", exited
    # Nothing was created under the directory (it could not be).
    if sock_dir.is_dir():
        assert list(sock_dir.iterdir()) == []


# --- a client that connects and never speaks ---


def _raw(data: bytes) -> bytes:
    return data


class Launched:
    """The plugin started as go-plugin's host starts it, for clients this test writes itself."""

    def __init__(self, plugin_bin: Path, **env: str) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "NVML_SIM_"))}
        full.update({MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE, "PLUGIN_PROTOCOL_VERSIONS": "2", **env})
        self.proc = subprocess.Popen([str(plugin_bin)], env=full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stderr: list[bytes] = []
        self._reader = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr or []), daemon=True)
        self._reader.start()
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line:
            self.kill()
            raise AssertionError(f"no handshake line within 30 s: {b''.join(self.stderr)[-2000:]!r}")
        parts = line.strip().split("|")
        self.network, self.address = parts[2], parts[3]
        self.cert_b64 = parts[5] if len(parts) > 5 else ""
        assert self.network == "unix", line

    def threads(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no Threads line")

    def silent(self, n: int) -> list[socket.socket]:
        socks = []
        for k in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(self.address)
            if k == 0:
                s.sendall(b"PRI * HTTP/2.0\r\n")  # half of HTTP/2's preface, then nothing
            socks.append(s)
        return socks

    def sigterm(self) -> float:
        at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        finally:
            self.kill()
        return time.monotonic() - at

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def _answers(channel: grpc.Channel) -> tuple[float, float]:
    """(seconds to a PluginInfo answer, seconds to the first Fingerprint answer) over `channel`."""
    info = channel.unary_unary("/hashicorp.nomad.plugins.base.proto.BasePlugin/PluginInfo",
                               request_serializer=_raw, response_deserializer=_raw)
    at = time.monotonic()
    reply = base_pb2.PluginInfoResponse.FromString(info(base_pb2.PluginInfoRequest().SerializeToString(), timeout=10))
    info_s = time.monotonic() - at
    assert reply.name == "nvidia-gpu", reply
    fp = channel.unary_stream("/hashicorp.nomad.plugins.device.DevicePlugin/Fingerprint",
                              request_serializer=_raw, response_deserializer=_raw)
    at = time.monotonic()
    call = fp(device_pb2.FingerprintRequest().SerializeToString(), timeout=10)
    try:
        device_pb2.FingerprintResponse.FromString(next(call))
    finally:
        call.cancel()
    return info_s, time.monotonic() - at


def test_silent_client_on_the_plain_socket(plugin_bin: Path) -> None:
    # No NVML library in reach: the first Fingerprint answer (empty) comes at once.
    p = Launched(plugin_bin, LD_LIBRARY_PATH="")
    socks: list[socket.socket] = []
    try:
        before = p.threads()
        socks = p.silent(SILENT_CLIENTS)
        with grpc.insecure_channel(f"unix:{p.address}") as channel:
            info_s, fp_s = _answers(channel)
        grown = p.threads() - before
        exit_s = p.sigterm()
    finally:
        for s in socks:
            s.close()
        p.kill()
    record("silent_client_plain", silent=len(socks), plugin_info_s=round(info_s, 4),
           first_fingerprint_s=round(fp_s, 4), thread_growth=grown, exit_s=round(exit_s, 3))
    # Answered (within the calls' 10 s limit, a hang guard) while every silent connection was open.
    # Threads for the one real client's calls at most; none per silent connection.
    assert grown <= 4, f"{grown} more threads with {SILENT_CLIENTS} silent connections open"
    # SIGTERM with them open: the plugin exits by itself, status 0 (a kill after the 10 s wait would be -9).
    assert p.proc.returncode == 0, (exit_s, p.proc.returncode)


def _client_cert() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): a one-time client certificate as go-plugin's host makes one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_silent_client_on_the_tls_socket(plugin_bin: Path) -> None:
    cert, key = _client_cert()
    p = Launched(plugin_bin, LD_LIBRARY_PATH="", PLUGIN_CLIENT_CERT=cert.decode())
    socks: list[socket.socket] = []
    limit = DEFAULT_LIMITS.tls_handshake_timeout
    try:
        assert p.cert_b64, "no server certificate in the handshake line"
        der = base64.b64decode(p.cert_b64 + "=" * (-len(p.cert_b64) % 4))
        server_pem = ssl.DER_cert_to_PEM_cert(der).encode()
        before = p.threads()
        opened = time.monotonic()
        socks = p.silent(SILENT_TLS_CLIENTS)
        creds = grpc.ssl_channel_credentials(root_certificates=server_pem, private_key=key, certificate_chain=cert)
        with grpc.secure_channel(f"unix:{p.address}", creds,
                                 options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
            info_s, fp_s = _answers(channel)
        while_open = p.threads()
        # The relay drops each silent connection once its handshake time is up (bounded wait).
        closed_after: dict[int, float] = {}  # by index in socks
        pending = list(socks)
        deadline = opened + limit + 3
        while pending and time.monotonic() < deadline:
            ready, _, _ = select.select(pending, [], [], max(0.0, deadline - time.monotonic()))
            for s in ready:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    closed_after[socks.index(s)] = time.monotonic() - opened
                    pending.remove(s)
        # A relay thread closes its socket a moment before it exits, and the silent ones
        # time out together on two cores: the last of them get a bounded moment to finish.
        relay_threads = while_open - p.threads()
        settle_until = time.monotonic() + 2.0
        while relay_threads < SILENT_TLS_CLIENTS - 2 and time.monotonic() < settle_until:
            time.sleep(0.05)
            relay_threads = while_open - p.threads()
        exit_s = p.sigterm()
    finally:
        for s in socks:
            s.close()
        p.kill()
    record("silent_client_tls", silent=len(socks), plugin_info_s=round(info_s, 4), first_fingerprint_s=round(fp_s, 4),
           closed_after_s=[round(closed_after[k], 2) for k in sorted(closed_after)], still_open=len(pending),
           exit_s=round(exit_s, 3), threads_before=before, threads_while_open=while_open,
           threads_ended_with_the_drops=relay_threads)
    assert not pending, f"{len(pending)} silent TLS connections still open {limit + 3:g} s after they connected"
    # The one that sent half an HTTP/2 preface is no TLS client: dropped at once, before any
    # silent one. The silent ones are dropped when their handshake time is up, not before.
    silent = [closed_after[k] for k in range(1, len(socks))]
    assert closed_after[0] < min(silent), closed_after
    assert min(silent) >= limit - 0.5, f"a silent connection was dropped after {min(silent):.1f} s"
    # The relay holds a thread per connection (at most 16): the silent ones' ended with them.
    assert relay_threads >= SILENT_TLS_CLIENTS - 2, f"{relay_threads} threads ended with {SILENT_TLS_CLIENTS} drops"
    assert p.proc.returncode == 0, (exit_s, p.proc.returncode)


# --- a real agent: SIGKILL and relaunch, restart, death ---

PLUGIN = "nomad-device-nvidia"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, limit: float) -> float | None:
    """Seconds until `pid` has exited (a zombie counts), polled every 5 ms; None after `limit`."""
    at = time.monotonic()
    while time.monotonic() - at < limit:
        if not _alive(pid):
            return time.monotonic() - at
        time.sleep(0.005)
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class RestartableAgent(NomadAgent):
    def restart(self, timeout: float = 90.0) -> tuple[float, float]:
        """SIGINT (as an operator stops it), then the same agent again on the same data dir.
        Returns (seconds the agent took to exit, seconds from the new start to a ready node)."""
        assert self.proc is not None and self._log is not None
        at = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        stopped = time.monotonic() - at
        self._log.close()
        self._log = open(self.log_dir / "agent.log", "ab")
        at = time.monotonic()
        self.proc = subprocess.Popen(
            [str(self.nomad_bin), "agent", "-dev", "-config", str(self.root / "agent.hcl")],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
            env=dict(os.environ, NOMAD_ADDR=self.addr), start_new_session=True)
        self.wait_for("the restarted agent's leader", self._leader, timeout)
        self.node_id = self.wait_for("the restarted client node", self._ready_node, timeout)
        return stopped, time.monotonic() - at


@pytest.fixture(scope="module")
def agent() -> Iterator[RestartableAgent]:
    plugin_bin = Path(os.environ.get("NOMAD_E2E_PLUGIN", REPO_ROOT / ".venv" / "bin" / PLUGIN))
    assert plugin_bin.is_file() and SIM_LIB.is_file(), "run `make native sim`"
    spec = PluginSpec(PLUGIN, plugin_bin, {"simulate": str(SCENARIOS / "matrix-2gpu.toml"),
                                           "nvml_library": str(SIM_LIB), "fingerprint_period": "5s"})
    a = RestartableAgent("faults", [spec])
    try:
        a.start()
        yield a
    finally:
        a.stop()
        plugins = {pid: cmd for pid, cmd in a.survivors.items() if str(plugin_bin) in cmd}
        assert not plugins, f"plugin processes still running after the agent stopped: {plugins}"


def _device_ids(agent: NomadAgent) -> set[str]:
    return {i["ID"] for g in agent.node_devices() if g["Vendor"] == "nvidia" for i in g["Instances"]
            if i["Healthy"]}


def _stats_stamps(agent: NomadAgent) -> dict[str, float]:
    out = {}
    for g in agent.api("GET", "/v1/client/stats").get("DeviceStats") or []:
        for dev, s in (g.get("InstanceStats") or {}).items():
            whole, _, frac = s["Timestamp"].rstrip("Z").partition(".")
            out[dev] = (datetime.datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp()
                        + float(f"0.{frac or 0}"))
    return out


def _fresh_stats(agent: NomadAgent, ids: set[str], since: float) -> bool:
    stamps = _stats_stamps(agent)
    return set(stamps) == ids and min(stamps.values()) > since


GPUS_2 = 2


def test_agent_relaunches_a_killed_plugin(agent: RestartableAgent) -> None:
    ids = agent.wait_for("both GPUs healthy on the node", lambda: (lambda s: s if len(s) == GPUS_2 else None)(
        _device_ids(agent)), 60)
    (old,) = agent.wait_for("the plugin process", lambda: agent.plugin_pids(PLUGIN), 30)
    killed_wall, killed = time.time(), time.monotonic()
    os.kill(old, signal.SIGKILL)
    new = agent.wait_for("Nomad to relaunch the plugin", lambda: [p for p in agent.plugin_pids(PLUGIN) if p != old],
                         RELAUNCH_S, interval=0.02)
    relaunch_s = time.monotonic() - killed
    agent.wait_for("stats stamped after the kill for both GPUs", lambda: _fresh_stats(agent, ids, killed_wall),
                   STATS_BACK_S, interval=0.1)
    stats_s = time.monotonic() - killed
    record("sigkill_relaunch", relaunch_s=round(relaunch_s, 3), fresh_stats_s=round(stats_s, 3))
    assert len(new) == 1 and not _alive(old)
    assert _device_ids(agent) == ids, "a device is missing or unhealthy after the relaunch"


def test_agent_restart_relaunches_the_plugin(agent: RestartableAgent) -> None:
    ids = agent.wait_for("both GPUs healthy on the node", lambda: (lambda s: s if len(s) == GPUS_2 else None)(
        _device_ids(agent)), 60)
    (old,) = agent.wait_for("the plugin process", lambda: agent.plugin_pids(PLUGIN), 30)
    log = agent.log_dir / "agent.log"
    said = "client.device_mgr.nomad-device-nvidia: plugin shutting down"
    before = log.read_text(errors="replace").count(said)
    stopped_s, ready_s = agent.restart()
    shut = [line for line in log.read_text(errors="replace").splitlines() if said in line][before:]
    old_gone = not _alive(old)
    started_wall, started = time.time() - ready_s, time.monotonic() - ready_s
    agent.wait_for("the new agent's plugin", lambda: [p for p in agent.plugin_pids(PLUGIN) if p != old], 30)
    agent.wait_for("both GPUs on the restarted node", lambda: _device_ids(agent) == ids, STATS_BACK_S)
    agent.wait_for("stats from the new plugin", lambda: _fresh_stats(agent, ids, started_wall), STATS_BACK_S,
                   interval=0.1)
    back_s = time.monotonic() - started
    record("agent_restart", agent_exit_s=round(stopped_s, 3), ready_s=round(ready_s, 3), devices_and_stats_s=round(back_s, 3),
           old_plugin_gone_at_agent_exit=old_gone)
    assert old_gone, f"plugin {old} outlived the agent it belonged to"
    # The device manager's Shutdown reached it: it said so as it left.
    assert shut and 'reason="Shutdown requested by the host"' in shut[0], shut


def test_plugin_exits_when_the_agent_is_killed(agent: RestartableAgent) -> None:
    (pid,) = agent.wait_for("the plugin process", lambda: agent.plugin_pids(PLUGIN), 60)
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGKILL)  # the agent only: its children are left to themselves
    gone = _wait_gone(pid, 5.0)
    agent.proc.wait(10)
    orphans = [p for p in agent.leftover_pids() if _alive(p) and PLUGIN in _cmdline(p)]
    record("parent_death", plugin_exit_s=None if gone is None else round(gone, 3))
    assert gone is not None and gone <= PARENT_DEATH_S, f"plugin {pid} still running {gone or 5.0:.2f} s after the agent died"
    assert not orphans, f"orphaned plugin processes: {orphans}"


if __name__ == "__main__":
    text = DOC.read_text()
    new = doc_with_matrix(text)
    if new != text:
        DOC.write_text(new)
        print(f"updated the fault matrix in {DOC.relative_to(REPO_ROOT)}")
    else:
        print(f"{DOC.relative_to(REPO_ROOT)} is current")
    sys.exit(0)
