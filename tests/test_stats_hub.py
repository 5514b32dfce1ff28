"""StatsHub's decisions, in-process, with a fake engine and clock of our own seam.

No child process, no NVML, no sleeps: the fake clock runs a collection only when
a test fires it (`FakeTicker.fire`), and signals the event loop through a real
socket pair exactly as the engines' clocks do, so the hub's reader callback is
the one the server runs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from nomad_device_nvidia.nvidia.config import NvidiaConfig
from nomad_device_nvidia.nvidia.device_watch import NvmlState
from nomad_device_nvidia.nvidia.stats.contract import EngineOptions, StatsEngine, TrackedDevice
from nomad_device_nvidia.nvidia.stats.hub import StatsHub, interval_key
from nomad_device_nvidia.nvidia.stats.ticking import ThreadTicker
from nomad_device_nvidia.sdk import StopEvent

WAIT_S = 20.0  # only catches a hang


class FakeEngine:
    def __init__(self, kind: str, options: EngineOptions) -> None:
        self.kind, self.options = kind, options
        self.tracked: list[list[TrackedDevice]] = []
        self.closed = False
        self.collected = 0

    def track(self, devices: Sequence[TrackedDevice]) -> None:
        self.tracked.append(list(devices))

    def collect(self) -> bytes:
        if self.closed:
            raise RuntimeError("stats engine is closed")
        self.collected += 1
        return f"{self.kind}:{self.collected}".encode()

    def close(self) -> None:
        self.closed = True


class FakeTicker:
    """The clock's contract, driven by the test: `fire` is one collection for every interval due."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.rx, self.tx = socket.socketpair()
        self.rx.setblocking(False)
        self.intervals: tuple[int, ...] = ()
        self.pending: list[TrackedDevice] | None = None
        self.ready: dict[int, bytes] = {}
        self.collections = 0
        self.closed = False
        self.close_calls = 0

    def __del__(self) -> None:
        self.rx.close()
        self.tx.close()

    def fileno(self) -> int:
        return self.rx.fileno()

    def set_intervals(self, intervals_ns: Sequence[int]) -> None:
        self.intervals = tuple(intervals_ns)
        self.ready = {k: v for k, v in self.ready.items() if k in self.intervals}

    def track(self, devices: Sequence[TrackedDevice]) -> None:
        self.pending = list(devices)

    def fire(self, *keys: int) -> None:
        if self.pending is not None:
            self.engine.track(self.pending)
            self.pending = None
        try:
            data = self.engine.collect()
        except RuntimeError:
            self.closed = True
        else:
            for k in keys or self.intervals:
                self.ready[k] = data
        self.collections += 1
        self.tx.send(b"\x01")

    def drain(self) -> list[tuple[int, bytes]]:
        try:
            while self.rx.recv(64):
                pass
        except BlockingIOError:
            pass
        ready, self.ready = self.ready, {}
        return sorted(ready.items())

    def close(self) -> None:
        self.close_calls += 1


@dataclass
class FakeWatch:
    state: NvmlState = NvmlState.READY
    inventory: object | None = field(default_factory=object)
    epoch: int = 1
    engines: set[Any] = field(default_factory=set)

    def add_engine(self, engine: StatsEngine) -> None:
        self.engines.add(engine)

    def remove_engine(self, engine: StatsEngine) -> None:
        self.engines.discard(engine)


class FakeRunner:
    def __init__(self) -> None:
        self.calls = 0
        self.lanes = None  # handed to the engine; the fake engines ignore it

    def call(self, lane: object, fn: Callable[..., Any], *args: Any) -> Any:
        self.calls += 1
        return fn(*args)


class World:
    """A hub over fakes; what it built, and the streams' answers."""

    def __init__(self) -> None:
        self.watch = FakeWatch()
        self.runner = FakeRunner()
        self.config = NvidiaConfig()
        self.generation = 1
        self.devices = [TrackedDevice("GPU-a", "GPU-a", "g")]
        self.engines: list[FakeEngine] = []
        self.tickers: list[FakeTicker] = []
        self.opened_alone: list[bool] = []
        self.hub = StatsHub(watch=self.watch, runner=self.runner, config=lambda: self.config,  # type: ignore[arg-type]
                            tracked=lambda: (self.generation, list(self.devices)),
                            generation=lambda: self.generation, open_engine=self._open,
                            make_ticker=self._ticker)

    def _open(self, kind: str, options: EngineOptions) -> StatsEngine:
        # Never two engines at once: every earlier one is closed when a new one opens.
        self.opened_alone.append(all(e.closed for e in self.engines))
        engine = FakeEngine(kind, options)
        self.engines.append(engine)
        return engine

    def _ticker(self, engine: StatsEngine) -> Any:
        ticker = FakeTicker(engine)  # type: ignore[arg-type]
        self.tickers.append(ticker)
        return ticker

    @property
    def ticker(self) -> FakeTicker:
        return self.tickers[-1]


