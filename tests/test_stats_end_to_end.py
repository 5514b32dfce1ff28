"""The Stats stream of the running plugin, as Nomad's client decodes it.

Our plugin runs on a simulated 8xH100 node whose stats are constants, driven
by the Go harness (Nomad's own device-plugin client); every value Nomad sees
is checked against the scenario file. The native engine must produce it
(its choice is logged), and the python engine must produce the same.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO_ROOT, HarnessRun

SCENARIO = REPO_ROOT / "tests" / "scenarios" / "8xh100-constant.toml"
SIM_LIB = REPO_ROOT / "build" / "sim" / "libnvidia-ml.so.1"
# The h100-sxm5-80gb preset of the simulator (docs/simulated-driver.md).
H100 = {"memory_mib": 81559, "memory_reserved_mib": 591, "bar1_mib": 131072, "power_limit_w": 700}
MIG_MEMORY_MIB = {"1g.10gb": 9856, "2g.20gb": 19968, "3g.40gb": 40192}
GPU_ONLY = ("GPU utilization", "Memory utilization", "Encoder utilization", "Decoder utilization",
            "Temperature", "Power usage", "ECC L1 errors", "ECC L2 errors", "ECC memory errors")


def stats_run(run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path, engine: str) -> HarnessRun:
    if not SIM_LIB.exists():
        pytest.fail(f"{SIM_LIB} is missing: run `make sim`")
    config = tmp_path / f"{engine}.hcl"
    config.write_text(f'config {{\n  simulate = "{SCENARIO}"\n  nvml_library = "{SIM_LIB}"\n'
                      f'  stats_engine = "{engine}"\n}}\n')
    return run_harness("session", "--plugin", plugin_bin, "--config", config, "--stats", "2",
                       "--interval", "200ms", "--logs").ok()


def instances(run: HarnessRun) -> dict[str, tuple[str, dict[str, Any]]]:
    """Device ID -> (group name, the instance's stats as Nomad decoded them), from the last response."""
    last = run.of("stats")[-1]
    assert last.get("error") is None, last
    return {dev: (g["name"], s) for g in last["groups"] for dev, s in g["instances"].items()}


def plugin_messages(run: HarnessRun) -> list[str]:
    """What the plugin logged, as relayed by go-plugin's client."""
    return [str(e["entry"].get("@message", "")) for e in run.of("log") if e.get("from_plugin")]


def int_pair(value: dict[str, Any]) -> tuple[int, int | None]:
    return value["IntNumeratorVal"], value.get("IntDenominatorVal")


def test_native_stats_stream_matches_the_scenario(run_harness: Callable[..., HarnessRun], plugin_bin: Path,
                                                   tmp_path: Path) -> None:
    scenario = tomllib.loads(SCENARIO.read_text())
    full, mig = scenario["gpus"]
    want = full["stats"]
    run = stats_run(run_harness, plugin_bin, tmp_path, "native")
    messages = plugin_messages(run)
    assert any("stats engine: native" in m for m in messages), "the plugin did not report the native engine"
    assert not any("native stats engine unavailable" in m for m in messages)

    first = run.of("fingerprint")[0]
    fingerprinted = {d["id"] for g in first["groups"] for d in g["devices"]}
    seen = instances(run)
    assert set(seen) == fingerprinted, "stats for exactly the fingerprinted devices"
    gpus = {dev: s for dev, (name, s) in seen.items() if dev.startswith("GPU-")}
    migs = {dev: (name, s) for dev, (name, s) in seen.items() if dev.startswith("MIG-")}
    assert len(gpus) == full["count"] and len(migs) == mig["count"] * len(mig["mig"])

    for dev, s in gpus.items():
        attrs = s["stats"]["Attributes"]
        # NVML's v1 memory "used" counts the driver's reserved memory too.
        used = want["memory_used_mib"] + H100["memory_reserved_mib"]
        assert int_pair(s["summary"]) == (used, H100["memory_mib"]), dev
        assert int_pair(attrs["Memory state"]) == (used, H100["memory_mib"])
        assert int_pair(attrs["GPU utilization"]) == (want["utilization_gpu"], None)
        assert int_pair(attrs["Memory utilization"]) == (want["utilization_memory"], None)
        assert int_pair(attrs["Encoder utilization"]) == (want["utilization_encoder"], None)
        assert int_pair(attrs["Decoder utilization"]) == (want["utilization_decoder"], None)
        assert int_pair(attrs["Temperature"]) == (want["temperature_c"], None)
        assert int_pair(attrs["Power usage"]) == (want["power_w"], H100["power_limit_w"])
        assert int_pair(attrs["BAR1 buffer state"]) == (want["bar1_used_mib"], H100["bar1_mib"])
        for ecc in ("ECC L1 errors", "ECC L2 errors", "ECC memory errors"):
            assert int_pair(attrs[ecc]) == (0, None)
        assert s["timestamp_unix_nano"] > 0

    for dev, (group, s) in migs.items():
        profile = group.rsplit(" ", 1)[-1]
        attrs = s["stats"]["Attributes"]
        assert int_pair(attrs["Memory state"]) == (mig["mig_stats"]["memory_used_mib"], MIG_MEMORY_MIB[profile]), dev
        for name in GPU_ONLY:  # whole-GPU queries answer NOT_SUPPORTED on a MIG handle
            assert attrs[name].get("StringVal") == "N/A", (dev, name)


def test_python_engine_sends_what_the_native_engine_sends(run_harness: Callable[..., HarnessRun],
                                                           plugin_bin: Path, tmp_path: Path) -> None:
    def without_time(run: HarnessRun) -> dict[str, Any]:
        return {dev: (name, s["summary"], s["stats"]) for dev, (name, s) in instances(run).items()}

    native = stats_run(run_harness, plugin_bin, tmp_path, "native")
    python = stats_run(run_harness, plugin_bin, tmp_path, "python")
    assert any("stats engine: python" in m for m in plugin_messages(python))
    assert without_time(native) == without_time(python)
