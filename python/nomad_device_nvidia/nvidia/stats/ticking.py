"""A clock thread for an engine that has none of its own (the python engine).

The same contract as the native engine's Rust clock (`contract.Ticker`): one
thread per engine runs a collection whenever a subscribed interval is due,
keeps the latest answer per interval, and writes one byte to a socket the
event loop watches, so the loop wakes once per answer. Intervals due at the
same moment share one collection.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence

from nomad_device_nvidia.nvidia.stats.contract import StatsEngine, Ticker, TrackedDevice

log = logging.getLogger(__name__)


class ThreadTicker:
    """`engine.collect()` blocks (at most its deadline) on the `stats-clock` thread, never on the loop."""

    def __init__(self, engine: StatsEngine, name: str = "stats-clock") -> None:
        self._engine = engine
        self._rx, self._tx = socket.socketpair()
        self._rx.setblocking(False)
        self._tx.setblocking(False)
        self._cond = threading.Condition()
        self._due: dict[int, float] = {}  # interval (ns) -> next due (monotonic s)
        self._pending: list[TrackedDevice] | None = None
        self._ready: dict[int, bytes] = {}
        self._signalled = False
        self._stop = False
        self._closed = False
        self._collections = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        return self._rx.fileno()

    def set_intervals(self, intervals_ns: Sequence[int]) -> None:
        now = time.monotonic()
        wanted = {k for k in intervals_ns if k > 0}
        with self._cond:
            self._due = {k: self._due.get(k, now) for k in wanted}
            self._ready = {k: v for k, v in self._ready.items() if k in wanted}
            self._cond.notify_all()

    def track(self, devices: Sequence[TrackedDevice]) -> None:
        with self._cond:
            self._pending = list(devices)

    def drain(self) -> list[tuple[int, bytes]]:
        with self._cond:
            # Always one read: the byte of a mark may come after an earlier drain
            # took its answers; that wake then finds none, and reads the byte.
            try:
                self._rx.recv(8)
            except BlockingIOError:
                pass
            self._signalled = False
            ready, self._ready = self._ready, {}
        return sorted(ready.items())

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def collections(self) -> int:
        with self._cond:
            return self._collections

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        # The sockets close with this object: the loop may still be watching
        # the descriptor until it retires the clock.

    def __del__(self) -> None:
        # Let go by whoever watched the descriptor (the hub, after remove_reader).
        self._rx.close()
        self._tx.close()

    def _mark(self) -> bool:  # under self._cond
        """Answers wait; True when the loop must be told (outside the lock, so that the
        loop it wakes does not find the lock taken)."""
        told, self._signalled = self._signalled, True
        return not told

    def _tell(self) -> None:
        try:
            self._tx.send(b"\x01")
        except OSError:  # closed meanwhile: nobody is watching
            pass

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                if not self._due:
                    self._cond.wait()
                    continue
                first = min(self._due.values())
                if first > now:
                    self._cond.wait(first - now)
                    continue
                due = [k for k, t in self._due.items() if t <= now]
                pending, self._pending = self._pending, None
                self._cond.release()
                try:
                    data: bytes | None = self._collect(pending)
                finally:
                    self._cond.acquire()
                after = time.monotonic()
                self._collections += 1
                if data is None:
                    self._closed = True
                    if self._mark():
                        self._tell()
                    return
                delivered = False
                for k in due:
                    if k not in self._due:
                        continue  # dropped meanwhile
                    # A fixed rate; after a collection that overran, one interval later, not a burst.
                    nxt = self._due[k] + k / 1e9
                    self._due[k] = nxt if nxt > after else after + k / 1e9
                    self._ready[k] = data
                    delivered = True
                if delivered and self._mark():
                    self._cond.release()
                    try:
                        self._tell()
                    finally:
                        self._cond.acquire()

    def _collect(self, pending: list[TrackedDevice] | None) -> bytes | None:
        try:
            if pending is not None:
                self._engine.track(pending)
            return self._engine.collect()
        except RuntimeError as exc:  # closed by the watch as the driver went away
            log.info("stats engine closed (%s); its clock stops", exc)
        except Exception:
            log.exception("stats collection failed; the engine's clock stops")
        return None


def ticker_for(engine: StatsEngine) -> Ticker:
    """The engine's own clock when it has one (the native engine's, in Rust), else a `ThreadTicker`."""
    own = getattr(engine, "ticker", None)
    if callable(own):
        ticker: Ticker = own()
        return ticker
    return ThreadTicker(engine)
