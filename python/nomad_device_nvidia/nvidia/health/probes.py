"""Health probes: one cheap read per device of each physical GPU, under the deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

from nomad_device_nvidia.nvidia.fingerprint import (
    UNSUPPORTED_CODES,
    GpuDevice,
    failure_of,
    physical_devices,
    read_fabric,
)
from nomad_device_nvidia.nvidia.health.book import FABRIC, READ, RETIREMENT, HealthBook
from nomad_device_nvidia.nvidia.nvml.executor import PROBE, Executor, Calls, CallTimeout
from nomad_device_nvidia.nvidia.nvml.session import DRIVER_GONE_CODES

log = logging.getLogger(__name__)

def retirement_problem(c: Calls, handle: Any) -> str:
    """Pending page retirement or row remapping, or a failed remapping; "" when none.

    The driver keeps this state across plugin restarts, so a relaunched plugin finds it again.
    """
    try:
        if c(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle):
            return "pending page retirement after uncorrectable ECC errors (reset the GPU)"
    except pynvml.NVMLError as exc:
        if exc.value not in UNSUPPORTED_CODES:
            raise
    try:
        _corr, _uncorr, pending, failed = c(pynvml.nvmlDeviceGetRemappedRows, handle)
    except pynvml.NVMLError as exc:
        if exc.value not in UNSUPPORTED_CODES:
            raise
        return ""
    if failed:
        return "row remapping failed after uncorrectable ECC errors"
    if pending:
        return "pending row remapping after uncorrectable ECC errors (reset the GPU)"
    return ""


@dataclass
class ProbeResult:
    """One physical GPU's probe: per device the NVML error (None: it answered), and its memory state."""

    errors: dict[str, pynvml.NVMLError | None]
    retirement: str | None  # None: not known (the GPU did not answer)
    # The NVLink fabric's problem ("" when none, or no fabric); None: not known.
    fabric: str | None = None


def probe_gpu(c: Calls, members: Sequence[GpuDevice]) -> ProbeResult:
    """One cheap read per device of one physical GPU, then its memory retirement state."""
    errors: dict[str, pynvml.NVMLError | None] = {}
    handles: dict[str, Any] = {}
    for dev in members:
        try:
            handle = handles[dev.id] = c(pynvml.nvmlDeviceGetHandleByUUID, dev.id)
            c(pynvml.nvmlDeviceGetMemoryInfo, handle)
        except pynvml.NVMLError as exc:
            # NOT_SUPPORTED (an integrated GPU) is an answer too.
            errors[dev.id] = None if exc.value in UNSUPPORTED_CODES else exc
            continue
        errors[dev.id] = None
    retirement: str | None = None
    fabric: str | None = None
    if members and all(e is None for e in errors.values()):
        try:
            # A whole GPU is its own member: its handle was just looked up.
            uuid = members[0].physical_uuid
            gpu = handles[uuid] if uuid in handles else c(pynvml.nvmlDeviceGetHandleByUUID, uuid)
            retirement = retirement_problem(c, gpu)
            # CUDA fails on a GPU whose NVLink fabric registration is not complete.
            info = read_fabric(c, gpu)
            fabric = info.problem() if info is not None else ""
        except pynvml.NVMLError:
            pass  # the next probe tries again; the reads above answered
    return ProbeResult(errors, retirement, fabric)


def record_probe(book: HealthBook, members: Sequence[GpuDevice], result: ProbeResult) -> None:
    for dev in members:
        exc = result.errors.get(dev.id)
        if exc is not None and exc.value in DRIVER_GONE_CODES:
            continue  # about the driver, not this GPU: the scan that follows decides
        if exc is not None:
            book.failed(dev.id, failure_of(exc))
        else:
            book.answered(dev.id)
        if result.retirement:
            book.mark(dev.id, RETIREMENT, result.retirement)
        elif result.retirement == "":
            book.clear(dev.id, RETIREMENT)
        if result.fabric:
            book.mark(dev.id, FABRIC, result.fabric)
        elif result.fabric == "":
            book.clear(dev.id, FABRIC)


def record_stuck(book: HealthBook, members: Sequence[GpuDevice], timeout: CallTimeout) -> None:
    for dev in members:
        book.mark(dev.id, READ, str(timeout))


def probe_all(runner: Executor, devices: Sequence[GpuDevice], book: HealthBook) -> set[int]:
    """Probe every physical GPU, in one job that holds each GPU's lane while it reads it;
    returns the NVML error codes seen.

    One job a round, not one per GPU: the calls take microseconds, and a
    hand-off per GPU cost more than the reads (and a worker per GPU). A GPU
    whose probe blocks makes the round end at the deadline, that GPU marked;
    the GPUs after it are read at the next round, which skips the blocked one
    at once (its lane is still held by the blocked call).
    """
    gpus = list(physical_devices(devices).items())
    done: list[tuple[Sequence[GpuDevice], ProbeResult]] = []
    skipped: list[tuple[Sequence[GpuDevice], CallTimeout]] = []
    reading: list[Sequence[GpuDevice]] = []  # the GPU the job is on

    def work(c: Calls) -> None:
        for uuid, members in gpus:
            if not c.hold(uuid, time.monotonic() + runner.timeout):
                call = runner.overdue_on(uuid)
                if call:  # still blocked since an earlier call
                    skipped.append((members, CallTimeout(call, runner.timeout, uuid)))
                continue  # else busy with other work all this while: read at the next round
            reading[:] = [members]
            try:
                done.append((members, probe_gpu(c, members)))
            finally:
                c.release(uuid)
        reading.clear()

    blocked: tuple[Sequence[GpuDevice], CallTimeout] | None = None
    try:
        # A lane of its own each round: a round whose job is blocked does not hold up the next.
        runner.run((PROBE, object()), work, what="a health probe")
    except CallTimeout as exc:
        if reading:
            blocked = (reading[0], exc)
    seen: set[int] = set()
    with book.together():  # one fingerprint update for the round
        for members, result in list(done):  # a copy: a job that blocked may add to it later
            record_probe(book, members, result)
            seen.update(int(e.value) for e in result.errors.values() if e is not None)
        for members, timeout in [*list(skipped), *([blocked] if blocked else [])]:
            record_stuck(book, members, timeout)
    return seen

