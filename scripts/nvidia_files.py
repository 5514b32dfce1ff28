#!/usr/bin/env python3
"""NVIDIA's own NVML files, fetched into the project's cache for the tests.

What it fetches (never installs anything system-wide):
- `libnvidia-ml.so.1` of every driver branch from 535 up that Debian's non-free
  archive carries (package `libnvidia-ml1`, or a `libnvidia-tesla-<branch>-ml1`
  for a branch `libnvidia-ml1` lacks), with `apt-get download` + `dpkg -x`, through
  a sources list, apt state and apt cache of its own;
- `nvml.h` from PyPI's `nvidia-nvml-dev` wheel (`pip download --no-deps`).

Everything lands in ~/.cache/nomad-device-nvidia/nvidia/ (or $NOMAD_DEVICE_NVIDIA_NVIDIA_DIR),
described by manifest.json there. A second run with the manifest complete does nothing;
concurrent runs wait on a lock.

Usage:
  python scripts/nvidia_files.py [fetch]   fetch what is missing, print the manifest path
  python scripts/nvidia_files.py symbols   also rewrite src_rust/nvml_sim/branches/<branch>.txt
  python scripts/nvidia_files.py --refresh fetch   throw the cache away and fetch again
Exit 0 done, 1 a fetch failed (the message says which step and why).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BRANCHES_DIR = ROOT / "src_rust" / "nvml_sim" / "branches"

ARCHIVE = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Searched in this order: among equal versions of a package the first suite wins, so a
# stable suite is preferred to a moving one.
SUITES = ("bookworm", "bookworm-backports", "trixie", "sid", "experimental")
MAIN_PACKAGE = "libnvidia-ml1"
TESLA_PACKAGE = re.compile(r"^libnvidia-tesla-(\d+)-ml1$")
OLDEST_BRANCH = 535  # the oldest branch the plugin supports
# Pinned, so the ABI test checks against one known header (13.5: 477 GPM metric slots).
NVML_DEV = "nvidia-nvml-dev==13.5.37"
MANIFEST_VERSION = 1


class FetchError(RuntimeError):
    """A step of the fetch failed; the message names it."""


@dataclass(frozen=True)
class Library:
    branch: int
    version: str  # the driver version, from the library's file name (535.261.03)
    package: str
    debian_version: str
    suite: str
    soname: str
    path: str  # the extracted libnvidia-ml.so.<version>, absolute


@dataclass(frozen=True)
class Manifest:
    libraries: list[Library]
    header: str  # nvml.h, absolute
    header_package: str

    def library(self, branch: int) -> Library:
        for lib in self.libraries:
            if lib.branch == branch:
                return lib
        raise KeyError(f"no NVIDIA library of branch {branch} fetched (have {[x.branch for x in self.libraries]})")


def cache_dir() -> Path:
    env = os.environ.get("NOMAD_DEVICE_NVIDIA_NVIDIA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nomad-device-nvidia" / "nvidia"


def _run(step: str, argv: Sequence[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise FetchError(f"{step}: {argv[0]} not found ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"{step}: {' '.join(argv)} ran past 600 s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise FetchError(f"{step}: {' '.join(argv)} exited {proc.returncode}:\n  " + "\n  ".join(tail))
    return proc.stdout


class Apt:
    """apt-get/apt-cache on a private sources list, lists dir and cache: the host's apt state is never touched."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.sources = root / "sources.list"
        self.sources.write_text(
            "".join(f"deb [signed-by={KEYRING}] {ARCHIVE} {suite} non-free\n" for suite in SUITES)
        )
        self.status = root / "status"  # empty: nothing counts as installed
        self.status.touch()

    def options(self) -> list[str]:
        opts = {
            "Dir::Etc::SourceList": str(self.sources),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::State::Lists": str(self.root / "lists"),
            "Dir::State::status": str(self.status),
            "Dir::Cache": str(self.root / "cache"),
            "Debug::NoLocking": "1",
            "Acquire::Languages": "none",
            # Root's downloads would otherwise run as _apt, which cannot write into $HOME's cache.
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody"),
        }
        out: list[str] = []
        for key, value in opts.items():
            out += ["-o", f"{key}={value}"]
        return out

    def update(self) -> None:
        if not Path(KEYRING).exists() and os.geteuid() == 0:
            # The one host package this needs (Ubuntu, say, lacks it); as tests/e2e/aarch64.py installs its tools.
            _run("apt-get install debian-archive-keyring", ["apt-get", "install", "-y", "-q", "debian-archive-keyring"])
        if not Path(KEYRING).exists():
            raise FetchError(f"apt: Debian's archive keyring {KEYRING} is missing (install debian-archive-keyring as root)")
        _run("apt-get update (private sources: Debian non-free)", ["apt-get", *self.options(), "-q", "update", "--error-on=any"])

    def packages(self) -> list[str]:
        out = _run("apt-cache search", ["apt-cache", *self.options(), "search", "--names-only", r"^libnvidia-.*ml1$"])
        return sorted({line.split(" - ", 1)[0].strip() for line in out.splitlines() if line.strip()})

    def madison(self, package: str) -> list[tuple[str, str]]:
        """(debian version, suite) of every version the private sources offer."""
        out = _run(f"apt-cache madison {package}", ["apt-cache", *self.options(), "madison", package])
        found: list[tuple[str, str]] = []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) < 3 or not parts[2].endswith("Packages"):
                continue
            suite = parts[2].split()[1].split("/")[0]
            found.append((parts[1], suite))
        return found

    def download(self, package: str, version: str, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        _run(f"apt-get download {package}={version}", ["apt-get", *self.options(), "-q", "download", f"{package}={version}"], cwd=into)
        debs = sorted(into.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise FetchError(f"apt-get download {package}={version}: expected one .deb in {into}, found {debs}")
        return debs[0]


def _upstream(debian_version: str) -> tuple[int, ...]:
    """535.261.03-1~deb12u1 -> (535, 261, 3); the epoch and Debian revision dropped."""
    upstream = debian_version.split(":", 1)[-1].rsplit("-", 1)[0]
    return tuple(int(x) for x in re.findall(r"\d+", upstream)[:3])


def choose(offers: dict[str, list[tuple[str, str]]]) -> dict[int, tuple[str, str, str]]:
    """One (package, debian version, suite) per branch >= OLDEST_BRANCH.

    `libnvidia-ml1` first (the package most machines have); a Tesla package only for a
    branch it lacks. Within a package the highest upstream version, the first suite in
    SUITES on a tie.
    """
    chosen: dict[int, tuple[str, str, str]] = {}
    tesla = sorted(p for p in offers if TESLA_PACKAGE.match(p))
    for package in [MAIN_PACKAGE, *tesla]:
        per_branch: dict[int, tuple[tuple[int, ...], int, str, str]] = {}
        for version, suite in offers.get(package, []):
            if suite not in SUITES:
                continue
            up = _upstream(version)
            branch = up[0]
            if branch < OLDEST_BRANCH or branch in chosen:
                continue
            key = (up, -SUITES.index(suite), version, suite)
            if branch not in per_branch or key[:2] > per_branch[branch][:2]:
                per_branch[branch] = key
        for branch, (_, _, version, suite) in per_branch.items():
            chosen[branch] = (package, version, suite)
    return dict(sorted(chosen.items()))


def _extract_library(deb: Path, into: Path) -> tuple[Path, str, str]:
    """dpkg -x the package; returns (libnvidia-ml.so.<version>, driver version, soname)."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    _run(f"dpkg -x {deb.name}", ["dpkg", "-x", str(deb), str(into)])
    libs = sorted(p for p in into.rglob("libnvidia-ml.so.*") if re.fullmatch(r"libnvidia-ml\.so\.\d+\.\d+(\.\d+)?", p.name) and not p.is_symlink())
    if len(libs) != 1:
        raise FetchError(f"dpkg -x {deb.name}: expected one libnvidia-ml.so.<version>, found {libs}")
    lib = libs[0]
    version = lib.name[len("libnvidia-ml.so.") :]
    dyn = _run(f"readelf -d {lib.name}", ["readelf", "-d", str(lib)])
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", dyn)
    if not m:
        raise FetchError(f"readelf -d {lib}: no SONAME")
    return lib, version, m.group(1)


def _fetch_header(cache: Path) -> Path:
    wheels = cache / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    _run(
        f"pip download {NVML_DEV}",
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:", "-d", str(wheels), NVML_DEV],
    )
    whl = sorted(wheels.glob("*.whl"))
    if len(whl) != 1:
        raise FetchError(f"pip download {NVML_DEV}: expected one wheel in {wheels}, found {whl}")
    with zipfile.ZipFile(whl[0]) as zf:
        names = [n for n in zf.namelist() if n.endswith("/nvml.h")]
        if len(names) != 1:
            raise FetchError(f"{whl[0].name}: expected one nvml.h, found {names}")
        header = cache / "include" / "nvml.h"
        header.parent.mkdir(parents=True, exist_ok=True)
        tmp = header.with_suffix(".h.tmp")
        tmp.write_bytes(zf.read(names[0]))
        tmp.replace(header)
    return header


def _manifest_path(cache: Path) -> Path:
    return cache / "manifest.json"


def load_manifest(cache: Path | None = None) -> Manifest | None:
    """The manifest, when it exists and every file it names is still there."""
    path = _manifest_path(cache or cache_dir())
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if raw.get("version") != MANIFEST_VERSION:
        return None
    manifest = Manifest(
        libraries=[Library(**lib) for lib in raw["libraries"]],
        header=raw["header"],
        header_package=raw["header_package"],
    )
    files = [manifest.header, *(lib.path for lib in manifest.libraries)]
    if not manifest.libraries or not all(Path(f).is_file() for f in files):
        return None
    return manifest


def fetch(refresh: bool = False, log: bool = True) -> Manifest:
    """Everything in the cache (fetched if missing); safe to call from several processes at once."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if refresh:
            for child in cache.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        manifest = load_manifest(cache)
        if manifest is not None:
            return manifest

        def say(msg: str) -> None:
            if log:
                print(f"nvidia_files: {msg}", file=sys.stderr, flush=True)

        say(f"fetching NVIDIA's NVML files into {cache}")
        apt = Apt(cache / "apt")
        apt.update()
        offers = {pkg: apt.madison(pkg) for pkg in apt.packages() if pkg == MAIN_PACKAGE or TESLA_PACKAGE.match(pkg)}
        chosen = choose(offers)
        if not chosen:
            raise FetchError(f"apt: Debian non-free ({', '.join(SUITES)}) offers no libnvidia-ml1 of branch {OLDEST_BRANCH} or newer")
        libraries: list[Library] = []
        for branch, (package, version, suite) in chosen.items():
            say(f"branch {branch}: {package} {version} ({suite})")
            debs = cache / "debs" / str(branch)
            if debs.exists():
                shutil.rmtree(debs)
            deb = apt.download(package, version, debs)
            lib, driver, soname = _extract_library(deb, cache / "lib" / str(branch))
            libraries.append(Library(branch, driver, package, version, suite, soname, str(lib)))
        say(f"nvml.h from PyPI {NVML_DEV}")
        header = _fetch_header(cache)
        manifest = Manifest(libraries=libraries, header=str(header), header_package=NVML_DEV)
        tmp = _manifest_path(cache).with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": MANIFEST_VERSION, **asdict(manifest)}, indent=2) + "\n")
        tmp.replace(_manifest_path(cache))
        return manifest


def exported_nvml_symbols(library: str | Path) -> list[str]:
    """Every defined dynamic symbol starting with `nvml`, sorted as LC_ALL=C sorts (read with nm, never loaded)."""
    out = _run(f"nm -D {library}", ["nm", "-D", "--defined-only", str(library)])
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if not parts:
            continue
        name = parts[-1].split("@", 1)[0]
        if name.startswith("nvml"):
            names.add(name)
    return sorted(names, key=lambda s: s.encode())


def symbol_list_text(lib: Library) -> str:
    head = (
        f"# {lib.soname} {lib.version} from {lib.package} {lib.debian_version} (Debian {lib.suite} non-free); "
        "regenerate with: python scripts/nvidia_files.py symbols\n"
    )
    return head + "".join(f"{name}\n" for name in exported_nvml_symbols(lib.path))


def write_symbol_lists(manifest: Manifest, into: Path = BRANCHES_DIR) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    written = []
    for lib in manifest.libraries:
        path = into / f"{lib.branch}.txt"
        path.write_text(symbol_list_text(lib))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="fetch", choices=("fetch", "symbols"))
    parser.add_argument("--refresh", action="store_true", help="throw the cache away and fetch again")
    args = parser.parse_args(argv)
    try:
        manifest = fetch(refresh=args.refresh)
    except FetchError as exc:
        print(f"nvidia_files: cannot fetch NVIDIA's files: {exc}", file=sys.stderr)
        return 1
    if args.command == "symbols":
        for path in write_symbol_lists(manifest):
            print(path.relative_to(ROOT))
    else:
        print(_manifest_path(cache_dir()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
