"""Upgrading and rolling back a node's plugin with pip while the plugin runs.

The installed wheel of this tree (0.1.0) serves Nomad's client code (the Go
harness); `pip install -U` replaces it with a wheel of the same tree one patch
version up (0.1.1, tests/e2e/wheel.py's ensure_next_wheel) under it. Then the
running plugin goes through every path it loads late (a SetConfig switching the
stats engine to python and back, stats, probe rounds, Reserve, Shutdown). It
must keep serving as 0.1.0, and never have read a file of 0.1.1: a .pth file
in the venv gives the plugin process (and only it) an audit hook that records
the inode of every file it opens under the package, and /proc/PID/maps shows
which extension it has mapped. The next launch runs 0.1.1. Rollback
(`pip install nomad-device-nvidia==0.1.0`) is checked the same way, under a
running 0.1.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.wheel import REPO, SCENARIOS, SIM_LIB, InstalledWheel, ensure_next_wheel, ensure_wheel, install_wheel, \
    project_version

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]

HARNESS = REPO / "build" / "bin" / "harness"
SCENARIO = SCENARIOS / "8xh100-mig.toml"
TRACE_ENV = "NDE_TEST_OPEN_TRACE"


def _tracer(pkg: Path) -> str:
    """A .pth line for the venv: site runs it at every start of the venv's Python, and it acts
    only in a process with TRACE_ENV set (the plugin the harness starts), never in pip. It
    records the identity (inode, ctime) of every file under `pkg` the process opens."""
    body = (
        "def _nde_trace():\n"
        "    import os, sys\n"
        f"    log, pkg = os.environ[{TRACE_ENV!r}], {str(pkg) + os.sep!r}\n"
        "    def hook(event, args):\n"
        "        if event != 'open' or not isinstance(args[0], str) or not args[0].startswith(pkg):\n"
        "            return\n"
        "        try:\n"
        "            st = os.stat(args[0])\n"
        "            ident = '%d:%d' % (st.st_ino, st.st_ctime_ns)\n"
        "        except OSError:\n"
        "            ident = 'gone'\n"
        "        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)\n"
        "        os.write(fd, ('%d %s %s\\n' % (os.getpid(), ident, args[0])).encode())\n"
        "        os.close(fd)\n"
        "    sys.addaudithook(hook)\n"
        "_nde_trace()\n"
    )
    return f"import os; exec({body!r}) if os.environ.get({TRACE_ENV!r}) else None\n"


@pytest.fixture(scope="module")
def wheels() -> dict[str, Path]:
    old = ensure_wheel()
    new_version, new = ensure_next_wheel()
    return {project_version(): old, new_version: new}


@pytest.fixture(scope="module")
def index(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory pip finds both versions in, standing in for PyPI."""
    d = tmp_path_factory.mktemp("index")
    for whl in wheels.values():
        (d / whl.name).symlink_to(whl)
    return d


