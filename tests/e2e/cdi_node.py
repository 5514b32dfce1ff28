"""A GPU node as NVIDIA's container toolkit sees it, for CDI mode tests.

`stand_in_driver` lays out a driver root D: the simulated NVML library as
D/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.<version>, small real shared
libraries (built with cc, each with the SONAME NVIDIA's file has) standing in
for libcuda and friends, stand-in driver programs in D/usr/bin, and character
device nodes (mknod, NVIDIA's major numbers) in D/dev. `generate_spec` then runs
NVIDIA's own `nvidia-ctk cdi generate` on it, with the simulated library on the
library path, so the spec is the one NVIDIA's tool writes for those GPUs.

`cdicheck` runs tests/cdicheck: the CDI library (tags.cncf.io/container-device-interface)
validating a spec directory and injecting devices into an OCI spec, as runtimes do.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "build" / "bin"
NVIDIA_CTK = BIN / "nvidia-ctk"
CDICHECK = BIN / "cdicheck"
SIM_LIB = REPO / "build" / "sim" / "libnvidia-ml.so.1"
LIB_DIR = "usr/lib/x86_64-linux-gnu"
NVIDIA_MAJOR = 195
UVM_MAJOR = 510  # dynamic on a real host; any free number serves a test
# NVIDIA's user-space libraries and their SONAMEs (the file is <name>.so.<driver version>).
LIBRARIES = {
    "libcuda": "libcuda.so.1",
    "libnvidia-ptxjitcompiler": "libnvidia-ptxjitcompiler.so.1",
    "libnvidia-nvvm": "libnvidia-nvvm.so.4",
    "libnvidia-cfg": "libnvidia-cfg.so.1",
    "libnvidia-allocator": "libnvidia-allocator.so.1",
}
PROGRAMS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
            "nvidia-cuda-mps-server")


def ensure_tools() -> None:
    """nvidia-ctk (pinned) and cdicheck in build/bin, built from the Go module proxy when missing."""
    if NVIDIA_CTK.is_file() and CDICHECK.is_file():
        return
    subprocess.run(["make", "-C", str(REPO), "cdi-tools"], check=True, timeout=1800, stdin=subprocess.DEVNULL)


def stand_in_driver(root: Path, version: str, minors: list[int]) -> Path:
    """A driver root under `root` (see the module's docstring); needs root for mknod."""
    d = root / "driver"
    lib = d / LIB_DIR
    lib.mkdir(parents=True)
    (d / "usr" / "bin").mkdir(parents=True)
    (d / "dev").mkdir()
    src = root / "stand_in.c"
    for name, soname in LIBRARIES.items():
        # A real ELF file with NVIDIA's SONAME, so nvidia-ctk finds the soname links it writes.
        src.write_text(f"const char *nde_stand_in(void) {{ return \"{name} {version}\"; }}\n")
        subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(lib / f"{name}.so.{version}"),
                        str(src)], check=True, timeout=120)
    (lib / f"libnvidia-ml.so.{version}").write_bytes(SIM_LIB.read_bytes())
    for name, soname in {**LIBRARIES, "libnvidia-ml": "libnvidia-ml.so.1"}.items():
        (lib / soname).symlink_to(f"{name}.so.{version}")  # as ldconfig leaves them on a host
    for prog in PROGRAMS:
        p = d / "usr" / "bin" / prog
        p.write_text(f"#!/bin/sh\necho stand-in {prog}\n")
        p.chmod(0o755)
    nodes = {f"nvidia{m}": (NVIDIA_MAJOR, m) for m in minors}
    nodes |= {"nvidiactl": (NVIDIA_MAJOR, 255), "nvidia-uvm": (UVM_MAJOR, 0), "nvidia-uvm-tools": (UVM_MAJOR, 1)}
    for name, (major, minor) in nodes.items():
        os.mknod(d / "dev" / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    return d


def generate_spec(driver: Path, out: Path, scenario: Path, strategy: str = "uuid") -> str:
    """nvidia-ctk cdi generate on the stand-in driver; returns its log (stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVML_SIM_")}
    env["NVML_SIM_SCENARIO"] = str(scenario)
    env["LD_LIBRARY_PATH"] = str(driver / LIB_DIR)
    proc = subprocess.run(
        [str(NVIDIA_CTK), "cdi", "generate", "--driver-root", str(driver), "--dev-root", str(driver),
         "--library-search-path", str(driver / LIB_DIR), "--device-name-strategy", strategy,
         "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0 and out.is_file(), f"nvidia-ctk cdi generate failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stderr


def cdicheck(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([str(CDICHECK), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"cdicheck {' '.join(args)} exited {proc.returncode}: {proc.stdout}{proc.stderr}") from None
