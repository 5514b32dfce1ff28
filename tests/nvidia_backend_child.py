"""Runs NvidiaDevicePlugin in a child process for the backend tests.

NVML state (and the loaded libnvidia-ml.so.1) is per process, so each test that
needs a scenario runs the real plugin here, over the simulated library, and gets
a JSON transcript of what happened. Steps come as JSON on argv[1]:

  {"op": "plugin", "simulate": "...", "fail_scans": [1, 3]}
        a new plugin, built as the CLI does from its flags; with `fail_scans`, scan calls
        numbered there raise instead of reading NVML (the constructor's scan seam)
  {"op": "wait_scans", "n": 3, "max_s": 30}    waits until the plugin has ended n scans
  {"op": "wait_tries", "n": 3, "max_s": 30}    waits until the plugin has tried NVML's init n times
  {"op": "sleep", "s": 1}
  {"op": "config", "config": {...}}            set_config; records the error, if any
  {"op": "start"}                              opens a Fingerprint stream (background thread)
  {"op": "wait", "until": "<python expr>", "max_s": 30}
        waits for the next answer (in order) for which the expression holds (`groups` = that
        answer, `answers` = all up to it); records it (or "timeout": true)
  {"op": "reserve", "ids": [...]}              records envs/devices or the refusal
  {"op": "stats", "ticks": 2, "stop_after_s": null, "max_s": 60}
        collects decoded Stats answers on a thread; records whether the stream ended
  {"op": "stats_start"} / {"op": "stats_wait", "ticks": 1}   a Stats stream left open across steps
  {"op": "stats_streams", "n": 8, "ticks": 3}  n Stats streams at once; their ticks and the threads
  {"op": "blocked", "gpu": 1, "samples": 100}
        looks `samples` times (20 ms apart) how many calls are blocked in GPU `gpu`'s hang
        right now (the simulated driver counts them); records the most seen and the last
  {"op": "stop"}                               sets stop; records whether the stream ended
  {"op": "shutdown"}
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

from nomad_device_nvidia.nvidia import fingerprint as fp
from nomad_device_nvidia.nvidia.plugin import NvidiaDevicePlugin
from nomad_device_nvidia.sdk import ConfigError, DeviceGroup, PluginDisabled, ReservationRefused


def encode(groups: Any) -> list[dict[str, Any]]:
    out = []
    for g in groups:
        assert isinstance(g, DeviceGroup)
        out.append(
            {
                "vendor": g.vendor,
                "type": g.device_type,
                "name": g.name,
                "attributes": {k: [a.value, a.unit, type(a.value).__name__] for k, a in g.attributes.items()},
                "devices": [
                    {"id": d.id, "healthy": d.healthy, "why": d.health_description, "pci": d.pci_bus_id} for d in g.devices
                ],
            }
        )
    return out


class Scans:
    """The plugin's scan function: counts calls and raises for the numbered ones."""

    def __init__(self, fail: list[int]) -> None:
        self.calls = 0
        self.fail = set(fail)
        self.changed = threading.Condition()

    def __call__(self, previous: fp.Inventory | None) -> fp.Inventory:
        with self.changed:
            self.calls += 1
            n = self.calls
            self.changed.notify_all()
        if n in self.fail:
            raise RuntimeError(f"injected scan failure {n}")
        return fp.scan(previous)

    def follow(self, plugin: NvidiaDevicePlugin) -> None:
        """Count the plugin's own per-GPU scans instead of seam calls."""
        self.plugin = plugin

    def wait(self, n: int, max_s: float) -> dict[str, Any]:
        plugin = getattr(self, "plugin", None)
        if plugin is not None:
            deadline = time.monotonic() + max_s
            while plugin._watch.scans < n and time.monotonic() < deadline:
                time.sleep(0.01)
            return {"scans": plugin._watch.scans}
        with self.changed:
            self.changed.wait_for(lambda: self.calls >= n, timeout=max_s)
            return {"scans": self.calls}