def _site_packages(inst: InstalledWheel) -> Path:
    found = list(inst.venv.glob("lib/python3.*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def _pip_install(inst: InstalledWheel, index: Path, *req: str) -> None:
    """What an operator runs, with our two wheels for the index (the dependencies are already installed)."""
    env = inst.env()
    res = subprocess.run([str(inst.venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                          "--no-index", "--find-links", str(index), *req],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, f"pip install {' '.join(req)} failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"


def _installed_version(inst: InstalledWheel) -> str:
    res = subprocess.run([str(inst.binary), "--version"], env=inst.env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().removeprefix("nomad-device-nvidia ")


def _package_files(inst: InstalledWheel) -> set[str]:
    """The identity of every file of the installed package: inode and ctime (pip frees the old
    files' inodes, and a new file may get one of those numbers again)."""
    pkg = _site_packages(inst) / "nomad_device_nvidia"
    return {f"{st.st_ino}:{st.st_ctime_ns}" for p in pkg.rglob("*") if p.is_file() for st in [p.stat()]}


class Harness:
    """`harness configs` in the background, its events read as they come."""

    def __init__(self, args: list[str], env: dict[str, str], stderr: Path) -> None:
        self._stderr = stderr
        with stderr.open("w") as err:
            self.proc = subprocess.Popen([str(HARNESS), "configs", *args], stdout=subprocess.PIPE, stderr=err,
                                         text=True, env=env)
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                with self._cond:
                    self.events.append(json.loads(line))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, event: str, **match: Any) -> dict[str, Any]:
        """The first event of that name (and those fields); a hang is caught by the harness's own --timeout."""
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e["event"] == event
                         and all(e.get(k) == v for k, v in match.items())), None)
        with self._cond:
            while (ev := found()) is None:
                if self.proc.poll() is not None and not self._reader.is_alive():
                    pytest.fail(f"harness ended without {event} {match}: {self.events[-5:]}\n{self.stderr()}")
                self._cond.wait(5)
            return ev

    def finish(self) -> int:
        """Its exit code, once it ended (it goes on to Shutdown by itself once the wait steps are met)."""
        try:
            rc = self.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=60)
        self._reader.join(timeout=60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return rc

    def stderr(self) -> str:
        return self._stderr.read_text()[-3000:]


def _config(path: Path, engine: str) -> Path:
    path.write_text(f"config {{\n  simulate = {json.dumps(str(SCENARIO))}\n"
                    f"  nvml_library = {json.dumps(str(SIM_LIB))}\n  stats_engine = {json.dumps(engine)}\n}}\n")
    return path


def _swap_under_running_plugin(inst: InstalledWheel, index: Path, tmp: Path, running: str, to: str,
                               pip_args: list[str]) -> None:
    """Start the plugin as `running`, pip-install `to` under it, drive every late path, check what it read."""
    assert _installed_version(inst) == running
    trace = tmp / "opens.log"
    upgraded, checked = tmp / "upgraded", tmp / "checked"
    native, python = _config(tmp / "native.hcl", "native"), _config(tmp / "python.hcl", "python")
    # Before the swap only what a plugin does at its start; every other path runs first after it.
    steps = ["hcl:" + str(native), "probe", "stats:2", "wait:" + str(upgraded),
             "hcl:" + str(python), "stats:3", "probe", "hcl:" + str(native), "stats:2", "reserve:2",
             "hcl:" + str(python), "stats:2", "probe", "wait:" + str(checked)]
    env = inst.env(**{TRACE_ENV: str(trace)})
    h = Harness(["--plugin", str(inst.binary), "--logs", "--timeout", "300s",
                 *(a for s in steps for a in ("--step", s))], env, tmp / "harness.stderr")
    try:
        pid = h.wait_for("launch")["pid"]
        h.wait_for("stats_step", step=3)
        old_files = _package_files(inst)
        _pip_install(inst, index, *pip_args)
        assert _installed_version(inst) == to, "pip did not put the new version in place"
        assert not old_files & _package_files(inst), "pip kept files: the check below could not tell them apart"
        upgraded.touch()
        h.wait_for("probe", step=13)

        # The extension the process runs is the one it started with, now deleted (maps names
        # a deleted file by its last path, which may be pip's stash); no other is mapped.
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        old_inodes = {int(f.split(":")[0]) for f in old_files}
        ours = {(int(ln.split()[4]), ln.endswith("(deleted)")) for ln in maps if "_native.abi3.so" in ln}
        assert ours, f"no extension of the package mapped in {pid}"
        assert all(ino in old_inodes and deleted for ino, deleted in ours), \
            f"the running plugin mapped a file of {to}: {ours}"
        # Every file of the package it opened is one of the version it started with.
        opened = [ln.split(" ", 2) for ln in trace.read_text().splitlines()]
        mine = [(ident, path) for p, ident, path in opened if int(p) == pid]
        assert any("/cli." in path for _, path in mine), f"the tracer saw none of the plugin's start: {mine[:5]}"
        late = [path for ident, path in mine if ident not in old_files]
        assert late == [], f"the {running} plugin read files of {to} after the swap"
    finally:
        upgraded.touch()
        checked.touch()
        rc = h.finish()
    by: dict[str, list[dict[str, Any]]] = {}
    for ev in h.events:
        by.setdefault(ev["event"], []).append(ev)
    assert rc == 0 and "error" not in by, (rc, by.get("error"), h.stderr())
    assert [e["error"] for e in by["set_config"]] == [None] * 4, by["set_config"]
    for p in by["probe"]:
        assert (p["info_error"], p["fingerprint_error"], p["plugin_version"]) == (None, None, running), p
        assert p["groups"], p
    for s in by["stats_step"]:
        assert s["stats_error"] is None and s["fingerprint_error"] is None, s
    (reserve,) = by["reserve"]
    assert reserve["error"] is None and reserve["reservation"]["envs"]["NVIDIA_VISIBLE_DEVICES"], reserve
    (shutdown,) = by["shutdown"]
    assert shutdown["graceful"] and shutdown["exit_code"] == 0, shutdown
    # The engines really switched after the swap, each built without falling back.
    logs = [str(e["entry"].get("@message", "")) for e in by.get("log", []) if e["from_plugin"]]
    assert sum("stats engine: python" in m for m in logs) >= 2 and sum("stats engine: native" in m for m in logs) >= 2, logs
    assert not [m for m in logs if "unavailable" in m or "Traceback" in m], logs

    # The next launch is the new version.
    res = subprocess.run([str(HARNESS), "info", "--plugin", str(inst.binary)], env=inst.env(), capture_output=True,
                         text=True, timeout=120)
    events = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    info = next((e for e in events if e["event"] == "info"), None)
    assert info is not None, res.stdout + res.stderr
    assert info["plugin_version"] == to, info


@pytest.fixture(scope="module")
def installed(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledWheel]:
    inst = install_wheel(wheels[project_version()], tmp_path_factory.mktemp("upgrade") / "venv")
    site = _site_packages(inst)
    (site / "zz_nde_test_open_trace.pth").write_text(_tracer(site / "nomad_device_nvidia"))
    yield inst


def test_pip_upgrade_under_a_running_plugin(installed: InstalledWheel, wheels: dict[str, Path], index: Path,
                                            tmp_path: Path) -> None:
    assert SIM_LIB.is_file() and HARNESS.is_file(), "run `make sim harness`"
    old, new = list(wheels)
    _swap_under_running_plugin(installed, index, tmp_path, old, new, ["-U", "nomad-device-nvidia"])


def test_pip_rollback_under_a_running_plugin(installed: InstalledWheel, wheels: dict[str, Path], index: Path,
                                             tmp_path: Path) -> None:
    old, new = list(wheels)
    if _installed_version(installed) != new:  # run alone: upgrade first
        _pip_install(installed, index, "-U", "nomad-device-nvidia")
    _swap_under_running_plugin(installed, index, tmp_path, new, old, [f"nomad-device-nvidia=={old}"])


def test_the_check_catches_a_plugin_that_imports_late(wheels: dict[str, Path], index: Path,
                                                      tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    # The control: the same wheel with the preload call taken out of the installed cli.py,
    # which is the plugin as it was before it had one, must fail the check above.
    old, new = list(wheels)
    inst = install_wheel(wheels[old], tmp_path_factory.mktemp("late") / "venv")
    site = _site_packages(inst)
    (site / "zz_nde_test_open_trace.pth").write_text(_tracer(site / "nomad_device_nvidia"))
    cli = site / "nomad_device_nvidia" / "cli.py"
    text = cli.read_text()
    assert text.count("        preload()\n") == 1, "cli.py changed: update this control"
    cli.write_text(text.replace("        preload()\n", ""))
    for pyc in (site / "nomad_device_nvidia" / "__pycache__").glob("cli.*.pyc"):
        pyc.unlink()
    with pytest.raises(AssertionError, match=f"the {old} plugin read files of {new} after the swap"):
        _swap_under_running_plugin(inst, index, tmp_path, old, new, ["-U", "nomad-device-nvidia"])


def test_version_checker_on_the_built_artifacts(wheels: dict[str, Path], tmp_path: Path) -> None:
    # What the release workflow runs on its dist/: the real wheel and sdist of each tree
    # (copied: a developer's dist/ may hold other versions too).
    old, new = list(wheels)
    for version, repo in ((old, REPO), (new, REPO / "build" / "upgrade" / new / "src")):
        dist = tmp_path / version
        dist.mkdir()
        for f in (wheels[version], wheels[version].parent / f"nomad_device_nvidia-{version}.tar.gz"):
            (dist / f.name).symlink_to(f)
        res = subprocess.run([sys.executable, str(REPO / "scripts" / "check_version.py"), "--repo", str(repo),
                              "--dist", str(dist)], capture_output=True, text=True, timeout=120)
        assert (res.returncode, res.stdout, res.stderr) == (0, f"{version}\n", ""), res.stderr
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "check_version.py"), "--dist", str(tmp_path / new)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and f"says {old}" in res.stderr, res.stderr
