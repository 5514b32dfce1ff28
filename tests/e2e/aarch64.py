"""An arm64 Debian node on this x86_64 machine, for running the aarch64 wheel for real.

Nothing here inspects the wheel instead of running it: an arm64 Debian root
filesystem (made by debootstrap from Debian's mirror) runs under qemu-user
(`qemu-aarch64-static -L <rootfs>`, no binfmt_misc needed), pip installs the
aarch64 wheel and its dependencies from PyPI there, and the simulated NVML
driver and the Go harness are built for aarch64 too, so the plugin, its
native extension, grpcio and Nomad's client code all execute as arm64 code.

Without binfmt the host kernel cannot exec an arm64 binary, so anything arm64
that starts another arm64 program goes through a small x86 shell launcher
that execs qemu (`plugin_launcher`): the arm64 harness starts the plugin that
way, as Nomad's agent would start it from plugin_dir.

Cached where the machine keeps caches (NOMAD_AARCH64_CACHE, default
~/.cache/nomad-device-nvidia/aarch64): the root filesystem, and a venv per
set of dependencies; each run reinstalls only the wheel. The cross builds use
the shared cargo target dir and Go build cache. Heavy steps run under
`nice -n 19` so that other work on the machine is not starved.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from e2e.wheel import REPO, SCENARIOS, ensure_wheel

SUITE = "bookworm"  # Debian 12: Python 3.11, glibc 2.36
MIRROR = os.environ.get("NOMAD_AARCH64_MIRROR", "http://deb.debian.org/debian")
# What the plugin needs from the OS: Python, and pip as a wheel (run straight
# from the zip: pip's own installer would start a second, arm64, process).
PACKAGES = ("python3", "python3-pip-whl")
HOST_TOOLS = {  # tool on PATH, or an absolute file -> Debian package that provides it
    "debootstrap": "debootstrap",
    "qemu-aarch64-static": "qemu-user-static",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    # The cross C library: --no-install-recommends leaves it out, and without it the
    # arm64 simulated driver fails to link (cannot find crti.o).
    "/usr/aarch64-linux-gnu/lib/crti.o": "libc6-dev-arm64-cross",
    "dpkg-deb": "dpkg",
    "readelf": "binutils",
}
TARGET = "aarch64-unknown-linux-gnu"
CACHE = Path(os.environ.get("NOMAD_AARCH64_CACHE", Path.home() / ".cache" / "nomad-device-nvidia" / "aarch64"))
BUILD = REPO / "build" / "aarch64"
NICE = ["nice", "-n", "19"]


class Aarch64SetupError(AssertionError):
    """A step of building the arm64 node failed; the message names the step and shows its output."""


def _run(step: str, cmd: Sequence[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise Aarch64SetupError(f"{step}: `{' '.join(map(str, cmd))}` exited {res.returncode}:\n"
                                f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res  # type: ignore[no-any-return]


def _present(tool: str) -> bool:
    return Path(tool).is_file() if tool.startswith("/") else shutil.which(tool) is not None


def ensure_host_tools() -> list[str]:
    """The Debian tools the node needs, installed with apt-get when missing (as root); returns what was installed."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not _present(tool)})
    if not missing:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Aarch64SetupError(f"missing host tools; install the Debian packages {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run("apt-get update", ["apt-get", "update", "-q"], 600, env=env)
    _run("apt-get install", ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], 900, env=env)
    return missing


@contextmanager
def cache_lock() -> Iterator[None]:
    """One run at a time builds or uses the cached node."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_rootfs() -> Path:
    """The arm64 Debian root filesystem, built once.

    debootstrap's first stage (`--foreign`) downloads and unpacks the base system
    on the host; its second stage would run arm64 maintainer scripts inside a
    chroot, which needs binfmt. Instead every downloaded package is unpacked with
    dpkg-deb: enough for Python and pip, which need files, not configured services.
    """
    key = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    root = CACHE / f"rootfs-{SUITE}-arm64-{key}"
    if (root / ".nde-complete").is_file():
        return root
    tmp = CACHE / f".rootfs-build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _run("debootstrap (first stage)", [*NICE, "debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
                                           f"--include={','.join(PACKAGES)}", SUITE, str(tmp), MIRROR], 1200)
        debs = sorted((tmp / "var" / "cache" / "apt" / "archives").glob("*.deb"))
        if not debs:
            raise Aarch64SetupError(f"debootstrap downloaded no packages into {tmp}")
        for deb in debs:
            _run(f"unpack {deb.name}", [*NICE, "dpkg-deb", "-x", str(deb), str(tmp)], 300)
            deb.unlink()
        python = tmp / "usr" / "bin" / "python3"
        if not python.exists():
            raise Aarch64SetupError(f"no {python} after unpacking {len(debs)} packages")
        (tmp / ".nde-complete").write_text(json.dumps({"suite": SUITE, "mirror": MIRROR, "packages": PACKAGES}))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def build_sim_lib() -> Path:
    """The simulated NVML driver for aarch64 (Debian's cross gcc links it), as build/aarch64/libnvidia-ml.so.1."""
    env = dict(os.environ, CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="aarch64-linux-gnu-gcc")
    # The Makefile's per-checkout target dir, when run outside make.
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:12]
    target_dir = Path(env.setdefault("CARGO_TARGET_DIR", str(Path.home() / ".cache" / "nomad-device-nvidia"
                                                            / "cargo-targets" / checkout)))
    if subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True, text=True,
                      timeout=60).stdout.split().count(TARGET) == 0:
        _run("rustup target add", ["rustup", "target", "add", TARGET], 600)
    _run("cargo build nvml-sim for aarch64", [*NICE, "cargo", "build", "--release", "-q", "-p", "nvml-sim",
                                               "--target", TARGET], 1800, env=env, cwd=REPO)
    BUILD.mkdir(parents=True, exist_ok=True)
    dest = BUILD / "libnvidia-ml.so.1"
    # Replaced by rename: a process that has the old one mapped keeps it.
    shutil.copyfile(target_dir / TARGET / "release" / "libnvml_sim.so", BUILD / ".libnvidia-ml.so.1.new")
    (BUILD / ".libnvidia-ml.so.1.new").rename(dest)
    return dest


