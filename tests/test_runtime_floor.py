"""The streaming floor of benches/runtime_floor.py: the bare grpc.aio server that
benches/side_by_side.py --floor measures beside our plugin. Nomad's client code (the
harness) must find in it a device plugin like ours: it handshakes, takes the config our
schema describes, fingerprints our devices and streams our plugin's own Stats answer at
the interval asked, and stops on go-plugin's Shutdown."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

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
