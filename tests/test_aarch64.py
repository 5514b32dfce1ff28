"""The aarch64 wheel run for real on an arm64 Debian node under qemu-user (tests/e2e/aarch64.py).

pip installs the aarch64 wheel and its dependencies (aarch64 wheels of grpcio
and the rest, from PyPI) into an arm64 Debian 12; the arm64 build of the Go
harness (Nomad's client code) launches the plugin there, handshakes, takes the
fingerprint of the simulated GH200 node (an arm64 build of the simulated
driver) and its Stats, reserves the GPU; then `probe` runs there. `make
test-aarch64` runs this file alone; the timings of each step are written to
build/aarch64/timings.json.
"""

from __future__ import annotations

import json
import re
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.aarch64 import BUILD, Node, cache_lock, prepare, scenario
from e2e.wheel import project_version

# The first test also waits for the node to be built: cold, about 6 minutes on 2 cores
# (build/aarch64/timings.json has each step), more while other builds run.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

EM_AARCH64 = 183  # ELF e_machine of arm64


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with cache_lock():
        n = prepare()
        yield n
        BUILD.mkdir(parents=True, exist_ok=True)
        (BUILD / "timings.json").write_text(json.dumps(
            {"timings_s": {k: round(v, 1) for k, v in n.timings.items()}, "installed_tools": n.installed_tools},
            indent=2) + "\n")


def _e_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(data[18:20], "little")


def test_aarch64_wheel_is_abi3_manylinux2014_arm64_code(node: Node, tmp_path: Path) -> None:
    name, ver, py, abi, plat = node.wheel.stem.split("-")
    assert (name, ver, py, abi) == ("nomad_device_nvidia", project_version(), "cp310", "abi3"), node.wheel.name
    assert "manylinux_2_17_aarch64" in plat.split("."), node.wheel.name
    with zipfile.ZipFile(node.wheel) as zf:
        ext = zf.read("nomad_device_nvidia/_native.abi3.so")
    assert _e_machine(ext) == EM_AARCH64, "the extension in the aarch64 wheel is not arm64 code"
    so = tmp_path / "ext.so"
    so.write_bytes(ext)
    # readelf reads any architecture's ELF: the glibc versions the extension needs.
    out = subprocess.run(["readelf", "-V", "--wide", str(so)], capture_output=True, text=True, check=True).stdout
    needed = {tuple(int(x) for x in m.groups()) for m in re.finditer(r"GLIBC_(\d+)\.(\d+)", out)}
    assert needed and max(needed) <= (2, 17), f"manylinux2014 claims glibc 2.17, the extension needs {max(needed)}"


def test_installed_wheel_imports_as_arm64(node: Node) -> None:
    probe = ("import json, platform, sys, nomad_device_nvidia as p, nomad_device_nvidia._native as n; "
             "print(json.dumps([platform.machine(), sys.version_info[:2], p.__file__, n.__file__, n.__version__]))")
    res = node.run([str(node.python), "-c", probe], timeout=120)
    assert res.returncode == 0, res.stderr
    machine, version, pkg, ext, native_version = json.loads(res.stdout)
    assert machine == "aarch64"
    assert tuple(version) >= (3, 10)
    assert Path(pkg).is_relative_to(node.venv) and Path(ext).is_relative_to(node.venv), (pkg, ext)
    assert _e_machine(Path(ext).read_bytes()) == EM_AARCH64
    assert native_version == project_version()
    grpc = next((node.venv / "lib").glob("python3.*/site-packages/grpc/_cython/cygrpc*.so"))
    assert _e_machine(grpc.read_bytes()) == EM_AARCH64, f"{grpc.name} from PyPI is not arm64 code"


def _harness(node: Node, args: list[str], timeout: float = 240) -> dict[str, list[dict[str, Any]]]:
    res = node.run([str(node.harness), *args, "--timeout", "120s"], timeout=timeout)
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0, f"harness {args[0]} exited {res.returncode}:\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    by: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by.setdefault(ev["event"], []).append(ev)
    assert "error" not in by, by["error"]
    return by


def _config(node: Node, tmp_path: Path) -> Path:
    config = tmp_path / "plugin.hcl"
    config.write_text(f"config {{\n  simulate = {json.dumps(str(scenario('gh200')))}\n"
                      f"  nvml_library = {json.dumps(str(node.sim_lib))}\n  stats_engine = \"native\"\n}}\n")
    return config


def test_handshake_through_nomads_client_code(node: Node) -> None:
    assert _e_machine(node.harness.read_bytes()) == EM_AARCH64
    by = _harness(node, ["info", "--plugin", str(node.plugin_launcher)])
    launch, info = by["launch"][0], by["info"][0]
    assert launch.get("error") is None and launch["protocol"] == "grpc", launch
    assert (info["name"], info["plugin_version"], info["api_error"]) == ("nvidia-gpu", project_version(), None), info


def test_gh200_fingerprint_stats_reserve_on_arm64(node: Node, tmp_path: Path) -> None:
    by = _harness(node, ["session", "--plugin", str(node.plugin_launcher), "--config", str(_config(node, tmp_path)),
                         "--fingerprints", "1", "--stats", "2", "--interval", "500ms", "--reserve-first", "1",
                         "--logs"])
    fp = by["fingerprint"][0]
    assert fp.get("error") is None, fp
    [group] = fp["groups"]
    assert (group["vendor"], group["type"], group["validate_error"]) == ("nvidia", "gpu", None), group
    assert "GH200" in group["name"], group["name"]
    attrs = group["attributes"]
    assert attrs["compute_capability"]["value"] == "9.0" and attrs["architecture"]["value"] == "hopper", attrs
    assert "bar1" not in attrs, "GH200 has no BAR1 aperture (the scenario answers NOT_SUPPORTED)"
    [dev] = group["devices"]
    assert dev["healthy"], dev
    stats = by["stats"][-1]
    assert stats.get("error") is None, stats
    [sgroup] = stats["groups"]
    assert sgroup["ids"] == [dev["id"]]
    inst = sgroup["instances"][dev["id"]]["stats"]["Attributes"]
    assert {"Memory state", "GPU utilization", "Power usage", "Temperature"} <= set(inst), sorted(inst)
    reserve = by["reserve"][0]
    assert reserve["error"] is None and reserve["reservation"]["envs"]["NVIDIA_VISIBLE_DEVICES"] == dev["id"], reserve
    messages = [str(e["entry"].get("@message", "")) for e in by.get("log", []) if e.get("from_plugin")]
    assert any("stats engine: native" in m for m in messages), \
        f"the native (Rust, arm64) stats engine did not serve the stats; plugin log: {messages}"
    shutdown = by["shutdown"][0]
    assert shutdown["exited"] and shutdown["graceful"], shutdown


def test_probe_on_arm64(node: Node) -> None:
    res = node.run([str(node.python), str(node.venv / "bin" / "nomad-device-nvidia"), "probe", "--json",
                    "--simulate", str(scenario("gh200")), "--nvml-library", str(node.sim_lib)], timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    [group] = json.loads(res.stdout)["groups"]
    assert "GH200" in group["name"] and group["attributes"]["compute_capability"]["value"] == "9.0", group
    [dev] = group["devices"]
    assert dev["healthy"] and dev["stats"].get("summary"), dev
