"""The release wheel as a user gets it: built by scripts/build_wheel.sh, installed
by pip into a fresh venv with no Rust or Go toolchain on PATH, and driven by
Nomad's own client code (the Go harness) on the simulated 8xH100 scenario."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.wheel import (REPO, SCENARIOS, SIM_LIB, InstalledWheel, ensure_wheel, install_wheel, project_version,
                       sdist_path)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HARNESS = REPO / "build" / "bin" / "harness"
SCENARIO = SCENARIOS / "8xh100-mig.toml"


@pytest.fixture(scope="module")
def wheel() -> Path:
    return ensure_wheel()


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledWheel]:
    yield install_wheel(wheel, tmp_path_factory.mktemp("wheel") / "venv")


def _glibc_needed(so: bytes, tmp: Path) -> tuple[int, int]:
    """The newest GLIBC_x.y symbol version the extension needs (objdump's dynamic symbol table)."""
    path = tmp / "ext.so"
    path.write_bytes(so)
    out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=True).stdout
    versions = {tuple(int(x) for x in m.groups()) for m in re.finditer(r"GLIBC_(\d+)\.(\d+)", out)}
    assert versions, "the extension needs no versioned glibc symbol at all: objdump output changed?"
    return max(versions)  # type: ignore[return-value]


def test_wheel_is_abi3_manylinux_without_simulated_driver(wheel: Path, tmp_path: Path) -> None:
    version = project_version()
    name, ver, py, abi, plat = wheel.stem.split("-")
    assert (name, ver) == ("nomad_device_nvidia", version)
    assert abi == "abi3" and py.startswith("cp3"), f"not an abi3 wheel: {wheel.name}"
    # One wheel serves every supported CPython: its abi3 floor is at or below requires-python's.
    floor = re.search(r'requires-python = ">=3\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert floor, "pyproject.toml has no requires-python >=3.N"
    assert int(py[3:]) <= int(floor.group(1)), f"{wheel.name} cannot serve Python 3.{floor.group(1)}"
    tags = re.findall(r"manylinux_(\d+)_(\d+)_x86_64", plat)
    assert tags, f"no manylinux tag in {wheel.name}"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(f"nomad_device_nvidia-{version}.dist-info/METADATA").decode()
        ext = zf.read("nomad_device_nvidia/_native.abi3.so")
        entry_points = zf.read(f"nomad_device_nvidia-{version}.dist-info/entry_points.txt").decode()
    assert f"\nVersion: {version}\n" in meta
    scripts = {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in entry_points.splitlines()) if v}
    assert scripts.get("nomad-device-nvidia") == "nomad_device_nvidia.cli:main", entry_points
    # The Python stats engine reads the stats vocabulary at import.
    assert "nomad_device_nvidia/nvidia/stats/vocabulary.json" in names, "the wheel lacks the stats vocabulary"
    native = [n for n in names if re.search(r"\.so(\.|$)", n)]
    assert native == ["nomad_device_nvidia/_native.abi3.so"], f"unexpected shared objects in the wheel: {native}"
    assert not [n for n in names if re.search(r"nvml_sim|libnvidia-ml|scenarios/", n)], \
        "the simulated driver must not ship in the wheel"
    # Honest tag: every glibc symbol the extension needs exists in the oldest glibc the tag claims.
    oldest_claimed = min((int(a), int(b)) for a, b in tags)
    needed = _glibc_needed(ext, tmp_path)
    assert needed <= oldest_claimed, f"{wheel.name} claims glibc {oldest_claimed} but needs GLIBC_{needed}"


def test_sdist_builds_the_same_package(wheel: Path) -> None:
    sdist = sdist_path()
    assert sdist is not None, "no sdist next to the wheel"
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in ("pyproject.toml", "Cargo.toml", "Cargo.lock", "src_rust/native/Cargo.toml",
                   "python/nomad_device_nvidia/cli.py", "python/nomad_device_nvidia/nvidia/plugin.py",
                   # stats-core's build.rs reads the vocabulary and the wire field numbers from these
                   "python/nomad_device_nvidia/nvidia/stats/vocabulary.json",
                   "proto/nomad/device.proto", "proto/nomad/structs.proto"):
        assert needed in names, f"sdist lacks {needed}"
    assert not [n for n in names if n.startswith("src_rust/nvml_sim/")], "the sdist must not carry the simulated driver"


