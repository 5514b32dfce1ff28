"""Shared pytest hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


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

