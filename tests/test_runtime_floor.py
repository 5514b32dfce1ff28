"""The streaming floor of benches/runtime_floor.py: the bare grpc.aio server that
benches/side_by_side.py --floor measures beside our plugin. Nomad's client code (the
harness) must find in it a device plugin like ours: it handshakes, takes the config our
schema describes, fingerprints our devices and streams our plugin's own Stats answer at
the interval asked, and stops on go-plugin's Shutdown. And side_by_side.py reads the
targets for our Stats path from its rows as they are defined."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HarnessRun

from nomad_device_nvidia._proto.nomad import device_pb2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benches"))
import runtime_floor  # noqa: E402  (benches/ is not a package)

SIM_DIR = Path(os.environ.get("NOMAD_DEVICE_NVIDIA_SIM_LIB", REPO / "build" / "sim" / "libnvidia-ml.so.1")).parent
SCENARIO = REPO / "benches" / "scenarios" / "side-by-side-8.toml"


def test_floor_streams_our_answer_through_nomads_client(plugin_bin: Path, run_harness: Callable[..., HarnessRun],
                                                        tmp_path: Path) -> None:
    answers = tmp_path / "answers.json"
    env = {"LD_LIBRARY_PATH": str(SIM_DIR), "NVML_SIM_SCENARIO": str(SCENARIO)}
    sizes = runtime_floor.capture_answers(plugin_bin, env, answers)
    assert sizes["devices"] == 8, sizes
    captured = {k: base64.b64decode(v) for k, v in json.loads(answers.read_text()).items()}
    assert len(captured["stats"]) == sizes["stats_bytes"] > 0
    ours = device_pb2.StatsResponse.FromString(captured["stats"])
    our_ids = sorted(i for g in ours.groups for i in g.instance_stats)
    assert len(our_ids) == 8

    cmd = runtime_floor.floor_plugin(sys.executable, answers)
    args: list[str] = ["session", "--plugin", cmd[0]]
    for arg in cmd[1:]:
        args += ["--arg", arg]
    run = run_harness(*args, "--stats", "3", "--interval", "100ms", timeout=120).ok()

    info = run.one("info")
    assert info["name"] == "grpc-floor" and info["api_version"] == "v0.1.0", info
    # The config our schema describes (defaults) went through the agent's encoding.
    assert run.one("set_config")["error"] is None
    fingerprint = run.of("fingerprint")[0]
    assert sorted(d["id"] for g in fingerprint["groups"] for d in g["devices"]) == our_ids
    stats = run.of("stats")
    assert len(stats) == 3, run.describe()
    for answer in stats:
        assert answer["error"] is None
        assert [g["ids"] for g in answer["groups"]] == [sorted(g.instance_stats) for g in ours.groups]
    shutdown = run.one("shutdown")
    assert shutdown["exited"] and shutdown["graceful"] and shutdown["exit_code"] == 0, shutdown


def _row(plugin: str, devices: int, idle: float, per_s: dict[str, tuple[float, float]]) -> dict[str, Any]:
    return {"plugin": plugin, "devices": devices, "idle": {"cpu_ms_per_s": idle, "wakes_per_s": 0.0},
            "stats": {iv: {"cpu_ms_per_s": cpu, "responses_per_s": rate, "wakes_per_s": 2 * rate}
                      for iv, (cpu, rate) in per_s.items()}}


def test_targets_read_per_answer_above_idle_and_ratios() -> None:
    import side_by_side  # beside runtime_floor, in benches/

    rows = [
        # 8 GPUs: ours 0.5 + 10 x 1.1 ms; the floor 0.3 + 10 x 1.0 ms: 0.1 ms above, within 0.15.
        _row("ours", 8, 0.5, {"1s": (0.5 + 1.1, 1.0), "100ms": (0.5 + 11.0, 10.0)}),
        _row("floor", 8, 0.3, {"1s": (0.3 + 1.0, 1.0), "100ms": (0.3 + 10.0, 10.0)}),
        _row("hashicorp", 8, 0.0, {"1s": (1.0, 1.0), "100ms": (14.0, 10.0)}),
        # 56 GPUs at 1 s: 3.0 / 2.0 is behind the reference ratio; no floor row, no floor check.
        _row("ours", 56, 0.5, {"1s": (3.0, 1.0)}),
        _row("hashicorp", 56, 0.0, {"1s": (2.0, 1.0)}),
        {"plugin": "floor", "devices": 56, "error": "capturing our answers: failed"},
    ]
    assert side_by_side.per_answer(rows[0], "100ms") == pytest.approx((1.1, 2.0))
    checks = {c["target"]: c["pass"] for c in side_by_side.targets(rows, [1.0, 0.1])}
    assert checks == {
        "8 GPUs 1s: ours per answer <= floor + 0.15 ms": True,
        "8 GPUs 100ms: ours per answer <= floor + 0.15 ms": True,
        "8 GPUs 100ms: ours / HashiCorp's CPU <= 0.800": False,  # 11.5 / 14.0
        f"56 GPUs 1s: ours / HashiCorp's CPU <= {3.25 / 2.87:.3f}": False,
    }
    rows[0]["stats"]["1s"]["cpu_ms_per_s"] = 0.5 + 1.2  # 0.2 ms above the floor's answer
    assert not next(c for c in side_by_side.targets(rows, [1.0]) if "8 GPUs 1s" in c["target"])["pass"]
