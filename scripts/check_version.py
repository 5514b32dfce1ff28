#!/usr/bin/env python3
"""Check that everything carrying the project's version agrees with Cargo.toml.

The one place the version is set is `[workspace.package] version` in Cargo.toml
(maturin gives it to the wheel and the sdist; the extension exposes it as
`nomad_device_nvidia._native.__version__`, which `--version` and PluginInfo report).
The release workflow runs this before it builds anything, and again on what it built:

    scripts/check_version.py                       # print the version; Cargo.lock agrees
    scripts/check_version.py --tag v0.1.0          # the tag names this version; CHANGELOG.md has its notes
    scripts/check_version.py --dist dist/          # every wheel and sdist there is this version
    scripts/check_version.py --binary .venv/bin/nomad-device-nvidia   # `--version` says this version

Exit 0 when all agree, 1 with one line per disagreement on stderr.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIST_NAME = "nomad_device_nvidia"
COMMAND = "nomad-device-nvidia"


def cargo_version(repo: Path = REPO) -> str:
    data = tomllib.loads((repo / "Cargo.toml").read_text())
    try:
        return str(data["workspace"]["package"]["version"])
    except KeyError:
        raise SystemExit(f"check_version: {repo / 'Cargo.toml'} has no [workspace.package] version") from None


def workspace_crates(repo: Path = REPO) -> list[str]:
    """Names of the workspace's crates that take the workspace version."""
    members = tomllib.loads((repo / "Cargo.toml").read_text())["workspace"]["members"]
    names = []
    for member in members:
        pkg = tomllib.loads((repo / member / "Cargo.toml").read_text())["package"]
        if pkg.get("version") == {"workspace": True}:
            names.append(str(pkg["name"]))
    return names


def lock_problems(version: str, repo: Path = REPO) -> list[str]:
    """Cargo.lock must list the workspace crates at the version (a bump without `cargo update -w` leaves it stale)."""
    lock = tomllib.loads((repo / "Cargo.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock.get("package", [])}
    out = []
    for name in workspace_crates(repo):
        if locked.get(name) != version:
            out.append(f"Cargo.lock has {name} {locked.get(name)}, Cargo.toml says {version}"
                       " (run `cargo update -w` after changing the version)")
    return out


def changelog_problems(version: str, repo: Path = REPO) -> list[str]:
    """The release's notes come from CHANGELOG.md: its section must be there, dated and not empty."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from release_notes import NotesError, notes

    try:
        notes((repo / "CHANGELOG.md").read_text(), version)
    except NotesError as exc:
        return [str(exc)]
    return []


def tag_problems(version: str, tag: str) -> list[str]:
    tag = tag.removeprefix("refs/tags/")
    if tag != f"v{version}":
        return [f"tag {tag!r} does not name version {version} from Cargo.toml (want 'v{version}')"]
    return []


def _metadata_version(raw: bytes) -> str | None:
    return email.parser.BytesHeaderParser().parsebytes(raw).get("Version")


def artifact_version(path: Path) -> tuple[str | None, str | None]:
    """(version in the file name, version in the metadata) of a wheel or an sdist."""
    name = path.name
    if name.endswith(".whl"):
        named = name.split("-")[1]
        with zipfile.ZipFile(path) as zf:
            meta = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            return named, _metadata_version(zf.read(meta[0])) if len(meta) == 1 else None
    if name.endswith(".tar.gz"):
        named = name[:-len(".tar.gz")].rpartition("-")[2]
        with tarfile.open(path) as tf:
            top = f"{name[:-len('.tar.gz')]}/PKG-INFO"
            member = tf.extractfile(top) if top in tf.getnames() else None
            return named, _metadata_version(member.read()) if member else None
    raise ValueError(f"not a wheel or an sdist: {path}")


def dist_problems(version: str, dist: Path) -> list[str]:
    found = sorted(p for p in dist.iterdir() if p.name.startswith(DIST_NAME) and p.name.endswith((".whl", ".tar.gz")))
    if not found:
        return [f"no {DIST_NAME} wheel or sdist in {dist}"]
    out = []
    for p in found:
        named, meta = artifact_version(p)
        if named != version or meta != version:
            out.append(f"{p.name}: file name says {named}, metadata says {meta}; Cargo.toml says {version}")
    return out


def binary_problems(version: str, binary: str) -> list[str]:
    res = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    said = res.stdout.strip()
    if res.returncode != 0 or said != f"{COMMAND} {version}":
        return [f"`{binary} --version` said {said!r} (exit {res.returncode}); want '{COMMAND} {version}'"]
    return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tag", help="the git tag being released (vX.Y.Z or refs/tags/vX.Y.Z)")
    p.add_argument("--dist", type=Path, help="a directory of built wheels and sdists to check")
    p.add_argument("--binary", help="an installed nomad-device-nvidia to ask for --version")
    p.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    version = cargo_version(args.repo)
    problems = lock_problems(version, args.repo)
    if args.tag is not None:
        problems += tag_problems(version, args.tag) + changelog_problems(version, args.repo)
    if args.dist is not None:
        problems += dist_problems(version, args.dist)
    if args.binary is not None:
        problems += binary_problems(version, args.binary)
    for line in problems:
        print(f"check_version: {line}", file=sys.stderr)
    if problems:
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
