"""Per-device health: what is wrong with each device, the probes, and the NVML event watcher.

A device is healthy when it has no open condition. Conditions come from NVML
events (critical XIDs, double-bit ECC), from reads that fail or do not return
in time (lost GPU, other NVML errors, a blocked call), from polled state
(pending page retirement / row remapping, an NVLink fabric not ready or
unhealthy) and from the driver going away.
Recovery: a failed read clears when the device answers again; an XID or ECC
condition clears when the GPU is seen going away and answering again (a
GPU reset or a driver reload), which is what an operator does to recover such a GPU.
Every NVML call here runs on a `Executor` lane, under its deadline.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from nomad_device_nvidia.nvidia.fingerprint import ScanFailure

log = logging.getLogger(__name__)

DRIVER = "driver"
LOST = "lost"
READ = "read"
XID = "xid"
ECC = "ecc"
RETIREMENT = "retirement"
FABRIC = "fabric"
_ORDER = (DRIVER, LOST, XID, ECC, RETIREMENT, FABRIC, READ)
# Conditions only a GPU reset (or a driver reload) clears.
_RESET_CLEARED = (LOST, XID, ECC)


# Distinct XIDs named in a device's health description; more are counted.
_XIDS_LISTED = 3

# Short meanings of the XIDs operators meet most, to make health_description useful.
XID_MEANINGS = {
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping event",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}


def xid_description(xid: int) -> str:
    meaning = XID_MEANINGS.get(xid)
    return f"XID {xid} ({meaning})" if meaning else f"XID {xid}"


class HealthBook:
    """Open conditions per device ID; thread-safe; calls `on_change` after a change."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._conditions: dict[str, dict[str, str]] = {}
        self._xids: dict[str, list[int]] = {}  # distinct critical XIDs per device, in order seen
        self._on_change = on_change
        self._depth = 0  # open together() blocks (of the thread holding the lock)
        self._pending = False  # a change inside them, not yet told

    @contextmanager
    def together(self) -> Iterator[None]:
        """The changes made inside are seen at once: readers wait for the block to end,
        and `on_change` is called once after it. So the devices of one GPU go unhealthy
        in one fingerprint update, not one at a time."""
        with self._lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                tell = self._depth == 0 and self._pending
                if tell:
                    self._pending = False
        if tell:
            self._on_change()

    def _changed(self) -> bool:
        """Under the lock, after a change: whether to call `on_change` now (after releasing it)."""
        if self._depth:
            self._pending = True
            return False
        return True

    def _apply(self, change: Callable[[], bool]) -> None:
        with self._lock:
            tell = change() and self._changed()
        if tell:
            self._on_change()

    def mark(self, device_id: str, cause: str, description: str) -> None:
        def change() -> bool:
            conds = self._conditions.setdefault(device_id, {})
            if conds.get(cause) == description:
                return False
            if cause not in conds:
                log.warning("device %s unhealthy: %s", device_id, description)
            conds[cause] = description
            return True

        self._apply(change)

    def mark_xid(self, device_id: str, xid: int) -> None:
        """A critical XID: the description lists the distinct XIDs seen since the last reset,
        so it changes when a new kind comes, not with every event of a storm."""
        with self._lock:
            seen = self._xids.setdefault(device_id, [])
            if xid not in seen:
                seen.append(xid)
            listed = ", ".join(xid_description(x) for x in seen[:_XIDS_LISTED])
            more = len(seen) - _XIDS_LISTED
        self.mark(device_id, XID, f"{listed}{f' and {more} more XIDs' if more > 0 else ''} reported")

    def clear(self, device_id: str, *causes: str) -> None:
        with self._lock:
            conds = self._conditions.get(device_id)
            if not conds:
                return  # a healthy device: what a probe round finds on most of them
            gone = [c for c in causes if c in conds]
            if not gone:
                return
            if XID in gone:
                self._xids.pop(device_id, None)
            for c in gone:
                del conds[c]
            if not conds:
                log.info("device %s is healthy again", device_id)
            tell = self._changed()
        if tell:
            self._on_change()

    def failed(self, device_id: str, failure: ScanFailure) -> None:
        self.mark(device_id, LOST if failure.lost else READ, failure.description)

    def answered(self, device_id: str) -> None:
        """The device answered a read: read errors are over, and a GPU back from lost
        (or from a driver that went away) was reset."""
        with self._lock:
            conds = self._conditions.get(device_id)
            if not conds:
                return
            was_reset = LOST in conds or DRIVER in conds
        self.clear(device_id, READ, DRIVER, *(_RESET_CLEARED if was_reset else ()))

    def retain(self, device_ids: Iterable[str]) -> None:
        keep = set(device_ids)

        def change() -> bool:
            gone = [d for d in self._conditions if d not in keep]
            for d in gone:
                del self._conditions[d]
                self._xids.pop(d, None)
            return False  # forgotten devices are no longer offered; nothing to re-send

        self._apply(change)

    def having(self, cause: str) -> set[str]:
        """The devices with an open condition of `cause`."""
        with self._lock:
            return {d for d, conds in self._conditions.items() if cause in conds}

    def status(self, device_id: str) -> tuple[bool, str]:
        with self._lock:
            conds = self._conditions.get(device_id)
            if not conds:
                return True, ""
            return False, "; ".join(conds[c] for c in _ORDER if c in conds)