class StatsRun:
    """One Stats stream on its own thread, as the gRPC service runs it."""

    def __init__(self, plugin: NvidiaDevicePlugin, interval: float) -> None:
        self.stop = threading.Event()
        self.ticks: list[dict[str, list[str]]] = []
        self.error = ""
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, args=(plugin, interval), daemon=True)
        self.thread.start()

    def _run(self, plugin: NvidiaDevicePlugin, interval: float) -> None:
        from nomad_device_nvidia._proto.nomad import device_pb2

        try:
            for item in plugin.stats(interval, self.stop):
                msg = item if not isinstance(item, bytes) else device_pb2.StatsResponse.FromString(item)
                with self.changed:
                    self.ticks.append({g.name: sorted(g.instance_stats.keys()) for g in msg.groups})
                    self.changed.notify_all()
        except Exception as exc:  # recorded for the test to see
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self.changed:
                self.changed.notify_all()

    def wait(self, ticks: int, max_s: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: len(self.ticks) >= ticks or not self.thread.is_alive(), timeout=max_s)

    def report(self) -> dict[str, Any]:
        return {"ticks": list(self.ticks), "ended": not self.thread.is_alive(), "error": self.error}


class Stream:
    def __init__(self, plugin: NvidiaDevicePlugin) -> None:
        self.stop = threading.Event()
        self.answers: list[list[dict[str, Any]]] = []
        self.cursor = 0
        self.error = ""
        self.ended = threading.Event()
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, args=(plugin,), daemon=True)
        self.thread.start()

    def _run(self, plugin: NvidiaDevicePlugin) -> None:
        try:
            for groups in plugin.fingerprint(self.stop):
                answer = encode(groups)
                with self.changed:
                    # As the SDK service does: an answer equal to the last one is not sent.
                    if self.answers and self.answers[-1] == answer:
                        continue
                    self.answers.append(answer)
                    self.changed.notify_all()
        except PluginDisabled as exc:
            self.error = f"PluginDisabled: {exc}"
        except Exception as exc:  # recorded for the test to see
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ended.set()
            with self.changed:
                self.changed.notify_all()

    def wait(self, until: str, max_s: float, from_start: bool = False) -> dict[str, Any]:
        """The first answer, from where the last wait matched on, for which `until` holds.

        Answers are checked in order, so a short-lived state (a GPU lost and back
        between two looks) is still seen.
        """
        deadline = time.monotonic() + max_s
        if from_start:
            self.cursor = 0
        with self.changed:
            while True:
                for k in range(self.cursor, len(self.answers)):
                    groups, seen = self.answers[k], self.answers[: k + 1]
                    if eval(until, {"groups": groups, "answers": seen}):  # noqa: S307
                        self.cursor = k
                        return {"groups": groups, "count": len(seen)}
                if self.ended.is_set():
                    return {"ended": True, "error": self.error, "count": len(self.answers)}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    latest = self.answers[-1] if self.answers else None
                    return {"timeout": True, "groups": latest, "count": len(self.answers), "error": self.error}
                self.changed.wait(remaining)


def nvml_view(ids: list[str]) -> dict[str, Any]:
    """An independent look through pynvml: what each offered ID is, and which GPUs are MIG parents."""
    import pynvml

    view: dict[str, Any] = {"ids": {}, "mig_parents": [], "gpus": []}
    for i in ids:
        h = pynvml.nvmlDeviceGetHandleByUUID(i)
        is_mig = bool(pynvml.nvmlDeviceIsMigDeviceHandle(h))
        parent = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(h)) if is_mig else ""
        view["ids"][i] = {"mig": is_mig, "parent": parent, "name": pynvml.nvmlDeviceGetName(h)}
    for n in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(n)
        uuid = pynvml.nvmlDeviceGetUUID(h)
        view["gpus"].append(uuid)
        try:
            if pynvml.nvmlDeviceGetMigMode(h)[0] == pynvml.NVML_DEVICE_MIG_ENABLE:
                view["mig_parents"].append(uuid)
        except pynvml.NVMLError:
            pass
    return view


