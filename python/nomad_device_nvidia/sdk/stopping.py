"""Stop requests that no lock can hold up: SIGTERM, SIGINT, go-plugin's Shutdown, parent death.

A Python signal handler runs in the main thread between two bytecodes of
whatever it interrupted. If it takes a lock the interrupted code holds (as
`Event.set` in a handler does while the main thread sits in `Event.wait` on
the same Event), it waits for itself for ever. So the signal path takes no
lock at all: Python's C-level handler writes the signal number to a pipe
(`signal.set_wakeup_fd`), the Python-level handler does nothing (or, while
the program is still importing, calls `os._exit`), and the main thread reads
that pipe (blocking in `wait`, or from its event loop in `wait_async`). Shutdown and parent death write to the same
pipe (a plain `write(2)`, no lock). The death of the launching process is a
signal too (`prctl(PR_SET_PDEATHSIG)`), checked against `getppid()`.

Once a stop is taken, a deadline thread ends the process with `os._exit`
if the orderly shutdown has not finished by then (a stuck RPC or an
interpreter exit joining a busy worker thread cannot keep it alive).
"""

from __future__ import annotations

import os
import signal

# Imported by the CLI before anything heavy: logging, threading and the rest
# load only where they are used, once the program runs.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

# The signal the kernel sends us when the launching process dies (PR_SET_PDEATHSIG).
PARENT_SIGNAL = signal.SIGUSR1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Bytes on the pipe besides signal numbers.
SHUTDOWN_RPC = 0
PARENT_GONE = 255
# How often the fallback watch (no prctl) compares getppid() with the parent.
PARENT_POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1


def describe(reason: int) -> str:
    if reason == SHUTDOWN_RPC:
        return "Shutdown requested by the host"
    if reason == PARENT_GONE or reason == PARENT_SIGNAL:
        return "the process that launched the plugin is gone"
    try:
        return f"{signal.Signals(reason).name} received"
    except ValueError:
        return f"stop requested ({reason})"


