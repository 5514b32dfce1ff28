"""Driver branches the simulated driver plays (src_rust/nvml_sim/branches): the tests
run the main scenarios at 535, the LTS branch many fleets run (it lacks
nvmlDeviceGetNumaNodeId and nvmlDeviceGetGpuFabricInfoV), and at the newest branch."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTS = REPO / "src_rust" / "nvml_sim" / "branches"
BRANCHES = sorted(int(p.stem) for p in LISTS.glob("*.txt"))
OLDEST = 535
NEWEST = BRANCHES[-1]
SIM_DIR = REPO / "build" / "sim"


def functions(branch: int) -> set[str]:
    """The `nvml*` functions NVIDIA's library of `branch` exports."""
    lines = (LISTS / f"{branch}.txt").read_text().splitlines()
    return {line for line in lines[1:] if line}


def version(branch: int) -> str:
    """The driver version the branch's list was made from (`# <soname> <version> from ...`)."""
    return (LISTS / f"{branch}.txt").read_text().split()[2]


def library(branch: int | None) -> Path:
    """build/sim/<branch>/libnvidia-ml.so.1 (`make sim`), or the one with every function."""
    path = SIM_DIR / (f"{branch}/libnvidia-ml.so.1" if branch is not None else "libnvidia-ml.so.1")
    assert path.is_file(), f"{path} missing: run `make sim`"
    return path


def at_branch(text: str, branch: int) -> str:
    """Scenario `text` playing driver `branch`, its driver version the branch's own."""
    text = re.sub(r"(?m)^version\s*=.*\n", "", text)  # only [driver] has a `version` key
    if re.search(r"(?m)^\[driver\]\s*$", text):
        return re.sub(r"(?m)^\[driver\]\s*$", f"[driver]\nbranch = {branch}", text, count=1)
    return f"{text.rstrip()}\n\n[driver]\nbranch = {branch}\n"
