"""The release wheel, built once and installed into a fresh venv outside the checkout.

Shared by tests/test_wheel.py and tests/test_agent_e2e.py: the agent end to end
runs the plugin as a user gets it, from the installed wheel.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DIST = Path(os.environ.get("NOMAD_WHEEL_DIST", REPO / "dist"))
BUILD_SCRIPT = REPO / "scripts" / "build_wheel.sh"
SIM_LIB = REPO / "build" / "sim" / "libnvidia-ml.so.1"
SCENARIOS = REPO / "scenarios"

# Everything the wheel is built from: a wheel older than any of these is stale.
_INPUTS = ("pyproject.toml", "Cargo.toml", "Cargo.lock", "README.md", "python", "src_rust/native", "src_rust/stats_core",
           "src_rust/nvml_sys")


def project_version() -> str:
    """The version, from its one home (the Cargo workspace)."""
    m = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M)
    assert m, "no version in Cargo.toml [workspace.package]"
    return m.group(1)


def _newest_input() -> float:
    newest = 0.0
    for rel in _INPUTS:
        p = REPO / rel
        paths = [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()] if p.is_dir() else []
        for q in paths:
            if "__pycache__" in q.parts or q.suffix in (".pyc", ".so"):
                continue
            newest = max(newest, q.stat().st_mtime)
    return newest


HOST_ARCH = platform.machine()


def wheel_path(arch: str = HOST_ARCH) -> Path | None:
    """The wheel for one CPU architecture (`make wheel` builds x86_64 and aarch64)."""
    # The newest by time: names do not sort by age ("cp39" sorts after "cp310").
    found = DIST.glob(f"nomad_device_nvidia-{project_version()}-*_{arch}.whl")
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def sdist_path() -> Path | None:
    p = DIST / f"nomad_device_nvidia-{project_version()}.tar.gz"
    return p if p.is_file() else None


def ensure_wheel(arch: str = HOST_ARCH) -> Path:
    """The current wheel for `arch` in dist/, built with scripts/build_wheel.sh (that
    architecture only) unless one newer than every source input is already there."""
    whl = wheel_path(arch)
    if whl is None or sdist_path() is None or whl.stat().st_mtime < _newest_input():
        env = dict(os.environ, NOMAD_WHEEL_TARGETS=f"{arch}-unknown-linux-gnu")
        res = subprocess.run(["bash", str(BUILD_SCRIPT), str(DIST)], capture_output=True, text=True, timeout=1200,
                             env=env)
        assert res.returncode == 0, f"scripts/build_wheel.sh failed ({res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        whl = wheel_path(arch)
        assert whl is not None, f"scripts/build_wheel.sh made no wheel in {DIST}"
    return whl


def next_patch(version: str) -> str:
    major, minor, patch = version.split(".")[:3]
    return f"{major}.{minor}.{int(patch) + 1}"


def _bump_tree(src: Path, old: str, new: str) -> None:
    """Set the version in a copy of the tree: Cargo.toml's one line and the workspace crates in Cargo.lock."""
    cargo = src / "Cargo.toml"
    text, n = re.subn(rf'^version = "{re.escape(old)}"$', f'version = "{new}"', cargo.read_text(), count=1,
                      flags=re.M)
    assert n == 1, f"no version = {old!r} line in {cargo}"
    cargo.write_text(text)
    lock = src / "Cargo.lock"
    crates = re.findall(r'^name = "([^"]+)"$', "".join((src / m / "Cargo.toml").read_text().split("[lib]")[0]
                                                          for m in ("src_rust/native", "src_rust/nvml_sys",
                                                                    "src_rust/nvml_sim", "src_rust/stats_core")),
                        re.M)
    text = lock.read_text()
    for crate in crates:
        text, n = re.subn(rf'(name = "{re.escape(crate)}"\nversion = )"{re.escape(old)}"', rf'\1"{new}"', text)
        assert n == 1, f"{crate} {old} not in {lock}"
    lock.write_text(text)


def ensure_next_wheel(arch: str = HOST_ARCH) -> tuple[str, Path]:
    """(version, wheel) of this tree with the patch version one higher, for the upgrade test:
    built by scripts/build_wheel.sh from a copy of the checkout (its tracked and untracked,
    not ignored files) that differs only in the version, into build/upgrade/<version>/dist,
    and built again only when the checkout changed after it (as ensure_wheel decides)."""
    version = next_patch(project_version())
    root = REPO / "build" / "upgrade" / version
    dist = root / "dist"
    whl = max(dist.glob(f"nomad_device_nvidia-{version}-*_{arch}.whl"), key=lambda p: p.stat().st_mtime, default=None)
    if whl is not None and whl.stat().st_mtime >= _newest_input():
        return version, whl
    src = root / "src"
    shutil.rmtree(src, ignore_errors=True)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    _bump_tree(src, project_version(), version)
    env = dict(os.environ, NOMAD_WHEEL_TARGETS=f"{arch}-unknown-linux-gnu", VIRTUAL_ENV=sys.prefix)
    res = subprocess.run(["bash", str(src / "scripts" / "build_wheel.sh"), str(dist)], capture_output=True, text=True,
                         timeout=1800, env=env)
    assert res.returncode == 0, f"build_wheel.sh of {version} failed ({res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
    whl = max(dist.glob(f"nomad_device_nvidia-{version}-*_{arch}.whl"), key=lambda p: p.stat().st_mtime, default=None)
    assert whl is not None, f"build_wheel.sh made no {version} wheel in {dist}"
    return version, whl


def clean_path() -> str:
    """PATH without any Rust or Go toolchain: the installed wheel must need neither."""
    keep = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not d or any(shutil.which(tool, path=d) for tool in ("cargo", "rustc", "go", "maturin")):
            continue
        keep.append(d)
    return os.pathsep.join(keep or ["/usr/bin", "/bin"])


@dataclass(frozen=True)
class InstalledWheel:
    venv: Path
    wheel: Path
    path_env: str  # PATH for running it: the venv, then no toolchains

    @property
    def binary(self) -> Path:
        return self.venv / "bin" / "nomad-device-nvidia"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env.update(PATH=f"{self.venv / 'bin'}{os.pathsep}{self.path_env}", **extra)
        return env


def base_python() -> str:
    """A Python that is not our .venv's (so the new venv sees nothing of the checkout)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def install_wheel(whl: Path, where: Path | None = None, python: str | None = None) -> InstalledWheel:
    """A fresh venv (of `python`, default: the suite's base interpreter) with the wheel
    installed by pip (deps from the registry through the machine's pip cache), with no
    toolchain on PATH while installing."""
    venv = where or Path(tempfile.mkdtemp(prefix="nde-wheel-"))
    path_env = clean_path()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = path_env
    subprocess.run([python or base_python(), "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    res = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                          "--only-binary=:all:", str(whl)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, f"pip install {whl.name} failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
    return InstalledWheel(venv=venv, wheel=whl, path_env=path_env)