def test_installed_wheel_runs_without_toolchains(installed: InstalledWheel) -> None:
    env = installed.env()
    for tool in ("cargo", "rustc", "go", "maturin"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], env=env, capture_output=True, text=True).stdout
        assert not found.strip(), f"{tool} is on the PATH the installed wheel runs with: {found}"
    res = subprocess.run([str(installed.binary), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"nomad-device-nvidia {project_version()}"
    probe = ("import json, nomad_device_nvidia as p, nomad_device_nvidia._native as n; "
             "print(json.dumps([p.__file__, p.__version__, n.__version__]))")
    res = subprocess.run([str(installed.python), "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                         cwd="/")
    assert res.returncode == 0, res.stderr
    where, py_version, native_version = json.loads(res.stdout)
    assert Path(where).is_relative_to(installed.venv), f"imported from {where}, not from the installed wheel"
    assert py_version == native_version == project_version()


def _harness(args: list[str], env: dict[str, str], timeout: float = 120) -> list[dict[str, Any]]:
    assert HARNESS.is_file(), f"no Go harness at {HARNESS}: run `make harness`"
    res = subprocess.run([str(HARNESS), *args], env=env, capture_output=True, text=True, timeout=timeout)
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0, f"harness {args[0]} exited {res.returncode}:\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    return events


def test_installed_plugin_through_nomads_client_code(installed: InstalledWheel, tmp_path: Path) -> None:
    assert SIM_LIB.is_file(), f"no simulated NVML at {SIM_LIB}: run `make sim`"
    assert SCENARIO.is_file(), f"no scenario {SCENARIO}"
    config = tmp_path / "plugin.hcl"
    config.write_text(f"config {{\n  simulate = {json.dumps(str(SCENARIO))}\n"
                      f"  nvml_library = {json.dumps(str(SIM_LIB))}\n}}\n")
    events = _harness(["session", "--plugin", str(installed.binary), "--config", str(config),
                       "--fingerprints", "1", "--stats", "2", "--interval", "200ms", "--reserve-first", "2"],
                      installed.env())
    by: dict[object, list[dict[str, Any]]] = {}
    for ev in events:
        by.setdefault(ev["event"], []).append(ev)
    assert "error" not in by, by["error"]
    info = by["launch"][0]
    assert info.get("error") is None, info
    fp = by["fingerprint"][0]
    assert fp.get("error") is None, fp
    groups = fp["groups"]
    assert groups, "the installed plugin fingerprinted no devices on the simulated 8xH100 node"
    ids = set()
    for g in groups:
        assert (g["vendor"], g["type"]) == ("nvidia", "gpu"), g
        assert g["validate_error"] is None, g
        assert "H100" in g["name"], g["name"]
        for d in g["devices"]:
            assert d["healthy"], d
            ids.add(d["id"])
    stats = by["stats"][-1]
    assert stats.get("error") is None, stats
    assert {i for g in stats["groups"] for i in g["ids"]} == ids
    reserve = by["reserve"][0]
    assert reserve["error"] is None, reserve
    first_two = [d["id"] for d in groups[0]["devices"][:2]]
    visible = reserve["reservation"]["envs"]["NVIDIA_VISIBLE_DEVICES"].split(",")
    assert sorted(visible) == sorted(first_two)


def test_installed_bench_subcommand(installed: InstalledWheel) -> None:
    # Shipped in the wheel: operators benchmark stats collection on their own nodes.
    env = installed.env(NOMAD_DEVICE_NVIDIA_SIM_LIB=str(SIM_LIB))
    res = subprocess.run([str(installed.binary), "bench", "--simulate", str(SCENARIO), "--duration", "200ms", "--json"],
                         env=env, capture_output=True, text=True, timeout=120, cwd="/", stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["simulated"] and report["devices"] == 14
    assert [e["engine"] for e in report["engines"]] == ["native", "python"]
    assert all(e["ticks"] > 0 for e in report["engines"])


# The oldest and newest CPython the package supports besides the one the suite runs on:
# the same abi3 wheel must install and serve on each.
OTHER_PYTHONS = ("3.10", "3.13")


def _find_python(version: str) -> str | None:
    """An interpreter of that version: pyenv's install (its shims refuse versions not
    selected), else one on PATH; only one that runs counts."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(root.glob(f"versions/{version}.*/bin/python{version}"), reverse=True)
    candidates += [Path(p) for p in [shutil.which(f"python{version}")] if p]
    for c in candidates:
        if subprocess.run([str(c), "-c", "pass"], capture_output=True, timeout=30).returncode == 0:
            return str(c)
    return None


@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_same_wheel_serves_other_cpythons(version: str, wheel: Path, tmp_path: Path) -> None:
    python = _find_python(version)
    assert python, f"no working python{version} (this machine kind has pyenv's 3.10 to 3.13)"
    inst = install_wheel(wheel, tmp_path / "venv", python=python)
    env = inst.env()
    probe = "import sys, nomad_device_nvidia._native as n; print('%d.%d' % sys.version_info[:2], n.__version__)"
    res = subprocess.run([str(inst.python), "-c", probe], env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [version, project_version()], res.stdout
    events = _harness(["info", "--plugin", str(inst.binary)], env)
    info = next(e for e in events if e["event"] == "info")
    assert info.get("error") is None, info
    assert (info["name"], info["plugin_version"], info["api_error"]) == ("nvidia-gpu", project_version(), None), info
