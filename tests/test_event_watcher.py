"""EventWatcher's decisions about a blocked event wait, in-process on a real CallRunner.

The blocked wait is plain Python holding the runner's events lane past the deadline,
as nvmlEventSetWait_v2 would on a sick driver; no NVML is loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from nomad_device_nvidia.nvidia.nvml.executor import EVENTS, CallRunner
from nomad_device_nvidia.nvidia.config import HealthConfig
from nomad_device_nvidia.nvidia.health.events import EventWatcher
from nomad_device_nvidia.nvidia.health.book import HealthBook

WAIT = 10.0  # bounds every wait: a broken runner fails instead of hanging


def nvmlEventSetWait_v2(gate: threading.Event) -> None:  # noqa: N802 - named as the call it stands for
    gate.wait(WAIT)


@pytest.fixture
def blocked_events() -> Iterator[CallRunner]:
    """A runner whose events lane holds a wait that has passed its deadline."""
    runner = CallRunner(0.1, max_workers=2, name="test")
    gate = threading.Event()
    runner.submit(EVENTS, lambda c: c(nvmlEventSetWait_v2, gate))
    for _ in range(int(WAIT / 0.05)):
        if EVENTS in runner.stuck():
            break
        threading.Event().wait(0.05)
    else:
        pytest.fail("the blocked wait was never reported stuck")
    yield runner
    gate.set()
    runner.close()


def test_a_blocked_wait_asks_for_one_probe_not_one_per_round(
        blocked_events: CallRunner, caplog: pytest.LogCaptureFixture) -> None:
    asked: list[int] = []
    watcher = EventWatcher(blocked_events, HealthBook(lambda: None), HealthConfig(), lambda: asked.append(1))
    for _ in range(5):  # five probe rounds while the wait stays blocked
        watcher.check()
    assert asked == [1], "each round asked for another round at once: the probes would spin"
    warned = [r.getMessage() for r in caplog.records if "reading an NVML event failed" in r.getMessage()]
    assert len(warned) == 1 and "nvmlEventSetWait_v2 did not return within 100ms" in warned[0], warned


def test_an_unblocked_lane_reports_nothing() -> None:
    runner = CallRunner(0.1, max_workers=2, name="test")
    try:
        asked: list[int] = []
        watcher = EventWatcher(runner, HealthBook(lambda: None), HealthConfig(), lambda: asked.append(1))
        watcher.check()
        assert asked == []
    finally:
        runner.close()