class Stream:
    """One Stats stream on the hub: its answers land in a queue."""

    def __init__(self, world: World, interval: float) -> None:
        self.stop = StopEvent()
        self.got: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run(world.hub.answers(interval, self.stop)))

    async def _run(self, answers: AsyncIterator[bytes]) -> None:
        async for data in answers:
            await self.got.put(data)
        await self.got.put(None)

    async def next(self) -> bytes | None:
        return await asyncio.wait_for(self.got.get(), WAIT_S)

    async def end(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, WAIT_S)


async def until(cond: Callable[[], bool]) -> None:
    """Let the loop run until `cond` holds (bounded: only a hang fails)."""
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0)
    await asyncio.wait_for(poll(), WAIT_S)


def run(test: Callable[[World], Any]) -> None:
    asyncio.run(test(World()))


def test_streams_at_one_interval_share_one_collection() -> None:
    async def body(w: World) -> None:
        a, b = Stream(w, 1.0), Stream(w, 1.0)
        await until(lambda: bool(w.tickers) and w.ticker.intervals == (interval_key(1.0),))
        w.ticker.fire()
        assert await a.next() == await b.next() == b"native:1"
        w.ticker.fire()
        assert await a.next() == await b.next() == b"native:2"
        assert w.ticker.collections == 2 and w.engines[0].collected == 2
        assert len(w.engines) == 1 and w.runner.calls == 1  # one engine, built once on the SYSTEM lane
        await a.end()
        await b.end()
        await until(lambda: w.engines[0].closed)
        assert w.ticker.close_calls == 1 and not w.watch.engines
    run(body)


def test_streams_at_two_intervals_subscribe_both_and_get_their_own() -> None:
    async def body(w: World) -> None:
        fast, slow = Stream(w, 0.1), Stream(w, 1.0)
        await until(lambda: bool(w.tickers) and len(w.ticker.intervals) == 2)
        w.ticker.fire(interval_key(0.1))
        assert await fast.next() == b"native:1"
        w.ticker.fire(interval_key(0.1), interval_key(1.0))
        assert await fast.next() == await slow.next() == b"native:2"
        await slow.end()
        await until(lambda: w.ticker.intervals == (interval_key(0.1),))
        await fast.end()
    run(body)


def test_a_stream_reopened_at_once_gets_an_engine_after_the_last_one_closed() -> None:
    async def body(w: World) -> None:
        first = Stream(w, 1.0)
        await until(lambda: bool(w.tickers) and bool(w.ticker.intervals))
        await first.end()
        again = Stream(w, 1.0)  # Nomad reopens the stream
        await until(lambda: len(w.tickers) == 2 and bool(w.ticker.intervals))
        assert w.opened_alone == [True, True]
        w.ticker.fire()
        assert await again.next() == b"native:1"
        await again.end()
    run(body)


def test_a_stream_joining_a_running_interval_gets_its_latest_answer_at_once() -> None:
    async def body(w: World) -> None:
        first = Stream(w, 1.0)
        await until(lambda: bool(w.tickers) and bool(w.ticker.intervals))
        w.ticker.fire()
        assert await first.next() == b"native:1"
        late = Stream(w, 1.0)
        assert await late.next() == b"native:1"
        assert w.ticker.collections == 1
        await first.end()
        await late.end()
    run(body)


def test_the_engine_is_rebuilt_on_a_config_or_epoch_change() -> None:
    async def body(w: World) -> None:
        s = Stream(w, 1.0)
        await until(lambda: bool(w.tickers) and bool(w.ticker.intervals))
        w.config = NvidiaConfig.from_mapping({"stats_engine": "python"})
        w.ticker.fire()
        assert await s.next() == b"native:1"  # collected before the change was seen
        await until(lambda: len(w.tickers) == 2 and bool(w.ticker.intervals))
        await until(lambda: w.engines[0].closed)  # closed off the loop
        assert w.engines[1].kind == "python"
        w.ticker.fire()
        assert await s.next() == b"python:1"
        w.watch.epoch += 1  # NVML initialised again
        w.ticker.fire()
        assert await s.next() == b"python:2"
        await until(lambda: len(w.tickers) == 3 and bool(w.ticker.intervals))
        await until(lambda: w.engines[1].closed)
        assert not w.engines[2].closed
        assert w.watch.engines == {w.engines[2]}
        assert w.opened_alone == [True, True, True]
        await s.end()
    run(body)


def test_a_new_fingerprint_generation_is_tracked_at_the_next_tick() -> None:
    async def body(w: World) -> None:
        s = Stream(w, 1.0)
        await until(lambda: bool(w.tickers) and bool(w.ticker.intervals))
        engine = w.engines[0]
        assert engine.tracked == [w.devices]  # the first set, tracked when built (off the loop)
        w.ticker.fire()
        await s.next()
        assert w.ticker.pending is None  # generation unchanged: nothing to track
        w.generation = 2
        w.devices = [TrackedDevice("GPU-a", "GPU-a", "g"), TrackedDevice("GPU-b", "GPU-b", "g")]
        w.ticker.fire()
        await s.next()
        assert w.ticker.pending == w.devices  # handed to the clock, not applied on the loop
        w.ticker.fire()
        await s.next()
        assert engine.tracked[-1] == w.devices
        await s.end()
    run(body)


