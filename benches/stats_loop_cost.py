"""What one Stats answer costs the plugin process, by path, in one run (no gRPC).

The NVIDIA plugin runs in-process on the simulated driver (8 H100s,
benches/scenarios/side-by-side-8.toml) and a consumer on an asyncio loop takes
`--answers` answers at `--interval` from:

- `loop`: `stats_stream`, the server's path: the engine's clock thread collects
  and signals the loop once per answer;
- `thread`: the plugin's blocking `stats` run by the SDK's `pump` on a thread of
  its own per stream, each answer handed to the loop (the path of plugins
  without `stats_stream`);

and, for the design choice (ticks on the engine's clock rather than loop timers),
`timer`: one empty asyncio timer wake, which a loop-scheduled tick would add to
every answer. Each runs in a fresh child process; the figures are the loop
thread's CPU (`time.thread_time`) and the whole process's (`time.process_time`,
every thread, the simulated driver included) per answer, and the wake-ups
(voluntary context switches) of the loop thread and of every thread per
answer; medians over `--rounds`, and the CPU's ratio to `thread`.

    .venv/bin/python benches/stats_loop_cost.py              # about 30 s
    .venv/bin/python benches/stats_loop_cost.py --json build/stats-loop-cost.json

Prerequisites: `make native sim`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "build" / "sim" / "libnvidia-ml.so.1"
SCENARIO = ROOT / "benches" / "scenarios" / "side-by-side-8.toml"
# The first answers build the engine and warm caches; they are not counted.
WARMUP = 20

CHILD = r"""
import asyncio, glob, json, sys, threading, time
mode, n, interval, sim, scenario = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
WARMUP = int(sys.argv[6])

def switches(tid: str = "*") -> int:
    # Voluntary context switches: a thread going to sleep, so each is one wake-up later.
    total = 0
    for path in glob.glob(f"/proc/self/task/{tid}/status"):
        try:
            with open(path) as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except OSError:  # a thread that ended meanwhile
            pass
    return total

def figures(c0: float, p0: float, w0: int, l0: int, n: int) -> dict:
    me = str(threading.get_native_id())
    return {"loop_ms": 1000 * (time.thread_time() - c0) / n, "process_ms": 1000 * (time.process_time() - p0) / n,
            "loop_wakes": (switches(me) - l0) / n, "process_wakes": (switches() - w0) / n}

def start() -> tuple:
    return time.thread_time(), time.process_time(), switches(), switches(str(threading.get_native_id()))

async def timer() -> dict:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0
    def tick() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)
        else:
            loop.call_later(interval, tick)
    c0, p0, w0, l0 = start()
    loop.call_later(interval, tick)
    await done
    return figures(c0, p0, w0, l0, n)

async def answers() -> dict:
    from nomad_device_nvidia.nvidia.plugin import NvidiaDevicePlugin
    from nomad_device_nvidia.sdk import StopEvent
    from nomad_device_nvidia.sdk.streams import pump
    plugin = NvidiaDevicePlugin(nvml_library=sim, simulate=scenario)
    plugin.set_config({})
    stop = StopEvent()
    it = plugin.stats_stream(interval, stop) if mode == "loop" else pump(lambda s: plugin.stats(interval, s), stop, "stats")
    seen = 0
    async for _ in it:
        seen += 1
        if seen == WARMUP:
            c0, p0, w0, l0 = start()
        if seen == WARMUP + n:
            break
    out = figures(c0, p0, w0, l0, n)
    stop.set()
    await asyncio.sleep(0)
    plugin.shutdown()
    return out

print(json.dumps(asyncio.run(timer() if mode == "timer" else answers())))
"""


def run(mode: str, answers: int, interval: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(answers), str(interval), str(SIM), str(SCENARIO),
                          str(WARMUP)], capture_output=True, text=True, timeout=600, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answers", type=int, default=300)
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between answers")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not SIM.exists():
        print(f"{SIM} is missing: run `make sim`", file=sys.stderr)
        return 2
    modes = ("thread", "loop", "timer")
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(args.rounds):  # interleaved, so that a change in the machine's load hits every mode
        for m in modes:
            samples[m].append(run(m, args.answers, args.interval))
    keys = ("loop_ms", "process_ms", "loop_wakes", "process_wakes")
    med = {m: {k: statistics.median(s[k] for s in samples[m]) for k in keys} for m in modes}
    print(f"{args.answers} answers at {args.interval * 1000:g} ms, 8 simulated GPUs, median of {args.rounds} rounds")
    print(f"{'path':8} {'loop ms/answer':>15} {'process ms/answer':>18} {'process vs thread':>18}"
          f" {'loop wakes/answer':>18} {'process wakes/answer':>21}")
    for m in modes:
        ratio = med[m]["process_ms"] / med["thread"]["process_ms"]
        print(f"{m:8} {med[m]['loop_ms']:15.3f} {med[m]['process_ms']:18.3f} {ratio:18.2f}"
              f" {med[m]['loop_wakes']:18.2f} {med[m]['process_wakes']:21.2f}")
    if args.json:
        args.json.write_text(json.dumps({"answers": args.answers, "interval_s": args.interval, "rounds": args.rounds,
                                         "median": med, "samples": samples}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
