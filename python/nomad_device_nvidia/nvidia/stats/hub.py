"""One stats engine per plugin process, shared by every Stats stream.

Every stream goes through one engine: one NVML session, one worker pool and
one XID event set however many streams Nomad (or anyone) opens. The engine is
built on the first stream, rebuilt when `stats_engine` / `extended_stats` /
`call_timeout` change or NVML was re-initialised, and closed when the last
stream closes or the driver goes away.

Two ways in:

- `answers` (the server's path, on the event loop): the engine's clock
  (`contract.Ticker`: a Rust thread for the native engine, `ThreadTicker` for
  the python one) collects once per due interval and makes a descriptor
  readable; the loop's reader callback takes the answers and hands them to
  every stream at that interval. Streams at one interval share one tick and
  one collection; each stream holds at most one answer (the latest) while its
  client is slow. Building, tracking the first set and closing an engine run
  off the loop (a `stats-open` thread each); `track` on a new fingerprint
  never waits.
- `collect` (a blocking caller: `probe`, the plugin's `stats` generator):
  one collection per call, on the caller's thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from nomad_device_nvidia.nvidia.config import NvidiaConfig
from nomad_device_nvidia.nvidia.device_watch import DeviceWatch, NvmlState
from nomad_device_nvidia.nvidia.nvml.executor import SYSTEM, CallTimeout, Executor, RunnerClosed
from nomad_device_nvidia.nvidia.stats.choose import EngineOptions, StatsEngine, TrackedDevice, make_stats_engine
from nomad_device_nvidia.nvidia.stats.contract import Ticker
from nomad_device_nvidia.nvidia.stats.ticking import ticker_for
from nomad_device_nvidia.sdk import StopEvent

log = logging.getLogger(__name__)

Tracked = Callable[[], tuple[int, list[TrackedDevice]]]
# (kind, extended, tick deadline, NVML epoch) an engine is built for
Wanted = tuple[str, bool, float, int]
_NONE: Wanted = ("", False, 0.0, -1)
T = TypeVar("T")


def open_stats_engine(kind: str, options: EngineOptions) -> StatsEngine:
    return make_stats_engine(kind, options=options)


def interval_key(interval: float) -> int:
    """An interval as whole nanoseconds: the key streams at one interval share."""
    return max(1, round(interval * 1e9))


class Subscription:
    """One stream's side of the hub: at most one answer waiting (a newer one replaces it)."""

    __slots__ = ("_ended", "_latest", "_loop", "_waiter", "key")

    def __init__(self, loop: asyncio.AbstractEventLoop, key: int) -> None:
        self._loop = loop
        self.key = key
        self._latest: bytes | None = None
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def waiting(self) -> bytes | None:
        return self._latest

    def offer(self, data: bytes) -> None:
        self._latest = data
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def end_threadsafe(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self.end)
        except RuntimeError:  # the loop is closed: the process is stopping
            pass

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> bytes | None:
        """The next answer; None once the stream is to end (a stop wins over an answer waiting)."""
        while True:
            if self._ended:
                return None
            data = self._latest
            if data is not None:
                self._latest = None
                return data
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class StatsHub:
    """`tracked` returns (generation, devices) of what the fingerprint offers now; `generation` only
    the generation (read on the event loop at each answer, so it must be cheap)."""

    def __init__(
        self,
        *,
        watch: DeviceWatch,
        runner: Executor,
        config: Callable[[], NvidiaConfig],
        tracked: Tracked,
        generation: Callable[[], int] | None = None,
        open_engine: Callable[[str, EngineOptions], StatsEngine] = open_stats_engine,
        make_ticker: Callable[[StatsEngine], Ticker] = ticker_for,
    ) -> None:
        self._watch = watch
        self._runner = runner
        self._config = config
        self._tracked = tracked
        self._generation_now = generation or (lambda: tracked()[0])
        self._open_engine = open_engine
        self._make_ticker = make_ticker
        self._lock = threading.Lock()
        self._closed = False
        # -- the blocking path (`collect`) --
        self._streams = 0
        self._engine: StatsEngine | None = None
        self._built_for: Wanted = _NONE
        self._generation = -1
        # -- the event loop's path (`answers`); changed on the loop, swapped under _lock --
        self._subs: dict[int, set[Subscription]] = {}
        self._last: dict[int, bytes] = {}  # the latest answer per interval, for a stream joining it
        self._ticker: Ticker | None = None
        self._ticker_engine: StatsEngine | None = None
        self._ticker_loop: asyncio.AbstractEventLoop | None = None
        self._ticker_built_for: Wanted = _NONE
        self._ticker_generation = -1
        self._subscribed: tuple[int, ...] = ()
        self._building = False
        self._timers: dict[int, asyncio.Handle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()  # engines being closed off the loop

    # -- the event loop's path --

    @property
    def collections(self) -> int:
        """Collections run by the current engine's clock (0 without one)."""
        ticker = self._ticker
        return ticker.collections if ticker is not None else 0

    @staticmethod
    async def off_loop(fn: Callable[[], T]) -> T:
        """Run a blocking `fn` on a `stats-open` thread of its own, which ends with it.

        For the rare work of a stream's life (building and closing an engine, the
        first stream's wait for the first scan): no thread stays for it between.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if done.done():
                return
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

        def work() -> None:
            try:
                value: Any = fn()
                ok = True
            except BaseException as exc:  # handed to the awaiting coroutine
                value, ok = exc, False
            try:
                loop.call_soon_threadsafe(settle, ok, value)
            except RuntimeError:  # the loop is closed: the process is stopping
                pass

        threading.Thread(target=work, name="stats-open", daemon=True).start()
        try:
            return await done
        finally:
            del done  # no cycle through an exception's traceback

    def subscribe(self, interval: float, stop: threading.Event) -> Subscription:
        """On the event loop: a stream's subscription to answers every `interval` (b"" while NVML
        is not ready); its `next()` gives None once `stop` is set, the hub closes or the plugin is
        disabled by config. `unsubscribe` it when the stream ends."""
        loop = asyncio.get_running_loop()
        sub = Subscription(loop, interval_key(interval))
        if isinstance(stop, StopEvent):
            stop.on_set(sub.end_threadsafe)
        elif stop.is_set():
            sub.end()
        if self._closed:
            sub.end()
            return sub
        joined = sub.key in self._subs
        self._subs.setdefault(sub.key, set()).add(sub)
        self._refresh(loop)
        if joined:
            # Its first answer at once, as every stream's: the interval's latest,
            # or an empty one while there is no engine to collect from.
            last = self._last.get(sub.key)
            if self._ticker is not None and last is not None:
                sub.offer(last)
            elif self._ticker is None and not self._building:
                sub.offer(b"")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]
                self._last.pop(sub.key, None)
        self._refresh(sub.loop)

    async def answers(self, interval: float, stop: threading.Event) -> AsyncIterator[bytes]:
        """`subscribe` as an async iterator."""
        sub = self.subscribe(interval, stop)
        try:
            while (data := await sub.next()) is not None:
                yield data
        finally:
            self.unsubscribe(sub)

    def _ready(self) -> bool:
        return self._watch.state is NvmlState.READY and self._watch.inventory is not None

    def _wanted(self) -> Wanted:
        cfg = self._config()
        # One deadline for every NVML call: a tick waits `call_timeout` for a device.
        return (cfg.stats_engine, cfg.extended_stats, cfg.health.call_timeout, self._watch.epoch)

    def _refresh(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bring the clock in line with the streams, NVML's state, the config and the tracked set."""
        if self._closed or not self._subs:
            self._cancel_timers()
            self._retire(loop)
            return
        if not self._ready():
            self._retire(loop)
        elif not self._building and (self._ticker is None or self._wanted() != self._ticker_built_for):
            # One engine at a time (each has its pool and NVML session): the old
            # one goes first, and answers pause for the build, as they always did.
            self._retire(loop)
            self._building = True
            self._cancel_timers()
            self._spawn(loop, self._build(loop, self._wanted()))
        ticker = self._ticker
        if ticker is None:
            if not self._building:
                for key in self._subs:
                    if key not in self._timers:
                        self._timers[key] = loop.call_soon(self._empty_tick, loop, key)
            return
        self._cancel_timers()
        keys = tuple(sorted(self._subs))
        if keys != self._subscribed:
            ticker.set_intervals(keys)
            self._subscribed = keys
        if self._generation_now() != self._ticker_generation:
            generation, devices = self._tracked()
            ticker.track(devices)  # applied by the clock before its next collection
            self._ticker_generation = generation

    def _on_ready(self) -> None:
        """The clock's descriptor is readable: hand each answer to the streams at its interval."""
        loop, ticker = self._ticker_loop, self._ticker
        if ticker is None or loop is None:
            return
        answers = ticker.drain()
        if ticker.closed:
            log.info("stats engine closed; reopening once NVML is back")
            self._retire(loop)
            self._refresh(loop)
            return
        cfg = self._config()
        if not cfg.enabled:
            log.info("plugin disabled by config; ending the stats stream")
            self._end_all()
            return
        ready = self._ready()
        if not ready:
            # While NVML is down: an empty StatsResponse (no groups), not stale figures.
            answers = [(key, b"") for key, _ in answers]
        for key, data in answers:
            subs = self._subs.get(key)
            if not subs:
                continue
            self._last[key] = data
            for sub in subs:
                sub.offer(data)
        # The steady state costs three comparisons per answer; anything else is _refresh's.
        if (not ready or self._building
                or (cfg.stats_engine, cfg.extended_stats, cfg.health.call_timeout,
                    self._watch.epoch) != self._ticker_built_for):
            self._refresh(loop)
        elif self._generation_now() != self._ticker_generation:
            generation, devices = self._tracked()
            ticker.track(devices)  # applied by the clock before its next collection
            self._ticker_generation = generation

    def _empty_tick(self, loop: asyncio.AbstractEventLoop, key: int) -> None:
        """Without an engine (NVML not ready, or its build failed): b"" at the interval."""
        self._timers.pop(key, None)
        if key not in self._subs:
            return
        if not self._config().enabled:
            log.info("plugin disabled by config; ending the stats stream")
            self._end_all()
            return
        self._refresh(loop)  # may start a build: the next answer then comes from its clock
        if self._ticker is not None or self._building or key not in self._subs:
            return
        for sub in self._subs[key]:
            sub.offer(b"")
        if key not in self._timers:
            self._timers[key] = loop.call_later(key / 1e9, self._empty_tick, loop, key)

    async def _build(self, loop: asyncio.AbstractEventLoop, wanted: Wanted) -> None:
        try:
            if self._closing:  # the engines let go close first (each waits at most one collection)
                await asyncio.wait(set(self._closing))
            built = await self.off_loop(lambda: self._open(wanted))
        except (CallTimeout, RunnerClosed) as exc:
            log.warning("opening the stats engine: %s; trying again at the next tick", exc)
            built = None
        except Exception:
            log.exception("opening the stats engine failed; trying again at the next tick")
            built = None
        finally:
            self._building = False
        if built is None:
            if self._ticker is None:
                for key, subs in self._subs.items():
                    for sub in subs:
                        sub.offer(b"")
                    self._timers[key] = loop.call_later(key / 1e9, self._empty_tick, loop, key)
            return
        engine, ticker, generation = built
        if self._closed or not self._subs or not self._ready() or self._wanted() != wanted:
            self._closing.add(self._spawn(loop, self._close_off_loop(ticker, engine)))  # stale by now
            self._refresh(loop)
            return
        self._retire(loop)
        with self._lock:
            self._ticker, self._ticker_engine, self._ticker_loop = ticker, engine, loop
        self._ticker_built_for, self._ticker_generation, self._subscribed = wanted, generation, ()
        loop.add_reader(ticker.fileno(), self._on_ready)
        self._refresh(loop)

    def _open(self, wanted: Wanted) -> tuple[StatsEngine, Ticker, int]:
        """Off the loop: the engine (built under the deadline on the SYSTEM lane), its first set, its clock."""
        kind, extended, timeout, _ = wanted
        options = EngineOptions(extended=extended, timeout=timeout, calls=self._runner, lanes=self._runner.lanes)
        # Building one inits NVML and makes an event set: under the deadline too.
        engine = self._runner.call(SYSTEM, self._open_engine, kind, options)
        self._watch.add_engine(engine)
        try:
            generation, devices = self._tracked()
            engine.track(devices)
            return engine, self._make_ticker(engine), generation
        except BaseException:
            self._drop(engine)
            raise

    def _retire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let the clock and its engine go; they close off the loop."""
        with self._lock:
            ticker, engine = self._ticker, self._ticker_engine
            self._ticker = self._ticker_engine = None
        self._subscribed = ()
        self._ticker_built_for = _NONE
        self._last.clear()  # answers of that engine: none is offered once it is gone
        if ticker is None:
            return
        loop.remove_reader(ticker.fileno())
        self._closing.add(self._spawn(loop, self._close_off_loop(ticker, engine)))

    async def _close_off_loop(self, ticker: Ticker, engine: StatsEngine | None) -> None:
        def close() -> None:
            ticker.close()  # waits at most for the collection in progress
            self._drop(engine)

        await self.off_loop(close)

    def _spawn(self, loop: asyncio.AbstractEventLoop, work: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = loop.create_task(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._closing.discard)
        return task

    def _cancel_timers(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _end_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.end()

    # -- the blocking path --

    def join(self) -> None:
        with self._lock:
            self._streams += 1

    def leave(self) -> None:
        with self._lock:
            self._streams -= 1
            if self._streams > 0:
                return
            engine, self._engine = self._engine, None
        self._drop(engine)

    def close(self) -> None:
        """Close both paths' engines now (any thread: shutdown's); open streams end."""
        with self._lock:
            self._closed = True
            engine, self._engine = self._engine, None
            ticker, ticker_engine, loop = self._ticker, self._ticker_engine, self._ticker_loop
        self._drop(engine)
        if ticker is not None:
            # Stopped here, but left in place for the loop to stop watching its
            # descriptor (remove_reader) before anything lets it go.
            ticker.close()
            self._drop(ticker_engine)
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._close_on_loop, loop)
            except RuntimeError:  # the loop is closed already
                pass

    def _close_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._end_all()
        self._refresh(loop)  # closed: retires the clock

    def collect(self) -> bytes | None:
        """One tick for one stream; None while NVML is not ready (nothing to read)."""
        with self._lock:
            if self._watch.state is not NvmlState.READY or self._watch.inventory is None:
                engine, self._engine = self._engine, None
                self._drop(engine)
                return None
            wanted = self._wanted()
            if self._engine is None or wanted != self._built_for:
                self._drop(self._engine)
                self._engine = None
                options = EngineOptions(
                    extended=wanted[1], timeout=wanted[2], calls=self._runner, lanes=self._runner.lanes
                )
                try:
                    # Building one inits NVML and makes an event set: under the deadline too.
                    self._engine = self._runner.call(SYSTEM, self._open_engine, wanted[0], options)
                except (CallTimeout, RunnerClosed) as exc:
                    log.warning("opening the stats engine: %s; trying again at the next tick", exc)
                    return None
                self._watch.add_engine(self._engine)
                self._built_for, self._generation = wanted, -1
            engine = self._engine
            generation, devices = self._tracked()
            try:
                if generation != self._generation:
                    engine.track(devices)
                    self._generation = generation
                return engine.collect()
            except RuntimeError as exc:  # closed by the watch as the driver went away
                log.info("stats engine closed (%s); reopening once NVML is back", exc)
                self._engine = None
                self._drop(engine)
                return None

    def _drop(self, engine: StatsEngine | None) -> None:
        if engine is not None:
            self._watch.remove_engine(engine)
            engine.close()
