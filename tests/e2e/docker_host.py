"""A private Docker daemon for tests: Debian's docker.io, no NVIDIA runtime, no network.

`DockerDaemon` runs `dockerd` with its own data root, exec root (its own
containerd under it) and socket in a temp dir, with no bridge, no iptables and
no masquerading: containers here use `network_mode = "none"` and never reach a
network. `stop()` always stops it (SIGTERM, then SIGKILL of what is left under
its root) and unmounts what it left behind.

`busybox_image` imports an image from a tarball of a static busybox root
filesystem, taken from Debian's busybox-static package (downloaded with
`apt-get download` and unpacked with `dpkg -x` under build/cache, not installed).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from e2e.agent import REPO, end_process, kill_pids, leftover_pids

DOCKERD = Path("/usr/sbin/dockerd")
# Debian's client, not whatever else is first on PATH.
DOCKER = Path("/usr/bin/docker")
CACHE = REPO / "build" / "cache" / "busybox-static"
IMAGE = "nde-cdi-busybox:1"
APPLETS = ("sh", "ls", "cat", "env", "sleep", "stat", "readlink", "echo", "test", "[", "find", "sort", "head", "md5sum")


class DockerSetupError(AssertionError):
    """The host cannot run the daemon; the message says what is missing."""


def _run(what: str, argv: list[str], timeout: float, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd,
                          env=env)
    if proc.returncode != 0:
        raise DockerSetupError(f"{what} failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def _apt_env() -> dict[str, str]:
    return dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def ensure_docker() -> list[str]:
    """Debian's docker.io installed when dockerd or its client is missing (as root); returns what was installed."""
    if DOCKERD.is_file() and DOCKER.is_file():
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DockerSetupError("dockerd is missing; install Debian's docker.io package")
    _run("apt-get update", ["apt-get", "update", "-q"], 600, env=_apt_env())
    _run("apt-get install docker.io", ["apt-get", "install", "-y", "-q", "--no-install-recommends", "docker.io"], 900,
         env=_apt_env())
    return ["docker.io"]


def busybox() -> Path:
    """A static busybox from Debian's busybox-static package, unpacked under build/cache."""
    binary = CACHE / "root" / "bin" / "busybox"
    if binary.is_file():
        return binary
    work = CACHE / f".dl-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        try:
            _run("apt-get download busybox-static", ["apt-get", "download", "busybox-static"], 300, cwd=work,
                 env=_apt_env())
        except DockerSetupError:
            _run("apt-get update", ["apt-get", "update", "-q"], 600, env=_apt_env())
            _run("apt-get download busybox-static", ["apt-get", "download", "busybox-static"], 300, cwd=work,
                 env=_apt_env())
        debs = sorted(work.glob("busybox-static_*.deb"))
        assert debs, f"apt-get download left no busybox-static package in {work}"
        _run("dpkg -x", ["dpkg", "-x", str(debs[-1]), str(work / "root")], 120)
        shutil.rmtree(CACHE / "root", ignore_errors=True)
        (work / "root").rename(CACHE / "root")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def rootfs_tar() -> bytes:
    """A root filesystem of one static busybox, its applets as symlinks, and empty system dirs."""
    data = busybox().read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "usr", "usr/bin", "usr/lib"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return buf.getvalue()


class DockerDaemon:
    def __init__(self) -> None:
        # Short: the socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="ndedk-"))
        self.socket = self.root / "docker.sock"
        self.endpoint = f"unix://{self.socket}"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        if os.geteuid() != 0:
            raise DockerSetupError("dockerd needs root")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(DOCKERD), "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "dockerd.pid"), "-H", self.endpoint,
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DockerSetupError(f"dockerd exited ({self.proc.returncode}):\n{self.log_tail()}")
            if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise DockerSetupError(f"dockerd did not answer on {self.socket} in {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.25)

    def docker(self, *args: str, check: bool = True, stdin: bytes | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([str(DOCKER), "-H", self.endpoint, *args], input=stdin, capture_output=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise DockerSetupError(f"docker {' '.join(args)} exited {proc.returncode}: "
                                   f"{proc.stderr.decode(errors='replace')[-2000:]}")
        return proc

    def import_busybox(self) -> str:
        self.docker("import", "-", IMAGE, stdin=rootfs_tar())
        return IMAGE

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the daemon and everything it started; unmount and remove its root. Never raises."""
        try:
            end_process(self.proc, signal.SIGTERM, 30)
        finally:
            kill_pids(leftover_pids(self.root))  # containerd and shims started under our exec root
            self._unmount()
            shutil.rmtree(self.root, ignore_errors=True)

    def _unmount(self) -> None:
        prefix = str(self.root) + "/"
        try:
            with open("/proc/self/mounts") as f:
                points = [line.split()[1] for line in f]
        except OSError:
            return
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