def test_while_nvml_is_down_streams_get_empty_answers_and_no_engine() -> None:
    async def body(w: World) -> None:
        w.watch.state, w.watch.inventory = NvmlState.NOT_READY, None
        fast = Stream(w, 0.01)
        assert await fast.next() == b""  # at once, as the first tick of a stream
        assert await fast.next() == b""  # and at the interval
        slow = Stream(w, 3600.0)
        late = Stream(w, 3600.0)
        assert await slow.next() == await late.next() == b""  # each at once, the interval notwithstanding
        await slow.end()
        await late.end()
        assert not w.engines
        w.watch.state, w.watch.inventory = NvmlState.READY, object()
        await until(lambda: bool(w.tickers) and bool(w.ticker.intervals))
        w.ticker.fire()
        while (data := await fast.next()) == b"":
            pass
        assert data == b"native:1"
        # The driver goes away: the watch closes the engine; the clock finds it closed.
        w.watch.state, w.watch.inventory = NvmlState.GONE, None
        w.engines[0].close()
        w.ticker.fire()
        assert await fast.next() == b""
        await until(lambda: w.ticker.close_calls == 1)
        await fast.end()
    run(body)


def test_a_failed_build_answers_empty_and_tries_again() -> None:
    async def body(w: World) -> None:
        from nomad_device_nvidia.nvidia.nvml.executor import CallTimeout

        tries = []
        opener = w.hub._open_engine

        def failing_once(kind: str, options: EngineOptions) -> StatsEngine:
            tries.append(kind)
            if len(tries) == 1:
                raise CallTimeout("nvmlInit_v2 did not return within 3s")
            return opener(kind, options)

        w.hub._open_engine = failing_once
        s = Stream(w, 0.01)
        assert await s.next() == b""
        await until(lambda: bool(w.tickers) and bool(w.ticker.intervals))
        assert len(tries) == 2
        w.ticker.fire()
        while (data := await s.next()) == b"":
            pass
        assert data == b"native:1"
        await s.end()
    run(body)


def test_disabling_the_plugin_ends_the_streams() -> None:
    async def body(w: World) -> None:
        s = Stream(w, 1.0)
        await until(lambda: bool(w.tickers) and bool(w.ticker.intervals))
        w.config = NvidiaConfig.from_mapping({"enabled": False})
        w.ticker.fire()
        assert await s.next() is None
        await asyncio.wait_for(s.task, WAIT_S)
        await until(lambda: w.engines[0].closed)
    run(body)


def test_a_slow_stream_holds_only_the_latest_answer() -> None:
    async def body(w: World) -> None:
        stop = StopEvent()
        answers = w.hub.answers(1.0, stop)
        first = asyncio.get_running_loop().create_task(answers.__anext__())
        await until(lambda: bool(w.tickers) and bool(w.ticker.intervals))
        w.ticker.fire()
        assert await asyncio.wait_for(first, WAIT_S) == b"native:1"
        # The client takes nothing for a while: a thousand answers come.
        for _ in range(1000):
            w.ticker.fire()
            await until(lambda: not w.ticker.ready)
        (sub,) = w.hub._subs[interval_key(1.0)]
        assert sub.waiting == b"native:1001"  # one answer held, the latest
        assert await answers.__anext__() == b"native:1001"
        stop.set()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(answers.__anext__(), WAIT_S)
    run(body)


def test_close_ends_the_streams_and_closes_the_engine() -> None:
    async def body(w: World) -> None:
        s = Stream(w, 1.0)
        await until(lambda: bool(w.tickers) and bool(w.ticker.intervals))
        await asyncio.get_running_loop().run_in_executor(None, w.hub.close)
        assert w.engines[0].closed and w.ticker.close_calls >= 1  # stopped on the closing thread
        assert await s.next() is None
        # The loop stopped watching its descriptor before letting it go.
        await until(lambda: w.hub._ticker is None)
        assert not asyncio.get_running_loop().remove_reader(w.ticker.fileno())
    run(body)


def test_the_thread_clock_shares_one_collection_and_keeps_only_the_latest() -> None:
    """ThreadTicker, the python engine's clock, over the fake engine (a real thread, no sleeps)."""
    engine = FakeEngine("python", EngineOptions())
    ticker = ThreadTicker(engine)
    try:
        ticker.set_intervals([3600 * 10**9, 7200 * 10**9])  # both due at once, then not for an hour
        import select

        assert select.select([ticker.fileno()], [], [], WAIT_S)[0]
        answers = ticker.drain()
        assert answers == [(3600 * 10**9, b"python:1"), (7200 * 10**9, b"python:1")]
        assert ticker.collections == 1 and engine.collected == 1
        assert not select.select([ticker.fileno()], [], [], 0)[0]
        engine.close()
        ticker.set_intervals([1])  # due at once; the engine is closed: the clock stops and says so
        assert select.select([ticker.fileno()], [], [], WAIT_S)[0]
        assert ticker.drain() == [] and ticker.closed
    finally:
        ticker.close()
