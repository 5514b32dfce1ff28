"""Shared pytest hooks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


# --- Tiers: what each test file starts, as markers (`make check` runs the quick ones) ---

# inprocess: this process alone, no NVML library; sim: the simulated driver (or NVIDIA's
# fetched library), loaded here or in plugin, harness, compiler or Python processes the test
# starts; agent: a real `nomad agent`;
# qemu: arm64 code under qemu-user; slow: over ~15 s warm, or builds a wheel or a node.
# A new test file gets a line here: collection fails for one that has none.
TIERS: dict[str, tuple[str, ...]] = {
    "test_aarch64.py": ("qemu", "slow"),
    "test_agent_e2e.py": ("agent", "slow"),
    "test_bench.py": ("sim", "slow"),
    "test_calls.py": ("inprocess",),
    "test_cdi.py": ("sim",),
    "test_cdi_docker_e2e.py": ("agent", "slow"),  # and a dockerd of its own
    "test_cli.py": ("sim",),
    "test_cluster.py": ("agent", "slow"),
    "test_conformance.py": ("sim",),
    "test_demo.py": ("sim", "slow"),
    "test_driver.py": ("sim",),
    "test_event_watcher.py": ("inprocess",),
    "test_faults.py": ("sim", "slow"),
    "test_fuzz.py": ("sim", "slow"),
    "test_gb200.py": ("sim",),
    "test_goplugin_parity.py": ("sim",),
    "test_gpu_check.py": ("sim",),
    "test_health_faults.py": ("sim", "slow"),
    "test_health_book.py": ("inprocess",),
    "test_import_boundaries.py": ("inprocess",),
    "test_install_doc.py": ("sim", "slow"),
    "test_lifecycle.py": ("inprocess",),
    "test_limits.py": ("sim",),
    "test_mps.py": ("sim",),
    "test_mps_e2e.py": ("agent", "slow"),
    "test_nvidia_config.py": ("inprocess",),
    "test_nvidia_files.py": ("sim",),
    "test_nvidia_grouping.py": ("sim",),
    "test_nvidia_sim.py": ("sim",),
    "test_nvml_abi.py": ("sim",),  # gcc and rustc on nvml.h and nvml_sys
    "test_nvml_symbols.py": ("sim",),
    "test_probe_config.py": ("sim",),
    "test_probe_diagnostics.py": ("sim",),
    "test_proto_fresh.py": ("inprocess",),
    "test_release.py": ("sim",),
    "test_real_library.py": ("sim",),  # NVIDIA's fetched library, in a private /dev
    "test_reserve_nvlink.py": ("inprocess",),
    "test_runtime_floor.py": ("sim",),  # our plugin, then the floor, through the harness
    "test_sdk_config.py": ("inprocess",),
    "test_sdk_logs.py": ("inprocess",),
    "test_sdk_stats.py": ("sim",),
    "test_sharing_e2e.py": ("agent", "slow"),
    "test_signals.py": ("sim", "slow"),
    "test_sim_nvml.py": ("sim",),
    "test_sim_strict.py": ("sim",),
    "test_soak.py": ("sim", "slow"),
    "test_stats_differential.py": ("sim",),
    "test_stats_end_to_end.py": ("sim",),
    "test_stats_engines.py": ("sim",),
    "test_stats_hub.py": ("inprocess",),
    "test_stats_shared.py": ("sim",),
    "test_transport.py": ("sim",),
    "test_upgrade.py": ("sim", "slow"),
    "test_wheel.py": ("sim", "slow"),
}
STARTS = ("inprocess", "sim", "agent", "qemu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    untiered = set()
    for item in items:
        name = item.path.name
        if item.path.parent != Path(__file__).parent:
            continue  # benches/ and the like carry their own markers
        tier = TIERS.get(name)
        if not tier or not any(t in STARTS for t in tier):
            untiered.add(name)
            continue
        for marker in tier:
            item.add_marker(marker)
    if untiered:
        raise pytest.UsageError(f"tests/conftest.py TIERS has no line for {', '.join(sorted(untiered))}: "
                                f"say what the file's tests start ({', '.join(STARTS)}) and whether they are slow")


# --- Go harness (tests/harness): binaries and a runner that parses its JSON lines ---

REPO_ROOT = Path(__file__).resolve().parent.parent
GO_BIN = REPO_ROOT / "build" / "bin"


def _go_binary(name: str) -> Path:
    path = GO_BIN / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build it with `make harness`")
    return path


@pytest.fixture(scope="session")
def harness_bin() -> Path:
    """build/bin/harness: drives a plugin with Nomad's client code, prints JSON lines."""
    return _go_binary("harness")


