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
import sys
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


_MIG = r"""
import ctypes, json, sys
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import pynvml as n
n.nvmlInit()
out = []
for i in range(n.nvmlDeviceGetCount()):
    h = n.nvmlDeviceGetHandleByIndex(i)
    entry = {"index": i, "uuid": n.nvmlDeviceGetUUID(h), "minor": n.nvmlDeviceGetMinorNumber(h), "mig": []}
    try:
        mig_on = n.nvmlDeviceGetMigMode(h)[0] == 1
    except n.NVMLError:
        mig_on = False
    for j in range(n.nvmlDeviceGetMaxMigDeviceCount(h) if mig_on else 0):
        try:
            g = n.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
        except n.NVMLError:
            continue
        entry["mig"].append({"index": j, "uuid": n.nvmlDeviceGetUUID(g), "gi": n.nvmlDeviceGetGpuInstanceId(g),
                             "ci": n.nvmlDeviceGetComputeInstanceId(g)})
    out.append(entry)
n.nvmlShutdown()
print(json.dumps(out))
"""
CAPS_MAJOR = 511  # nvidia-caps' major is dynamic too


def sim_gpus(scenario: Path) -> list[dict[str, Any]]:
    """The scenario's GPUs in NVML's index order (uuid, minor) with their MIG devices (index, uuid, gi, ci)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVML_SIM_")}
    env["NVML_SIM_SCENARIO"] = str(scenario)
    out = subprocess.run([sys.executable, "-c", _MIG, str(SIM_LIB)], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    return list(json.loads(out.stdout))


def mig_minors(driver: Path, gpus: list[dict[str, Any]]) -> str:
    """The driver's /proc/driver/nvidia-caps/mig-minors for these MIG devices, and their
    /dev/nvidia-caps/nvidia-capN nodes under the driver root (numbered from 100)."""
    caps = driver / "dev" / "nvidia-caps"
    caps.mkdir(exist_ok=True)
    lines, n = [], 100
    for g in gpus:
        for m in g["mig"]:
            for cap in (f"gpu{g['minor']}/gi{m['gi']}/access", f"gpu{g['minor']}/gi{m['gi']}/ci{m['ci']}/access"):
                lines.append(f"{cap} {n}")
                os.mknod(caps / f"nvidia-cap{n}", 0o666 | stat.S_IFCHR, os.makedev(CAPS_MAJOR, n))
                n += 1
    return "\n".join(lines) + "\n"


def generate_spec(driver: Path, out: Path, scenario: Path, strategy: str = "uuid", minors: str = "") -> str:
    """nvidia-ctk cdi generate on the stand-in driver; returns its log (stderr).

    With `minors` (MIG devices), nvidia-ctk reads them from the host's
    /proc/driver/nvidia-caps/mig-minors: it runs in a private mount namespace
    (unshare) with a tmpfs on /proc/driver holding that file, seen by nothing else.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVML_SIM_")}
    env["NVML_SIM_SCENARIO"] = str(scenario)
    env["LD_LIBRARY_PATH"] = str(driver / LIB_DIR)
    argv = [str(NVIDIA_CTK), "cdi", "generate", "--driver-root", str(driver), "--dev-root", str(driver),
            "--library-search-path", str(driver / LIB_DIR), "--device-name-strategy", strategy, "--output", str(out)]
    if minors:
        env["NDE_MIG_MINORS"] = minors
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                'mount -t tmpfs none /proc/driver; mkdir /proc/driver/nvidia-caps; '
                'printf %s "$NDE_MIG_MINORS" > /proc/driver/nvidia-caps/mig-minors; exec "$@"', "sh", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and out.is_file(), f"nvidia-ctk cdi generate failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stderr


def cdicheck(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([str(CDICHECK), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"cdicheck {' '.join(args)} exited {proc.returncode}: {proc.stdout}{proc.stderr}") from None