def blocked_calls(gpu: int) -> int:
    """Calls blocked in a hang of GPU `gpu` now, as the simulated driver counts them."""
    import ctypes

    import pynvml

    count = ctypes.c_uint(0)
    rc = pynvml.nvmlLib.nvmlSimGetBlockedCalls(ctypes.c_int(gpu), ctypes.byref(count))
    assert rc == 0, f"nvmlSimGetBlockedCalls returned {rc}"
    return int(count.value)


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    steps = json.loads(sys.argv[1])
    scans = Scans([])
    plugin = NvidiaDevicePlugin()
    scans.follow(plugin)
    stream: Stream | None = None
    stats_run: StatsRun | None = None
    out: list[dict[str, Any]] = []
    for step in steps:
        op = step["op"]
        if op == "plugin":  # as the CLI builds it, from --nvml-library / --simulate
            fail = step.get("fail_scans")
            scans = Scans(fail or [])
            plugin = NvidiaDevicePlugin(
                nvml_library=step.get("nvml_library", ""),
                simulate=step.get("simulate", ""),
                scan=scans if fail else None,
            )
            if not fail:
                scans.follow(plugin)
            out.append({"ok": True})
        elif op == "wait_scans":
            out.append(scans.wait(step["n"], step.get("max_s", 30)))
        elif op == "wait_tries":
            deadline = time.monotonic() + step.get("max_s", 30)
            while plugin.watch.tries < step["n"] and time.monotonic() < deadline:
                time.sleep(0.01)
            out.append({"tries": plugin.watch.tries})
        elif op == "sleep":
            time.sleep(step["s"])
            out.append({"ok": True})
        elif op == "config":
            try:
                plugin.set_config(step["config"])
                out.append({"ok": True})
            except ConfigError as exc:
                out.append({"error": str(exc)})
        elif op == "start":
            stream = Stream(plugin)
            out.append({"ok": True})
        elif op == "wait":
            assert stream is not None
            out.append(stream.wait(step["until"], step.get("max_s", 30), step.get("from_start", False)))
        elif op == "reserve":
            try:
                r = plugin.reserve(step["ids"])
                out.append(
                    {
                        "envs": dict(r.envs),
                        "devices": [[d.task_path, d.host_path, d.permissions] for d in r.devices],
                    }
                )
            except (ReservationRefused, PluginDisabled) as exc:
                out.append({"refused": str(exc), "kind": type(exc).__name__})
        elif op == "stats":
            run = StatsRun(plugin, step.get("interval", 0.05))
            if step.get("stop_after_s") is not None:
                run.thread.join(step["stop_after_s"])
            else:
                run.wait(step.get("ticks", 2), step.get("max_s", 60))
            run.stop.set()
            run.thread.join(step.get("max_s", 60))
            out.append(run.report())
        elif op == "stats_streams":  # n Stats streams open at once, each until it has `ticks`
            runs = [StatsRun(plugin, step.get("interval", 0.05)) for _ in range(step["n"])]
            for run in runs:
                run.wait(step.get("ticks", 2), step.get("max_s", 60))
            threads = sorted(t.name for t in threading.enumerate())
            for run in runs:
                run.stop.set()
            for run in runs:
                run.thread.join(step.get("max_s", 60))
            out.append({"reports": [run.report() for run in runs], "names": threads})
        elif op == "stats_start":
            stats_run = StatsRun(plugin, step.get("interval", 0.05))
            out.append({"ok": True})
        elif op == "stats_wait":
            assert stats_run is not None
            stats_run.wait(step.get("ticks", 1), step.get("max_s", 30))
            out.append(stats_run.report())
        elif op == "stats_stop":
            assert stats_run is not None
            stats_run.stop.set()
            stats_run.thread.join(step.get("max_s", 10))
            out.append(stats_run.report())
        elif op == "stop":
            assert stream is not None
            stream.stop.set()
            stream.thread.join(timeout=step.get("max_s", 10))
            out.append({"ended": not stream.thread.is_alive(), "answers": len(stream.answers), "error": stream.error})
        elif op == "blocked":
            seen = []
            for _ in range(step.get("samples", 100)):
                seen.append(blocked_calls(step["gpu"]))
                time.sleep(0.02)
            out.append({"most": max(seen), "last": seen[-1]})
        elif op == "nvml_view":
            out.append(nvml_view(step["ids"]))
        elif op == "nvml_initialised":
            import pynvml

            try:
                pynvml.nvmlDeviceGetCount()
                out.append({"initialised": True})
            except pynvml.NVMLError_Uninitialized:
                out.append({"initialised": False})
        elif op == "nvml_loaded":
            import pynvml

            out.append({"loaded": pynvml.nvmlLib is not None})
        elif op == "threads":
            # "gone" / "present": poll (up to max_s) until no thread / a thread has that name.
            deadline = time.monotonic() + step.get("max_s", 0)
            while True:
                names = sorted(t.name for t in threading.enumerate())
                if "gone" in step and step["gone"] in names or "present" in step and step["present"] not in names:
                    if time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                break
            out.append({"names": names})
        elif op == "shutdown":
            plugin.shutdown()
            out.append({"ok": True})
        else:
            raise SystemExit(f"unknown op {op}")
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
