"""Executor: work on per-GPU lanes, each call under a deadline, bounded threads.

The work here is plain Python that blocks on an Event where an NVML call would
block on a sick GPU; the runner only ever sees callables, so this is its whole
contract. How the plugin uses it on the simulated driver is in test_nvidia_sim.py
and, through Nomad's client code, in test_health_faults.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nomad_device_nvidia.nvidia.nvml.executor import Executor, Calls, CallTimeout, RunnerClosed

WAIT = 10.0  # bounds every wait below, so a broken runner fails instead of hanging


def nvmlDeviceGetPowerUsage(gate: threading.Event) -> str:  # noqa: N802 - named as the call it stands for
    gate.wait(WAIT)
    return "answered"


def quick(value: int) -> int:
    return value


@pytest.fixture
def runner() -> Iterator[Executor]:
    r = Executor(0.2, max_workers=4, name="test")
    yield r
    r.close()


def workers() -> int:
    return sum(t.name == "test-call" for t in threading.enumerate())


def test_a_call_past_the_deadline_names_itself_and_its_lane_refuses_at_once(runner: Executor) -> None:
    gate = threading.Event()
    with pytest.raises(CallTimeout) as info:
        runner.call("gpu0", nvmlDeviceGetPowerUsage, gate)
    assert str(info.value) == "nvmlDeviceGetPowerUsage did not return within 200ms"
    # The caller is let go while the call is still in progress (its gate is still shut).
    assert info.value.lane == "gpu0" and not gate.is_set() and runner.live()
    # The lane's call is still in flight: new work there is refused, with the same words,
    # and never runs (it does not queue behind the stuck call).
    ran: list[int] = []
    with pytest.raises(CallTimeout, match="nvmlDeviceGetPowerUsage did not return within 200ms"):
        runner.call("gpu0", ran.append, 1)
    assert ran == []
    assert {lane: call for lane, (_, call) in runner.stuck().items()} == {"gpu0": "nvmlDeviceGetPowerUsage"}
    # Other lanes are not held up.
    assert runner.call("gpu1", quick, 7) == 7
    gate.set()


def test_the_lane_is_free_again_when_the_call_returns_and_the_return_is_told(runner: Executor) -> None:
    gate, returned = threading.Event(), threading.Event()
    lanes: list[object] = []
    runner.on_return(lambda lane: (lanes.append(lane), returned.set()))
    with pytest.raises(CallTimeout):
        runner.call("gpu0", nvmlDeviceGetPowerUsage, gate)
    gate.set()
    assert returned.wait(WAIT)
    assert lanes == ["gpu0"]
    assert runner.call("gpu0", quick, 3) == 3
    assert runner.stuck() == {}


def test_when_idle_runs_once_the_last_job_returns_and_at_once_when_none_runs(runner: Executor) -> None:
    told: list[str] = []
    runner.when_idle(lambda: told.append("idle already"))
    assert told == ["idle already"]
    gates = [threading.Event(), threading.Event()]
    idle = threading.Event()
    jobs = [runner.submit(f"gpu{i}", lambda c, g=g: c(nvmlDeviceGetPowerUsage, g)) for i, g in enumerate(gates)]
    give_up = time.monotonic() + WAIT
    for job in jobs:  # both running: neither is queued behind the other
        while not job.call_started and time.monotonic() < give_up:
            job.wake.wait(0.01)
        assert job.call_started, "a job never started"
    runner.when_idle(idle.set)
    runner.when_idle(idle.set)  # the same callback twice is kept once
    gates[0].set()
    assert jobs[0].done.wait(WAIT)
    assert not idle.is_set(), "told idle while a job still ran"
    gates[1].set()
    assert idle.wait(WAIT) and runner.live() == 0


def test_a_blocked_lane_holds_one_thread_however_much_work_comes(runner: Executor) -> None:
    gate = threading.Event()
    with pytest.raises(CallTimeout):
        runner.call("gpu0", nvmlDeviceGetPowerUsage, gate)
    before = workers()
    for _ in range(200):
        with pytest.raises(CallTimeout):
            runner.call("gpu0", nvmlDeviceGetPowerUsage, gate)
        assert runner.try_submit("gpu0", lambda c: c(quick, 1), time.monotonic() + 0.01) is None
    assert workers() == before
    gate.set()


def test_workers_held_by_blocked_calls_are_replaced(runner: Executor) -> None:
    # As many blocked lanes as workers: the other lanes still get answers.
    gate = threading.Event()
    for i in range(4):
        with pytest.raises(CallTimeout):
            runner.call(f"stuck{i}", nvmlDeviceGetPowerUsage, gate)
    assert [runner.call(f"gpu{i}", quick, i) for i in range(8)] == list(range(8))
    # Four blocked, at most four on time, two idle.
    assert workers() <= 4 + 4 + 2
    gate.set()


def test_one_job_per_lane_at_a_time_and_lanes_in_parallel(runner: Executor) -> None:
    active: dict[str, int] = {}
    most: dict[str, int] = {}
    lock = threading.Lock()

    both = threading.Event()  # set when the two lanes ran at the same time

    def work(lane: str, c: Calls) -> None:
        with lock:
            active[lane] = active.get(lane, 0) + 1
            most[lane] = max(most.get(lane, 0), active[lane])
            if all(active.get(k, 0) for k in ("gpu0", "gpu1")):
                both.set()
        c(both.wait, 0.05)  # a lane's job waits a little for the other lane to run too
        with lock:
            active[lane] -= 1

    def caller(lane: str) -> None:
        for _ in range(5):
            runner.run(lane, lambda c: work(lane, c))

    threads = [threading.Thread(target=caller, args=(f"gpu{i % 2}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert most == {"gpu0": 1, "gpu1": 1}
    assert both.is_set(), "the two lanes never ran side by side"


def test_a_job_is_timed_per_call_not_as_a_whole(runner: Executor) -> None:
    # Ten calls of 100 ms each: one second of work, no call past 200 ms.
    def work(c: Calls) -> int:
        for _ in range(10):
            c(time.sleep, 0.1)
        return 10

    assert runner.run("gpu0", work) == 10


def test_errors_of_the_work_reach_the_caller(runner: Executor) -> None:
    def fail(c: Calls) -> None:
        raise KeyError("nvml said no")

    with pytest.raises(KeyError, match="nvml said no"):
        runner.run("gpu0", fail)
    assert runner.call("gpu0", quick, 5) == 5


def test_a_closed_runner_refuses_work_and_releases_its_waiters(runner: Executor) -> None:
    gate = threading.Event()
    slow = Executor(30.0, name="test")
    job = slow.submit("gpu0", lambda c: c(nvmlDeviceGetPowerUsage, gate))
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            slow.wait(job)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    slow.close()
    t.join(WAIT)
    assert not t.is_alive() and isinstance(outcome[0], RunnerClosed)
    with pytest.raises(RunnerClosed):
        slow.call("gpu1", quick, 1)
    gate.set()


def test_a_job_holding_a_lane_makes_other_work_there_wait_or_be_refused(runner: Executor) -> None:
    # The python stats engine's tick: one job reads several GPUs, holding each one's lane.
    gate, holding = threading.Event(), threading.Event()

    def tick(c: Calls) -> str:
        assert c.hold("gpu0", time.monotonic() + WAIT)
        holding.set()
        try:
            return c(nvmlDeviceGetPowerUsage, gate)
        finally:
            c.release("gpu0")

    job = runner.submit(("tick", 1), tick)
    assert holding.wait(WAIT)
    # Work on the held lane waits for it, and is refused, naming the held call,
    # once that call is overdue; other lanes are not held up.
    with pytest.raises(CallTimeout, match="nvmlDeviceGetPowerUsage did not return within 200ms"):
        runner.call("gpu0", quick, 1)
    assert runner.try_submit("gpu0", lambda c: c(quick, 1), time.monotonic() + 0.05) is None
    assert runner.call("gpu1", quick, 3) == 3
    gate.set()
    assert runner.wait_until(job, time.monotonic() + WAIT) and job.result() == "answered"
    assert runner.call("gpu0", quick, 2) == 2  # released with the job


# -- the GPU lanes shared with the native stats engine --
# Its reads take a GPU's lane in the same table (`executor.lanes`); here the test
# holds one there itself, as a read would, with an owner of its own.

ENGINE = 1 << 62  # an owner id as the native engine hands them out


def wait_until(what: str, cond: Callable[[], bool]) -> None:
    for _ in range(int(WAIT / 0.01)):
        if cond():
            return
        time.sleep(0.01)
    pytest.fail(f"never: {what}")


def test_a_gpu_lane_held_by_the_stats_engine_is_waited_for_then_refused_once_stuck(runner: Executor) -> None:
    runner.lanes.try_hold("GPU-a", ENGINE, "the stats engine's read")
    # Shutdown counts it as a call of ours still in NVML.
    assert runner.held_elsewhere() == 1 and runner.live() == 0
    # Another GPU and the system lane are not held up.
    assert runner.call("GPU-b", quick, 1) == 1 and runner.call("system", quick, 2) == 2
    wait_until("the engine's read is past the deadline", lambda: "GPU-a" in runner.stuck())
    assert runner.stuck()["GPU-a"][1] == "the stats engine's read"
    ran: list[int] = []
    with pytest.raises(CallTimeout, match="the stats engine's read did not return within 200ms"):
        runner.call("GPU-a", ran.append, 1)
    assert ran == [] and runner.overdue_on("GPU-a") == "the stats engine's read"

    def probe(c: Calls) -> bool:
        return c.hold("GPU-a", time.monotonic() + WAIT)

    assert runner.run("probe", probe) is False, "a probe skips the GPU at once"
    # The read returns: the GPU's lane is free for the plugin's work again.
    assert runner.lanes.release("GPU-a", ENGINE)
    assert runner.call("GPU-a", quick, 3) == 3 and runner.stuck() == {} and runner.held_elsewhere() == 0


def test_the_stats_engine_finds_the_lane_of_a_gpu_stuck_in_a_job(runner: Executor) -> None:
    gate = threading.Event()
    job = runner.submit("GPU-a", lambda c: c(nvmlDeviceGetPowerUsage, gate), what="a scan")
    holder = runner.lanes.holder("GPU-a")
    assert holder is not None and holder[2] == "a scan", holder
    assert runner.held_elsewhere() == 0, "a job's own GPU lane is not the engine's"
    assert runner.lanes.try_hold("GPU-a", ENGINE, "the stats engine's read") is not None
    with pytest.raises(CallTimeout):
        runner.wait(job)
    gate.set()
    wait_until("the lane is given back", lambda: runner.lanes.holder("GPU-a") is None)
    assert runner.lanes.try_hold("GPU-a", ENGINE, "the stats engine's read") is None
    runner.lanes.release("GPU-a", ENGINE)


def test_the_system_and_probe_lanes_stay_out_of_the_shared_table(runner: Executor) -> None:
    gate = threading.Event()
    runner.submit("system", lambda c: c(gate.wait, WAIT))
    runner.submit(("probe", object()), lambda c: c(gate.wait, WAIT))
    assert runner.lanes.held() == []
    gate.set()


def test_one_deadline_reaches_the_shared_table(runner: Executor) -> None:
    assert runner.lanes.deadline == pytest.approx(0.2)
    runner.set_timeout(3.0)
    assert runner.lanes.deadline == pytest.approx(3.0)