class StopRequests:
    """A pipe every stop source writes one byte to; the main thread waits on it."""

    def __init__(self, *, exit_early: bool = False) -> None:
        """`exit_early`: until `serving()`, SIGTERM and SIGINT end the process at once
        (a program still importing has nothing to clean up, and nothing to wait for)."""
        self._read, self._write = os.pipe()  # both close-on-exec (non-inheritable)
        os.set_blocking(self._write, False)
        self._early = exit_early
        self._installed = False
        self._parent = -1
        self._deadline_started = False

    def install(self) -> None:
        """Take SIGTERM, SIGINT and PARENT_SIGNAL for the rest of the process (main thread only)."""
        if self._installed:
            return
        wanted = {*STOP_SIGNALS, PARENT_SIGNAL}
        # Blocked while the handlers change, so none arrives between the wakeup fd
        # and its handler (it would be lost, or raise KeyboardInterrupt).
        signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
        try:
            signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
            for s in wanted:
                signal.signal(s, self._on_signal)
            self._installed = True
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The Python-level handler. The C-level one has already written `signum` to the pipe."""
        if self._early and signum != PARENT_SIGNAL:
            os._exit(0)  # a syscall: no lock, nothing of ours started yet

    def serving(self) -> None:
        """From now on a stop is taken from the pipe by `wait`, with an orderly shutdown."""
        self._early = False

    def ignore_further(self) -> None:
        """Once a stop is taken: more stop signals are ignored by the kernel itself (SIG_IGN).

        Python resets its own handlers to the default while the interpreter
        exits, so without this a second SIGTERM would kill the exiting process.
        """
        import sys

        sys.unraisablehook = quiet_ignored_signals(sys.unraisablehook)
        for s in (*STOP_SIGNALS, PARENT_SIGNAL):
            signal.signal(s, signal.SIG_IGN)

    def request(self, reason: int) -> None:
        """Ask the main thread to stop; safe from any thread, takes no lock."""
        try:
            os.write(self._write, bytes((reason,)))
        except OSError:  # pipe full (a stop is pending anyway) or closed (stopping)
            pass

    def watch_parent(self, parent: int) -> str:
        """Be told when `parent` dies; returns how ("prctl" or "poll").

        A parent that is already gone (it died while we started, before the
        prctl call) is noticed at once.
        """
        self._parent = parent
        how = "poll"
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(PARENT_SIGNAL), 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):  # not Linux
            pass
        if how == "poll":
            import threading

            threading.Thread(target=self._poll_parent, name="parent-watch", daemon=True).start()
        if os.getppid() != parent:
            self.request(PARENT_GONE)
        return how

    def _poll_parent(self) -> None:
        import time

        while os.getppid() == self._parent:
            time.sleep(PARENT_POLL_SECONDS)
        self.request(PARENT_GONE)

    def wait(self) -> int:
        """Block until a stop request that holds; returns its reason byte."""
        while True:
            reason = self._take(os.read(self._read, 1))
            if reason is not None:
                return reason

    async def wait_async(self) -> int:
        """`wait` for an event loop: the pipe is read when it is readable, nothing polls."""
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            readable: asyncio.Future[None] = loop.create_future()

            def ready(future: asyncio.Future[None] = readable) -> None:
                if not future.done():
                    future.set_result(None)

            loop.add_reader(self._read, ready)
            try:
                await readable
            finally:
                loop.remove_reader(self._read)
            reason = self._take(os.read(self._read, 1))
            if reason is not None:
                return reason

    def _take(self, data: bytes) -> int | None:
        """The reason a byte from the pipe stands for, or None when it is no stop."""
        if not data:
            return PARENT_GONE  # cannot happen while we hold the write end
        reason = data[0]
        # PR_SET_PDEATHSIG also fires when only the parent's thread that
        # started us exits; the parent process is gone only if getppid changed.
        if reason == PARENT_SIGNAL and self._parent != -1 and os.getppid() == self._parent:
            import logging

            logging.getLogger(__name__).debug("the thread that started the plugin exited; its process lives on",
                                              extra={"parent_pid": self._parent})
            return None
        return reason

    def exit_by(self, seconds: float, code: int, cleanup: Callable[[], None]) -> None:
        """From now, the process ends within `seconds`: `cleanup`, then `os._exit(code)`."""
        import threading

        if self._deadline_started:
            return
        self._deadline_started = True
        threading.Thread(target=self._deadline, args=(seconds, code, cleanup), name="exit-deadline",
                         daemon=True).start()

    @staticmethod
    def _deadline(seconds: float, code: int, cleanup: Callable[[], None]) -> None:
        import logging
        import threading
        import time

        log = logging.getLogger(__name__)
        time.sleep(seconds)
        # Logged from another thread and waited for briefly: if stderr is stuck
        # (a host that stopped reading), the exit must not wait on it.
        said = threading.Event()

        def say() -> None:
            log.warning("shutdown did not finish in time; exiting now", extra={"deadline_seconds": seconds})
            said.set()

        threading.Thread(target=say, name="exit-log", daemon=True).start()
        said.wait(0.1)
        try:
            cleanup()
        finally:
            # No flush: every log record is flushed as it is written, and a
            # flush could wait on a stuck stderr.
            os._exit(code)


def quiet_ignored_signals(previous: Callable[[Any], object]) -> Callable[[Any], None]:
    """An unraisable hook that drops CPython's report of a stop signal ignored in a race.

    A signal whose C-level handler ran just before `ignore_further` made it
    SIG_IGN (another thread took it) is then dropped by CPython as an
    unraisable "Signal N ignored due to race condition" OSError, with a
    traceback on stderr. It was ignored as asked: nothing to report.
    Everything else goes to `previous`.
    """
    quiet = {f"Signal {int(s)} ignored due to race condition" for s in (*STOP_SIGNALS, PARENT_SIGNAL)}

    def hook(unraisable: Any) -> None:
        exc = getattr(unraisable, "exc_value", None)
        if isinstance(exc, OSError) and str(exc) in quiet:
            return
        previous(unraisable)

    return hook


def remove_dir(path: str) -> Callable[[], None]:
    def remove() -> None:
        import shutil  # when it runs: shutil loads three compression modules

        shutil.rmtree(path, ignore_errors=True)

    return remove
