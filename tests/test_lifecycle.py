"""The NVML lifecycle's state machine (nvidia/nvml/lifecycle.py), driven directly.

A fake session (what `open` raises or returns, scripted) and a fake clock stand
in for NVML and time: no library, no thread, no sleep. The device watch that
schedules the lifecycle over the real NVML API is covered by test_nvidia_sim.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from nomad_device_nvidia.nvidia.nvml.executor import CallTimeout
from nomad_device_nvidia.nvidia.nvml.lifecycle import (
    BACKOFF_FIRST_S,
    Backoff,
    DriverLost,
    Event,
    InitFailed,
    Initialised,
    LibraryAbsent,
    Lifecycle,
    NvmlState,
    Released,
    ShutDown,
)
from nomad_device_nvidia.nvidia.nvml.session import NvmlAbsent, NvmlUnavailable, SessionClosed

PERIOD = 60.0
LOGGER = "test.lifecycle"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """`open` raises the next scripted exception, or succeeds when the script says None."""

    def __init__(self) -> None:
        self.script: list[Exception | None] = []
        self.opened: list[tuple[str, str]] = []
        self.released = 0

    def open(self, library: str, simulate: str) -> bool:
        self.opened.append((library, simulate))
        outcome = self.script.pop(0)
        if outcome is not None:
            raise outcome
        return True

    def release(self) -> None:
        self.released += 1


class Machine:
    def __init__(self) -> None:
        self.clock = Clock()
        self.session = FakeSession()
        self.changes = 0
        self.life = Lifecycle(self.session, self._changed, clock=self.clock, logger=logging.getLogger(LOGGER))

    def _changed(self) -> None:
        self.changes += 1

    def open(self, outcome: Exception | None, library: str = "", simulate: str = "") -> NvmlState:
        self.session.script.append(outcome)
        return self.life.open(library, simulate, PERIOD)

    def ready(self) -> None:
        assert self.open(None) is NvmlState.READY


@pytest.fixture
def m() -> Machine:
    return Machine()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines() -> Iterator[list[logging.LogRecord]]:
    """What the lifecycle logged, in order."""
    logger, handler = logging.getLogger(LOGGER), _Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_starts_not_ready_and_due_at_once(m: Machine) -> None:
    assert m.life.state is NvmlState.NOT_READY
    assert m.life.due() is not None and m.life.due() <= m.clock.now
    assert m.life.reason == ""


def test_absent_is_tried_again_every_period_with_one_line(m: Machine, lines: list[logging.LogRecord]) -> None:
    assert m.open(NvmlAbsent("cannot load NVML: no libnvidia-ml.so.1")) is NvmlState.ABSENT
    assert m.changes == 1
    assert m.life.reason == "cannot load NVML: no libnvidia-ml.so.1"
    assert m.life.due() == m.clock.now + PERIOD
    # Not due yet: the session is not asked.
    m.clock.now += PERIOD - 1
    assert m.life.open("", "", PERIOD) is NvmlState.ABSENT and len(m.session.opened) == 1
    m.clock.now += 1
    assert m.open(NvmlAbsent("cannot load NVML: no libnvidia-ml.so.1")) is NvmlState.ABSENT
    assert len(m.session.opened) == 2 and m.life.tries == 2 and m.changes == 1
    # No driver installed is not an error: one INFO line, not one per try.
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (logging.INFO, "cannot load NVML: no libnvidia-ml.so.1; no NVIDIA devices will be reported "
                       "(checking again every 1m)"),
    ]


def test_an_unforeseen_error_of_the_session_is_retried_a_period_later(m: Machine) -> None:
    with pytest.raises(RuntimeError):
        m.open(RuntimeError("a bug"))
    assert m.life.state is NvmlState.NOT_READY and m.life.due() == m.clock.now + PERIOD


def test_a_library_installed_later_is_found_at_the_next_check(m: Machine) -> None:
    m.open(NvmlAbsent("no library"))
    m.clock.now += PERIOD
    assert m.open(None) is NvmlState.READY
    assert m.changes == 2 and m.life.reason == "" and m.life.due() is None


def test_a_configured_library_that_is_absent_is_an_error(m: Machine, lines: list[logging.LogRecord]) -> None:
    assert m.open(NvmlAbsent("cannot load NVML: /x.so: no such file"), library="/x.so") is NvmlState.ABSENT
    assert m.session.opened == [("/x.so", "")]
    assert [r.levelno for r in lines] == [logging.ERROR]
    m2 = Machine()
    m2.open(NvmlAbsent("bad scenario"), simulate="/s.toml")
    assert m2.life.state is NvmlState.ABSENT


def test_not_ready_retries_with_backoff_doubling_to_the_period(m: Machine, lines: list[logging.LogRecord]) -> None:
    waits = []
    for _ in range(9):
        assert m.open(NvmlUnavailable("NVML failed to initialise: DRIVER_NOT_LOADED")) is NvmlState.NOT_READY
        due = m.life.due()
        assert due is not None
        waits.append(due - m.clock.now)
        m.clock.now = due
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    # Already not ready: no change to tell; the same failure is one line.
    assert m.changes == 0
    assert [r.getMessage() for r in lines] == ["NVML failed to initialise: DRIVER_NOT_LOADED; retrying with backoff"]
    assert lines[0].levelno == logging.WARNING
    assert m.life.reason == "NVML failed to initialise: DRIVER_NOT_LOADED"


def test_an_init_that_does_not_return_in_time_is_not_ready(m: Machine) -> None:
    assert m.open(CallTimeout("nvmlInit", 3.0, "system")) is NvmlState.NOT_READY
    assert m.life.reason.startswith("NVML failed to initialise: ")
    assert "nvmlInit" in m.life.reason


def test_ready_tells_a_change_and_says_nothing_itself(m: Machine, lines: list[logging.LogRecord]) -> None:
    m.open(NvmlUnavailable("init failed"))
    m.clock.now += BACKOFF_FIRST_S
    assert m.open(None) is NvmlState.READY
    assert m.changes == 1
    assert m.life.reason == "" and m.life.due() is None
    # The first scan that finds the driver well says "NVML initialised", not the lifecycle.
    assert [r.getMessage() for r in lines] == ["init failed; retrying with backoff"]
    # While ready, open asks nothing of the session.
    assert m.life.open("", "", PERIOD) is NvmlState.READY and len(m.session.opened) == 2


def test_gone_waits_until_idle_then_releases_and_backs_off(m: Machine, lines: list[logging.LogRecord]) -> None:
    m.ready()
    assert m.life.handle(DriverLost("NVIDIA driver unavailable (Driver Not Loaded)"), PERIOD) is NvmlState.GONE
    assert m.changes == 2
    assert m.life.reason == "NVIDIA driver unavailable (Driver Not Loaded)"
    assert lines[-1].getMessage() == "NVIDIA driver unavailable (Driver Not Loaded); releasing NVML to initialise it again"
    assert lines[-1].levelno == logging.WARNING
    # A call of ours still in NVML: nothing is released, and no timer: its return wakes the watch.
    assert m.life.release(False, PERIOD) is NvmlState.GONE and m.session.released == 0
    assert m.life.due() is None
    assert m.life.open("", "", PERIOD) is NvmlState.GONE and len(m.session.opened) == 1
    assert m.life.release(True, PERIOD) is NvmlState.NOT_READY
    assert m.session.released == 1 and m.changes == 3
    assert m.life.due() == m.clock.now + BACKOFF_FIRST_S
    assert len(lines) == 1  # the next init says how it went


def test_recovery_after_the_driver_comes_back(m: Machine) -> None:
    m.ready()
    m.life.handle(DriverLost("gone"), PERIOD)
    m.life.release(True, PERIOD)
    m.clock.now += BACKOFF_FIRST_S
    assert m.open(NvmlUnavailable("still loading")) is NvmlState.NOT_READY
    m.clock.now = m.life.due() or 0.0
    assert m.open(None) is NvmlState.READY
    assert m.life.reason == ""


def test_a_flapping_driver_backs_off_until_a_scan_finds_it_well(m: Machine) -> None:
    # The driver comes back with every GPU lost, again and again: each cycle waits longer.
    waits = []
    for _ in range(4):
        m.ready()
        m.life.handle(DriverLost("every GPU answers GPU_IS_LOST"), PERIOD)
        m.life.release(True, PERIOD)
        due = m.life.due()
        assert due is not None
        waits.append(due - m.clock.now)
        m.clock.now = due
    assert waits == [1.0, 2.0, 4.0, 8.0]
    # A scan that finds the driver well resets it (the watch shares the backoff).
    m.ready()
    m.life.backoff.reset()
    m.life.handle(DriverLost("gone"), PERIOD)
    m.life.release(True, PERIOD)
    assert m.life.due() == m.clock.now + 1.0


def test_backoff_follows_a_lowered_period() -> None:
    b = Backoff()
    assert [b.delay(60.0) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    # The next step after a lowered cap doubles from the cap.
    assert b.delay(5.0) == 5.0 and b.delay(60.0) == 5.0 and b.delay(60.0) == 10.0
    b.reset()
    assert b.delay(60.0) == 1.0


def test_shutdown_is_final(m: Machine) -> None:
    assert m.open(SessionClosed("the plugin is shut down")) is NvmlState.CLOSED
    assert m.changes == 1 and m.life.due() is None
    # Nothing moves it any more, and nothing asks the session.
    for event in (Initialised(), InitFailed("x"), LibraryAbsent("x", False), DriverLost("x"), Released(), ShutDown()):
        assert m.life.handle(event, PERIOD) is NvmlState.CLOSED
    assert m.life.open("", "", PERIOD) is NvmlState.CLOSED and len(m.session.opened) == 1
    assert m.life.release(True, PERIOD) is NvmlState.CLOSED and m.session.released == 0
    assert m.changes == 1


@pytest.mark.parametrize("state", [NvmlState.READY, NvmlState.GONE])
def test_shutdown_from_any_state(state: NvmlState) -> None:
    m = Machine()
    m.ready()
    if state is NvmlState.GONE:
        m.life.handle(DriverLost("gone"), PERIOD)
    assert m.life.state is state
    assert m.life.handle(ShutDown(), PERIOD) is NvmlState.CLOSED


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        ("not ready", DriverLost("x")),
        ("not ready", Released()),
        ("ready", Initialised()),
        ("ready", InitFailed("x")),
        ("ready", LibraryAbsent("x", False)),
        ("ready", Released()),
        ("gone", Initialised()),
        ("gone", DriverLost("again")),
        ("absent", DriverLost("x")),
    ],
)
def test_an_event_the_state_has_no_transition_for_is_a_bug(setup: str, event: Event) -> None:
    m = Machine()
    if setup == "absent":
        m.open(NvmlAbsent("none"))
    if setup in ("ready", "gone"):
        m.ready()
    if setup == "gone":
        m.life.handle(DriverLost("gone"), PERIOD)
    before, changes = m.life.state, m.changes
    with pytest.raises(ValueError, match="no transition from"):
        m.life.handle(event, PERIOD)
    assert m.life.state is before and m.changes == changes


def test_one_line_per_change_not_per_try(m: Machine, lines: list[logging.LogRecord]) -> None:
    # absent -> not ready -> not ready (same) -> ready -> gone -> not ready (same line as before) ...
    m.open(NvmlAbsent("no library"))
    m.clock.now += PERIOD
    m.open(NvmlUnavailable("init failed"))
    m.clock.now += 1
    m.open(NvmlUnavailable("init failed"))
    m.clock.now += 2
    m.ready()
    m.life.handle(DriverLost("gone"), PERIOD)
    m.life.release(True, PERIOD)
    m.clock.now += 4
    m.open(NvmlUnavailable("init failed"))
    assert [r.getMessage().split(";")[0] for r in lines] == ["no library", "init failed", "gone", "init failed"]
    # A line said by the watch through the lifecycle takes part in the same rule.
    m.life.say(logging.INFO, "NVML initialised: 8 devices")
    m.life.say(logging.INFO, "NVML initialised: 8 devices")
    assert lines[-1].getMessage() == "NVML initialised: 8 devices" and len(lines) == 5
    assert m.life.said == "NVML initialised: 8 devices"
