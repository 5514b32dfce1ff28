"""Open streams, their stop events, and the threads that run plugin code off the event loop.

The server is grpc.aio: one event loop thread serves every RPC, so nothing
that may block runs on it. A plugin's stream (a blocking iterator) runs on a
thread of its own for as long as the stream is open, and hands each answer to
the loop (`pump`); unary plugin calls run on a small pool whose idle threads
exit (`Offload`). An idle plugin therefore has no thread that wakes up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from nomad_device_nvidia.sdk.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

T = TypeVar("T")
# A client over a stream bound gets one warning line per kind this often, with the count refused.
_REFUSAL_LOG_EVERY_S = 10.0
# How long an idle offload thread waits for more work before it exits.
_OFFLOAD_IDLE_S = 10.0


class StopEvent(threading.Event):
    """A stream's stop event: set when the client cancels the stream or the server stops.

    `on_set` callbacks run once, when it is set (at once if it already is), so
    a plugin can wake its own waits instead of polling the event.
    """

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._guard = threading.Lock()

    def on_set(self, callback: Callable[[], None]) -> None:
        with self._guard:
            if not self.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def set(self) -> None:
        with self._guard:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("stream stop callback failed")


class StreamRefused(Exception):
    """A stream over its kind's bound; the handler answers RESOURCE_EXHAUSTED with this message."""


class StreamRegistry:
    """The open streams, counted by kind against their bounds, so shutdown can end them all at once."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._open: dict[StopEvent, str] = {}
        self._counts: dict[str, int] = {}
        self._refused: dict[str, int] = {}  # refusals since the last log line, by kind
        self._refusal_logged: dict[str, float] = {}
        self._closed = False

    def open(self, kind: str) -> StopEvent:
        """Count a new stream of `kind`; over its bound, raise `StreamRefused`."""
        bound = self._limits.stream_bound(kind)
        stop = StopEvent()
        with self._lock:
            refused = self._counts.get(kind, 0) >= bound
            if refused:
                self._refused[kind] = self._refused.get(kind, 0) + 1
                now = time.monotonic()
                log_now = now - self._refusal_logged.get(kind, -_REFUSAL_LOG_EVERY_S) >= _REFUSAL_LOG_EVERY_S
                if log_now:
                    self._refusal_logged[kind] = now
                    count, self._refused[kind] = self._refused[kind], 0
            else:
                self._counts[kind] = self._counts.get(kind, 0) + 1
                self._open[stop] = kind
        if refused:
            if log_now:  # not under the lock: a slow stderr must not hold up other streams
                log.warning("stream refused: too many open", extra={"stream": kind, "bound": bound,
                                                                     "refused": count})
            raise StreamRefused(f"too many open {kind} streams: this plugin serves at most {bound} at a time; "
                                "close one before opening another")
        if self._closed:
            stop.set()
        return stop

    def close(self, stop: StopEvent) -> None:
        stop.set()
        with self._lock:
            kind = self._open.pop(stop, None)
            if kind is not None:
                self._counts[kind] -= 1

    def stop_all(self) -> None:
        with self._lock:
            self._closed = True
            events = list(self._open)
        for event in events:
            event.set()


async def stopped(stop: StopEvent) -> None:
    """Wait on the event loop until `stop` is set."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: the process is stopping
            pass

    stop.on_set(wake)
    await done


async def pump(items: Callable[[StopEvent], Iterator[T]], stop: StopEvent, name: str) -> AsyncIterator[T]:
    """Run the blocking iterator `items(stop)` on its own thread and yield what it yields, in order.

    The thread holds at most one answer the loop has not taken. When `stop` is
    set (the client cancels, the server stops, or the consumer stops), the
    stream ends at once and the thread is let go; the iterator is expected to
    return soon after.
    An exception raised by the iterator is raised here.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    # A permit per answer the loop has taken: the thread waits for one only
    # before handing over the next answer, so a client that keeps up costs it
    # no wake-up beyond the plugin's own.
    taken = threading.Semaphore(1)

    def post(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the process is stopping
            pass

    def run() -> None:
        try:
            for item in items(stop):
                taken.acquire()
                if stop.is_set():
                    return
                post("item", item)
        except BaseException as exc:  # handed to the loop, which answers the RPC with it
            post("error", exc)
        else:
            post("end", None)

    stop.on_set(taken.release)  # a thread waiting for its answer to be taken sees the stop
    # A stop ends the stream at once, without waiting for the thread to notice
    # (it may be inside the plugin for a while); the thread finishes on its own.
    stop.on_set(lambda: post("end", None))
    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                try:
                    raise value
                finally:
                    del value  # no cycle through this frame (see Offload.run)
            taken.release()  # the thread may hand over the next answer while this one is sent
            yield value
    finally:
        stop.set()


class Offload:
    """Runs blocking calls off the event loop on at most `workers` threads; idle ones exit."""

    def __init__(self, workers: int, name: str = "offload") -> None:
        self._workers = max(1, workers)
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[Callable[[], None]] = deque()
        self._threads = 0
        self._idle = 0

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        # Reached through a box the caller empties: otherwise a failed call makes a
        # cycle (future -> exception -> traceback -> frames -> future) that holds
        # its request until the GC runs, which with large requests is a lot of memory.
        box = [future]

        def settle(ok: bool, value: Any) -> None:
            if not box or box[0].done():  # the RPC was cancelled meanwhile
                return
            if ok:
                box[0].set_result(value)
            else:
                box[0].set_exception(value)

        def post(ok: bool, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(settle, ok, value)
            except RuntimeError:  # the loop is closed: the process is stopping
                pass

        def call() -> None:
            try:
                value = fn()
            except BaseException as exc:
                post(False, exc)
                return
            post(True, value)

        with self._cond:
            self._queue.append(call)
            if self._idle >= len(self._queue):  # an idle thread for each queued call, this one included
                self._cond.notify()
            elif self._threads < self._workers:
                self._threads += 1
                threading.Thread(target=self._worker, name=f"{self._name}", daemon=True).start()
        try:
            return await future
        finally:
            box.clear()
            del future

    def _worker(self) -> None:
        with self._cond:
            while True:
                while not self._queue:
                    self._idle += 1
                    woke = self._cond.wait(_OFFLOAD_IDLE_S)
                    self._idle -= 1
                    if not woke and not self._queue:
                        self._threads -= 1
                        return
                call = self._queue.popleft()
                self._cond.release()
                try:
                    call()
                finally:
                    self._cond.acquire()
