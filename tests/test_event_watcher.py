"""EventWatcher's decisions about its wait, in-process, over a fake event source.

The watcher waits on a thread of its own; the event-set calls are our own seam
(`EventSource`): here plain Python whose wait blocks on a gate as
nvmlEventSetWait_v2 would on a sick driver, and a clock the test moves. The rest
is real: the executor (its SYSTEM and events lanes) and the health book. No NVML
is loaded, nothing sleeps, and no assertion reads the wall clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pynvml
import pytest

from nomad_device_nvidia.nvidia.config import HealthConfig
from nomad_device_nvidia.nvidia.health.book import HealthBook
from nomad_device_nvidia.nvidia.health.events import EventSource, EventWatcher, event_wait_ms
from nomad_device_nvidia.nvidia.nvml.executor import EVENTS, Executor

WAIT = 10.0  # bounds every wait: a broken watcher fails instead of hanging
DEADLINE = 0.1  # the executor's call deadline


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEvents:
    """An event set whose long waits block until the test opens the gate; then no event came."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()  # a long wait is in progress
        self.sets: list[object] = []
        self.freed: list[object] = []

    def source(self) -> EventSource:
        def nvmlEventSetCreate() -> object:  # noqa: N802 - named as the call it stands for
            self.sets.append(object())
            return self.sets[-1]

        def nvmlEventSetWait_v2(event_set: Any, timeout_ms: int) -> Any:  # noqa: N802
            if timeout_ms:
                self.entered.set()
                self.gate.wait(WAIT)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

        def nvmlEventSetFree(event_set: Any) -> None:  # noqa: N802
            self.freed.append(event_set)

        return EventSource(create=nvmlEventSetCreate, wait=nvmlEventSetWait_v2, free=nvmlEventSetFree)


@pytest.fixture
def executor() -> Iterator[Executor]:
    ex = Executor(DEADLINE, max_workers=2, name="test")
    yield ex
    ex.close()


@pytest.fixture
def events() -> Iterator[FakeEvents]:
    fake = FakeEvents()
    yield fake
    fake.gate.set()  # lets a thread still waiting end


def watcher(executor: Executor, fake: FakeEvents, clock: Clock, asked: list[int]) -> EventWatcher:
    return EventWatcher(executor, HealthBook(lambda: None), HealthConfig(), lambda: asked.append(1),
                        source=fake.source(), clock=clock)


def test_the_thread_says_how_long_its_wait_has_been_in_progress(executor: Executor, events: FakeEvents) -> None:
    clock, asked = Clock(), []
    w = watcher(executor, events, clock, asked)
    assert w.waiting() is None  # not started
    w.start()
    assert events.entered.wait(WAIT)
    length = event_wait_ms(HealthConfig()) / 1000
    assert w.waiting() == ("nvmlEventSetWait_v2", 0.0, length)
    clock.now += 2.5
    assert w.waiting() == ("nvmlEventSetWait_v2", 2.5, length)
    ended = threading.Event()
    w.when_ended(ended.set)
    w.stop()
    events.gate.set()
    assert ended.wait(WAIT)
    assert w.waiting() is None and not w.alive
    assert events.freed == events.sets, "the watcher frees its event set when it ends"


def test_a_wait_is_reported_only_past_its_length_plus_the_deadline(
        executor: Executor, events: FakeEvents, caplog: pytest.LogCaptureFixture) -> None:
    clock, asked = Clock(), []
    w = watcher(executor, events, clock, asked)
    w.start()
    assert events.entered.wait(WAIT)
    length = event_wait_ms(HealthConfig()) / 1000
    clock.now += length + DEADLINE / 2  # waiting on purpose, within the deadline
    w.check()
    assert asked == []
    clock.now += DEADLINE  # now past it
    for _ in range(5):  # five probe rounds while the wait stays blocked
        w.check()
    assert asked == [1], "each round asked for another round at once: the probes would spin"
    warned = [r.getMessage() for r in caplog.records if "reading an NVML event failed" in r.getMessage()]
    assert len(warned) == 1 and "nvmlEventSetWait_v2 did not return within 100ms" in warned[0], warned


def test_a_watcher_between_waits_reports_nothing(executor: Executor, events: FakeEvents) -> None:
    clock, asked = Clock(), []
    w = watcher(executor, events, clock, asked)
    clock.now += 3600
    w.check()  # never started
    assert asked == []


def test_one_watcher_waits_at_a_time(executor: Executor, events: FakeEvents) -> None:
    clock, asked = Clock(), []
    first = watcher(executor, events, clock, asked)
    first.start()
    assert events.entered.wait(WAIT)
    first.stop()  # as the device watch retires it: its wait is still out
    second = watcher(executor, events, clock, asked)
    second.start()
    assert not second.alive, "a second wait began beside the first"
    assert executor.claim(EVENTS, "test") is None, "the first watcher's thread holds the events lane"
    ended = threading.Event()
    first.when_ended(ended.set)
    events.gate.set()
    assert ended.wait(WAIT)
    second.start()  # the device watch's next round
    assert second.alive
    second.stop()
