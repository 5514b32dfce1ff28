"""Stats streams through Nomad's own client (the Go harness) on the simulated driver:
streams at one interval share each collection, and a GPU whose calls hang for good
delays neither a concurrent Reserve nor the other GPUs' stats.

A collection stamps every device of its answer with one timestamp (to the
nanosecond), so two streams that got the same collection got the same timestamps;
two collections never share one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import HarnessRun
from test_health_faults import SCENARIOS, sim_config, uuids

ANSWERS = 12
INTERVAL = "200ms"


def by_stream(run: HarnessRun) -> dict[int, list[dict[str, Any]]]:
    streams: dict[int, list[dict[str, Any]]] = {}
    for e in run.of("stats"):
        assert e.get("error") is None, e
        streams.setdefault(int(e["stream"]), []).append(e)
    return streams


def stamps(answers: list[dict[str, Any]]) -> list[int]:
    """Each answer's collection: the one timestamp all its devices carry."""
    out = []
    for e in answers:
        seen = {s["timestamp_unix_nano"] for g in e["groups"] for s in g["instances"].values()}
        assert len(seen) == 1, f"an answer with {len(seen)} timestamps: {e}"
        out.append(seen.pop())
    return out


def reading(answer: dict[str, Any], device: str, stat: str) -> dict[str, Any]:
    for g in answer["groups"]:
        if device in g["instances"]:
            value: dict[str, Any] = g["instances"][device]["stats"]["Attributes"][stat]
            return value
    raise AssertionError(f"{device} missing from {answer}")


def shared(streams: dict[int, list[dict[str, Any]]]) -> None:
    """The second stream's answers are the first's collections (but for one it may take past them)."""
    first, second = stamps(streams[0]), stamps(streams[1])
    assert len(set(second) - set(first)) <= 1, (first, second)
    assert len(set(first)) == len(first), f"a collection sent twice to one stream: {first}"


@pytest.mark.parametrize("engine", ["native", "python"])
def test_two_streams_at_one_interval_get_each_collection_once(
        run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path, engine: str) -> None:
    cfg = sim_config(tmp_path, SCENARIOS / "8xh100-constant.toml", stats_engine=engine)
    run = run_harness("session", "--plugin", plugin_bin, "--config", cfg, "--stats", str(ANSWERS),
                      "--stats-streams", "2", "--interval", INTERVAL).ok()
    streams = by_stream(run)
    assert sorted(streams) == [0, 1] and all(len(a) == ANSWERS for a in streams.values()), streams.keys()
    shared(streams)


def test_a_hung_gpu_delays_neither_reserve_nor_the_other_gpus(
        run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path) -> None:
    scenario = SCENARIOS / "fault-blocked-gpu-stuck.toml"  # every call on GPU 1 blocks from 1 s on, for good
    gpus = uuids(scenario)
    blocked, others = gpus[1], [g for i, g in enumerate(gpus) if i != 1]
    cfg = sim_config(tmp_path, scenario, health={"call_timeout": "1s", "probe_interval": "500ms"})
    # The answers span well past the block's start; the Reserves come while both streams are open
    # and GPU 1's calls are stuck. The harness's own bound (--timeout) is what catches a wait on it.
    run = run_harness("session", "--plugin", plugin_bin, "--config", cfg, "--stats", "20",
                      "--stats-streams", "2", "--interval", INTERVAL, "--reserve", others[0],
                      "--reserve", others[1], "--timeout", "20s").ok()
    streams = by_stream(run)
    assert all(len(a) == 20 for a in streams.values())
    shared(streams)
    for answers in streams.values():
        stuck = [e for e in answers if reading(e, blocked, "Temperature").get("StringVal") == "N/A"]
        assert stuck, "the stream ended before GPU 1 blocked"
        # After GPU 1 blocks, every answer still carries the other GPUs' figures.
        for e in answers:
            for gpu in others:
                assert "IntNumeratorVal" in reading(e, gpu, "Temperature"), (gpu, e)
        # And answers keep coming once it is stuck: the block holds no tick after the first.
        assert answers.index(stuck[0]) < len(answers) - 3, "too few answers after GPU 1 blocked"
    for res, gpu in zip(run.of("reserve"), others[:2], strict=True):
        assert res["error"] is None, res
        assert res["reservation"]["envs"] == {"NVIDIA_VISIBLE_DEVICES": gpu}, res