def build_harness() -> Path:
    """The Go harness (Nomad's client code) for linux/arm64, static (no cgo), as build/aarch64/harness."""
    env = dict(os.environ, GOOS="linux", GOARCH="arm64", CGO_ENABLED="0", GOFLAGS="-mod=readonly")
    BUILD.mkdir(parents=True, exist_ok=True)
    _run("go build harness for arm64", [*NICE, "go", "build", "-o", str(BUILD / "harness"), "."], 1800,
         env=env, cwd=REPO / "tests" / "harness")
    return BUILD / "harness"


def _requires(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return sorted(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")
                  and "extra ==" not in line)


@dataclass
class Node:
    """The arm64 node: run arm64 programs on it with `run`."""

    rootfs: Path
    venv: Path
    wheel: Path
    sim_lib: Path
    harness: Path
    timings: dict[str, float] = field(default_factory=dict)
    installed_tools: list[str] = field(default_factory=list)

    @property
    def qemu(self) -> list[str]:
        return ["qemu-aarch64-static", "-L", str(self.rootfs)]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def plugin_launcher(self) -> Path:
        return BUILD / "nomad-device-nvidia"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env.update(PIP_CACHE_DIR=str(CACHE / "pip"), PYTHONDONTWRITEBYTECODE="1", **extra)
        return env

    def run(self, args: Sequence[str], timeout: float = 300, nice: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """An arm64 program (a path on the host or in the root filesystem) under qemu."""
        cmd = [*(NICE if nice else []), *self.qemu, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or self.env(),
                              stdin=subprocess.DEVNULL)

    def pip(self, *args: str, timeout: float = 1200) -> None:
        pip_whl = next((self.rootfs / "usr" / "share" / "python-wheels").glob("pip-*.whl"))
        res = self.run([str(self.python), f"{pip_whl}/pip", *args, "--disable-pip-version-check", "-q"],
                       timeout=timeout, nice=True)
        if res.returncode != 0:
            raise Aarch64SetupError(f"pip {' '.join(args)} on arm64 exited {res.returncode}:\n"
                                    f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def _ensure_venv(node: Node) -> None:
    """A venv in the arm64 Python with the wheel's dependencies from PyPI (kept per set of
    dependencies), then the wheel itself reinstalled from the file."""
    stamp = node.venv / ".nde-deps-complete"
    if not stamp.is_file():
        for old in CACHE.glob("venv-*"):  # other dependency sets: not used again
            shutil.rmtree(old, ignore_errors=True)
        res = node.run([str(node.rootfs / "usr" / "bin" / "python3"), "-m", "venv", "--without-pip", str(node.venv)],
                       timeout=300)
        if res.returncode != 0:
            raise Aarch64SetupError(f"venv on arm64 failed:\n{res.stderr[-3000:]}")
        started = time.monotonic()
        node.pip("install", "--only-binary=:all:", str(node.wheel))
        node.timings["pip install wheel and deps from PyPI"] = time.monotonic() - started
        stamp.write_text("\n".join(_requires(node.wheel)) + "\n")
    else:
        started = time.monotonic()
        node.pip("install", "--no-deps", "--no-index", "--force-reinstall", str(node.wheel))
        node.timings["pip reinstall wheel (deps cached)"] = time.monotonic() - started
    launcher = node.plugin_launcher
    # An x86 shell script: the arm64 harness execs it (the host kernel runs /bin/sh),
    # and it execs the plugin's arm64 Python under qemu.
    launcher.write_text("#!/bin/sh\n"
                        f"exec qemu-aarch64-static -L {json.dumps(str(node.rootfs))} {json.dumps(str(node.python))} "
                        f"{json.dumps(str(node.venv / 'bin' / 'nomad-device-nvidia'))} \"$@\"\n")
    launcher.chmod(0o755)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    timings[name] = time.monotonic() - started


def prepare() -> Node:
    """Everything the arm64 run needs, each step timed (Node.timings, seconds)."""
    t: dict[str, float] = {}
    with _timed(t, "host tools (apt-get only when missing)"):
        installed = ensure_host_tools()
    with _timed(t, "arm64 Debian root filesystem (debootstrap; cached)"):
        rootfs = ensure_rootfs()
    with _timed(t, "aarch64 wheel (scripts/build_wheel.sh, zig; when stale)"):
        whl = ensure_wheel("aarch64")
    with _timed(t, "simulated NVML for aarch64 (cargo, cross gcc)"):
        sim = build_sim_lib()
    with _timed(t, "Go harness for arm64 (GOARCH=arm64)"):
        harness = build_harness()
    key = hashlib.sha256("\n".join([rootfs.name, *_requires(whl)]).encode()).hexdigest()[:12]
    node = Node(rootfs=rootfs, venv=CACHE / f"venv-{key}", wheel=whl, sim_lib=sim, harness=harness, timings=t,
                installed_tools=installed)
    with _timed(t, "venv with the wheel on arm64 (pip under qemu)"):
        _ensure_venv(node)
    return node


def scenario(name: str = "gh200") -> Path:
    return SCENARIOS / f"{name}.toml"
