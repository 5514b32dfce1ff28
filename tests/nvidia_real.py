"""NVIDIA's real files for the tests: fetched once by scripts/nvidia_files.py, then cached.

A failed fetch fails the test that needs the files, with the fetch's own message:
these tests are part of `make test` and are never skipped.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "nvidia_files.py"


@functools.cache
def script() -> ModuleType:
    """scripts/nvidia_files.py as a module (its Manifest, symbol reader and list writer)."""
    spec = importlib.util.spec_from_file_location("nvidia_files", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nvidia_files"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@functools.cache
def _fetch() -> tuple[Any, str]:
    # A subprocess, so the fetch's apt/pip output never mixes into pytest's and its
    # lock is held by a process that exits even if this one is killed.
    proc = subprocess.run([sys.executable, str(SCRIPT), "fetch"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return None, proc.stderr.strip() or proc.stdout.strip()
    manifest = script().load_manifest()
    if manifest is None:
        return None, f"{SCRIPT.name} exited 0 but left no complete manifest under {script().cache_dir()}"
    return manifest, ""


def manifest() -> Any:
    """The fetched files (scripts/nvidia_files.py's Manifest); fails the test when they cannot be fetched."""
    got, why = _fetch()
    if got is None:
        pytest.fail(
            "NVIDIA's real NVML files could not be fetched (they come from deb.debian.org and PyPI;"
            f" run `python scripts/nvidia_files.py` to see why):\n{why}",
            pytrace=False,
        )
    return got