@pytest.fixture(scope="session")
def launcher_bin() -> Path:
    """build/bin/launcher: Nomad's plugins/shared/cmd/launcher."""
    return _go_binary("launcher")


@pytest.fixture(scope="session")
def nomad_example_device_bin() -> Path:
    """build/bin/nomad-example-device: Nomad's own example device plugin (Go), a known-good peer."""
    return _go_binary("nomad-example-device")


@pytest.fixture(scope="session")
def plugin_bin() -> Path:
    """Our plugin executable: $NOMAD_DEVICE_NVIDIA_BIN, else the one beside this interpreter (.venv/bin)."""
    path = Path(os.environ.get("NOMAD_DEVICE_NVIDIA_BIN") or Path(sys.prefix) / "bin" / "nomad-device-nvidia")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: install the package with `make native`")
    return path


@dataclass
class HarnessRun:
    """One harness run: its exit status, its events (one JSON object per stdout line), its stderr."""

    args: list[str]
    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of(kind)
        assert len(found) == 1, f"want one {kind!r} event, got {len(found)}: {self.describe()}"
        return found[0]

    def describe(self) -> str:
        lines = "\n".join(json.dumps(e)[:600] for e in self.events)
        return f"harness {' '.join(self.args)}\nexit {self.returncode}\n{lines}\nstderr: {self.stderr[-2000:]}"

    def ok(self) -> HarnessRun:
        assert self.returncode == 0 and not self.of("error"), self.describe()
        return self


@pytest.fixture(scope="session")
def run_harness(harness_bin: Path) -> Callable[..., HarnessRun]:
    """run_harness("session", "--plugin", P, ...) -> HarnessRun (not checked: call .ok())."""

    def run(*args: str | Path, timeout: float = 180) -> HarnessRun:
        argv = [str(a) for a in args]
        proc = subprocess.run([str(harness_bin), *argv], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        return HarnessRun(argv, proc.returncode, events, proc.stderr)

    return run



def merge_json(path: Path, key: str, value: Any) -> None:
    """Sets `key` in the JSON object of `path` (a file of measured figures several tests add
    to), by rename so a reader never sees half a file. An unreadable file starts afresh."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[key] = value
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# --- no plugin process outlives the test session ---
# Every process this session starts inherits this mark; a plugin process
# (NOMAD_PLUGIN_MAGIC_COOKIE set) still carrying it at the end is a leftover.
# Other sessions on the machine carry their own marks and are left alone.

SESSION_MARK = "NOMAD_DEVICE_NVIDIA_TEST_SESSION"
os.environ[SESSION_MARK] = f"{os.getpid()}-{time.time_ns()}"


def _leftover_plugins() -> dict[int, str]:
    mark = f"{SESSION_MARK}={os.environ[SESSION_MARK]}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, a zombie, or another user's
            continue
        if mark in environ and any(e.startswith(b"NOMAD_PLUGIN_MAGIC_COOKIE=") for e in environ):
            found[int(entry)] = cmdline.strip()
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + 10  # plugins of the last test may still be exiting
    leftovers = _leftover_plugins()
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.2)
        leftovers = _leftover_plugins()
    if not leftovers:
        return
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)  # started by this session: ours to end
        except ProcessLookupError:
            pass
    lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in leftovers.items())
    sys.stderr.write(f"\nplugin processes outlived the test session (killed now):\n{lines}\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
