"""Our plugin and HashiCorp's Go plugin side by side, on the same simulated GPUs.

Both plugins are driven by the project's Go harness (build/bin/harness, Nomad's own
client code) over the simulated driver (build/sim/libnvidia-ml.so.1), each given
`LD_LIBRARY_PATH=build/sim` and `NVML_SIM_SCENARIO=benches/scenarios/side-by-side-N.toml`
(N = 1, 8, 56, 512, 4096 whole H100s, no added driver latency) and its default config.
For each plugin and size, one `harness cost` run measures, from /proc/<pid>:

- idle: the plugin configured, its Fingerprint stream open, no Stats;
- stats at each interval (1 s, 100 ms): a Stats stream open at that interval;

each phase --settle seconds after its stream's first answer (a Stats phase half an interval off
the answers' beat, so the window holds whole answers), over --window seconds:
CPU in ms per second of wall time (the threads' schedstat run time, the simulated driver
included as it runs inside the plugin), Stats answers per second, threads and VmRSS at
the window's end, and wakes: the threads' context switches (voluntary and involuntary),
per thread too. Per Stats answer: the phase's CPU and wakes above the plugin's own idle,
divided by the answers (what one more answer costs; each plugin against its own idle).
Then `harness handshake-latency --mode handshake` gives exec to the go-plugin handshake
line on stdout, median of --launches launches (HashiCorp's plugin initialises NVML before
it answers; ours does at SetConfig).

--floor adds a third row per size, "floor": benches/runtime_floor.py's streaming floor, a
bare `grpc.aio` server that streams ready-made StatsResponse bytes captured from our
plugin on the same node (same size), driven by the same `harness cost` run: grpcio's own
cost of an answer, the reference for ours. With --floor and --hashicorp the run ends with
the targets for our Stats path, PASS or FAIL each: per answer at 1 and 8 GPUs at most the
floor's plus 0.15 ms; at 8 GPUs and 100 ms at most 0.8 of HashiCorp's CPU; at 56 GPUs and
above at least as far ahead of HashiCorp (ours / HashiCorp's CPU) as in REFERENCE_RATIOS.

    .venv/bin/python benches/side_by_side.py --hashicorp /tmp/hashicorp-nvidia/nomad-device-nvidia --floor \\
        --json docs/side-by-side.json --plot docs/side-by-side.png --doc docs/side-by-side.md
                                   # = make bench-side-by-side HASHICORP=/tmp/hashicorp-nvidia/nomad-device-nvidia
    .venv/bin/python benches/side_by_side.py --quick                   # ours alone, 8 and 512 GPUs, 5 s windows

Without --hashicorp only our plugin runs (and the floor with --floor). The full run
(5 sizes, 15 s windows, 30 launches) takes about 10 minutes with both plugins on a 2-core
machine, 15 to 20 with the floor too, about 5 with ours alone; --quick about 40 s per
plugin. Keep windows a multiple of 5 s: our plugin
probes every GPU once per `health.probe_interval` (5 s), so a shorter window may miss the
probe and understate its idle cost. At 1 s a window of W seconds holds W answers and the
idle phase's noise counts in full in each: on a busy 2-core machine the per-answer figures
at 1 s move by 0.3 ms between 10 s runs, more than the 0.15 ms the floor target allows;
read that target from a quiet machine or --window 30s. Prerequisites: `make native sim` and
`make -C tests/harness BIN=$PWD/build/bin harness` (or `make bench-side-by-side`, which
does both and writes docs/side-by-side.{json,png,md}). `--from FILE.json` redraws the
table, plot and page of an earlier run without measuring.

HashiCorp's plugin is built from its source outside this repository (never copied in):

    git clone https://github.com/hashicorp/nomad-device-nvidia /tmp/hashicorp-nvidia
    cd /tmp/hashicorp-nvidia       # measured: commit 05e83c3 (PluginInfo version 1.2.0)
    mkdir -p /tmp/hashicorp-nvidia-tmp
    TMPDIR=/tmp/hashicorp-nvidia-tmp CGO_ENABLED=1 GOFLAGS=-mod=mod \\
        go build -trimpath -o /tmp/hashicorp-nvidia/nomad-device-nvidia ./cmd

(its dependencies, go-nvml among them, come from the Go module proxy; cgo needs gcc).
TMPDIR is an empty directory because cgo compiles its type probe of go-nvml there, so an
`nvml.h` lying in /tmp (NVIDIA's header, whose handles are pointers, not go-nvml's
one-field structs) is included instead and the build fails with "incompatible type for
argument 1 of 'nvml...'".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "benches" / "scenarios"
SIZES = (1, 8, 56, 512, 4096)
QUICK_SIZES = (8, 512)
PLUGINS = ("ours", "hashicorp", "floor")
# The targets for our Stats path (see the docstring). Per answer above the floor's:
FLOOR_MARGIN_MS = 0.15
FLOOR_SIZES = (1, 8)
# CPU with Stats open, ours / HashiCorp's, at 8 GPUs and 100 ms:
RATIO_AT_8_100MS = 0.8
# ... and at 56 GPUs and above, at most these (ours / HashiCorp's, measured side by side
# before our Stats path answered from the event loop); a size without its own uses the
# largest size below it.
REFERENCE_RATIOS = {(56, "1s"): 3.25 / 2.87, (56, "100ms"): 16.68 / 28.98,
                    (512, "1s"): 7.03 / 17.77, (512, "100ms"): 38.53 / 169.89}


def parse_duration(text: str) -> float:
    """Seconds of a Go-style duration with one unit: 100ms, 1s, 2.5s."""
    for unit, scale in (("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            try:
                value = float(text[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return value * scale
    raise argparse.ArgumentTypeError(f"{text!r}: want a positive duration such as 1s or 100ms")


def go_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class HarnessError(RuntimeError):
    pass


def harness(harness_bin: Path, command: str, plugin: list[str], env: dict[str, str], args: list[str],
            limit_s: float) -> list[dict[str, Any]]:
    """One harness command on the plugin started by `plugin` (executable, then its
    arguments); its JSON events. Raises HarnessError with what it printed when it exits
    non-zero or runs past limit_s."""
    cmd = [str(harness_bin), command, "--plugin", plugin[0]]
    for arg in plugin[1:]:
        cmd += ["--arg", arg]
    for k, v in env.items():
        cmd += ["--env", f"{k}={v}"]
    try:
        proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=limit_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{' '.join(cmd + args)}: no end within {limit_s:.0f} s") from exc
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        errors = [e for e in events if e.get("event") in ("error", "launch") and e.get("error")]
        raise HarnessError(f"harness {command} exited {proc.returncode}: {errors or proc.stderr.strip()[-2000:]}")
    return events


def node_env(devices: int, opts: argparse.Namespace) -> dict[str, str]:
    scenario = SCENARIOS / f"side-by-side-{devices}.toml"
    return {"LD_LIBRARY_PATH": str(opts.sim_dir), "NVML_SIM_SCENARIO": str(scenario)}


def measure(plugin_name: str, plugin: list[str], devices: int, opts: argparse.Namespace) -> dict[str, Any]:
    env = node_env(devices, opts)
    intervals: list[float] = opts.intervals
    timeout = 60.0 + devices / 20
    args = ["--window", go_duration(opts.window), "--settle", go_duration(opts.settle),
            "--timeout", go_duration(timeout)]
    for iv in intervals:
        args += ["--interval", go_duration(iv)]
    limit = 2 * timeout + (len(intervals) + 1) * (opts.window + opts.settle + timeout)
    events = harness(opts.harness, "cost", plugin, env, args, limit)
    info = next(e for e in events if e["event"] == "info")
    first = next(e for e in events if e["event"] == "first_fingerprint")
    costs = [e for e in events if e["event"] == "cost"]
    if first["devices"] != devices or len(costs) != len(intervals) + 1:
        raise HarnessError(f"{plugin_name} at {devices}: {first['devices']} devices fingerprinted, "
                           f"{len(costs)} phases measured")

    def phase(e: dict[str, Any]) -> dict[str, Any]:
        keys = ("cpu_ms_per_s", "cpu_ms_per_s_ticks", "wakes_per_s", "responses", "responses_per_s", "threads",
                "top_threads")
        return {k: e[k] for k in keys} | {"rss_mib": e["rss_kib"] / 1024, "hwm_mib": e["hwm_kib"] / 1024}

    lat = harness(opts.harness, "handshake-latency", plugin, env,
                  ["-n", str(opts.launches), "--mode", "handshake", "--timeout", go_duration(timeout)],
                  opts.launches * (timeout + 5))
    hs = next(e for e in lat if e["event"] == "handshake_latency")["handshake"]
    return {
        "plugin": plugin_name, "plugin_version": info["plugin_version"], "devices": devices, "pid": first["pid"],
        "first_fingerprint_ms": first["ms"],
        "idle": phase(costs[0]),
        "stats": {go_duration(iv): phase(e) for iv, e in zip(intervals, costs[1:])},
        "handshake_ms": {"median": hs["median_ms"], "min": hs["min_ms"], "max": hs["max_ms"], "n": opts.launches},
    }


def per_answer(r: dict[str, Any], iv: str) -> tuple[float, float | None] | None:
    """(ms of CPU, wakes) one Stats answer at `iv` costs above the plugin's own idle;
    wakes None in a run from before the harness counted them; None without answers."""
    st, idle = r["stats"][iv], r["idle"]
    if not st["responses_per_s"]:
        return None
    ms = (st["cpu_ms_per_s"] - idle["cpu_ms_per_s"]) / st["responses_per_s"]
    if st.get("wakes_per_s") is None or idle.get("wakes_per_s") is None:
        return ms, None
    return ms, (st["wakes_per_s"] - idle["wakes_per_s"]) / st["responses_per_s"]


def _answer_cell(r: dict[str, Any], iv: str) -> str:
    pa = per_answer(r, iv)
    if pa is None:
        return "-"
    return f"{pa[0]:.2f}" + (f" / {pa[1]:.1f}" if pa[1] is not None else "")


def table(rows: list[dict[str, Any]], intervals: list[float], markdown: bool = False) -> str:
    ivs = [go_duration(iv) for iv in intervals]
    head = ["devices", "plugin", "idle ms/s"] + [f"stats {iv} ms/s (answers/s)" for iv in ivs] + \
        [f"per answer {iv} ms / wakes" for iv in ivs] + \
        ["RSS MiB idle/stats", "threads idle/stats", "handshake ms"]
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([str(r["devices"]), r["plugin"], "error: " + " ".join(r["error"].split())[:80]])
            continue
        last = r["stats"][ivs[-1]] if ivs else r["idle"]
        lines.append([
            str(r["devices"]), r["plugin"], f"{r['idle']['cpu_ms_per_s']:.2f}",
            *(f"{r['stats'][iv]['cpu_ms_per_s']:.2f} ({r['stats'][iv]['responses_per_s']:.1f})" for iv in ivs),
            *(_answer_cell(r, iv) for iv in ivs),
            f"{r['idle']['rss_mib']:.1f}/{last['rss_mib']:.1f}",
            f"{r['idle']['threads']}/{max(s['threads'] for s in r['stats'].values()) if ivs else '-'}",
            f"{r['handshake_ms']['median']:.1f}",
        ])
    if markdown:
        lines.insert(1, ["---"] * len(head))
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def per_thread(rows: list[dict[str, Any]], intervals: list[float], sizes: tuple[int, ...] = FLOOR_SIZES,
               markdown: bool = False) -> str:
    """Where each answer's CPU and wakes go: per thread name (threads of one name summed;
    the process's first thread, the event loop of a Python server, as "main"), the Stats
    phase's CPU ms and wakes per answer, the busiest threads only (the harness reports
    the 16 busiest; idle not taken off)."""
    lines = []
    for r in rows:
        if "error" in r or r["devices"] not in sizes:
            continue
        for iv in (go_duration(iv) for iv in intervals):
            st = r["stats"][iv]
            rate = st["responses_per_s"]
            if not rate:
                continue
            by_comm: dict[str, list[float]] = {}
            for t in st["top_threads"]:
                name = "main" if t.get("tid") == str(r.get("pid")) else t["comm"]
                acc = by_comm.setdefault(name, [0.0, 0.0, 0])
                acc[0] += t["cpu_ms_per_s"] / rate
                acc[1] += (t.get("wakes_per_s") or 0.0) / rate
                acc[2] += 1
            counted = all("wakes_per_s" in t for t in st["top_threads"])  # not in runs before the harness counted them
            parts = [f"{comm}{f' x{n:.0f}' if n > 1 else ''} {ms:.2f} ms" + (f" {w:.1f} wakes" if counted else "")
                     for comm, (ms, w, n) in sorted(by_comm.items(), key=lambda kv: -kv[1][0])]
            lines.append((f"{r['devices']}", r["plugin"], iv, ", ".join(parts)))
    if markdown:
        return "\n".join(["| devices | plugin | interval | per answer, by thread (CPU ms, wakes) |",
                          "| --- | --- | --- | --- |"] + [f"| {' | '.join(line)} |" for line in lines])
    return "\n".join(f"{d:>4} {p:9s} {iv:5s} {text}" for d, p, iv, text in lines)


def _reference_ratio(devices: int, iv: str) -> float | None:
    below = [n for n, i in REFERENCE_RATIOS if i == iv and n <= devices]
    return REFERENCE_RATIOS[(max(below), iv)] if below else None


def targets(rows: list[dict[str, Any]], intervals: list[float]) -> list[dict[str, Any]]:
    """The targets for our Stats path that this run's rows can check (see the docstring)."""
    ok = {(r["plugin"], r["devices"]): r for r in rows if "error" not in r}
    checks: list[dict[str, Any]] = []
    for devices in sorted({d for _, d in ok}):
        ours, hc, floor = (ok.get((name, devices)) for name in PLUGINS)
        for iv in (go_duration(iv) for iv in intervals):
            if ours is None or iv not in ours["stats"]:
                continue
            if devices in FLOOR_SIZES and floor is not None and iv in floor["stats"]:
                mine, base = per_answer(ours, iv), per_answer(floor, iv)
                if mine is not None and base is not None:
                    limit = base[0] + FLOOR_MARGIN_MS
                    checks.append({"target": f"{devices} GPUs {iv}: ours per answer <= floor + {FLOOR_MARGIN_MS} ms",
                                   "value": mine[0], "limit": limit, "pass": mine[0] <= limit,
                                   "text": f"{mine[0]:.3f} ms vs floor {base[0]:.3f} + {FLOOR_MARGIN_MS}"})
            if hc is None or not hc["stats"].get(iv, {}).get("cpu_ms_per_s"):
                continue
            ratio = ours["stats"][iv]["cpu_ms_per_s"] / hc["stats"][iv]["cpu_ms_per_s"]
            limit_ratio = RATIO_AT_8_100MS if (devices, iv) == (8, "100ms") else \
                _reference_ratio(devices, iv) if devices >= 56 else None
            if limit_ratio is not None:
                checks.append({"target": f"{devices} GPUs {iv}: ours / HashiCorp's CPU <= {limit_ratio:.3f}",
                               "value": ratio, "limit": limit_ratio, "pass": ratio <= limit_ratio,
                               "text": f"{ours['stats'][iv]['cpu_ms_per_s']:.2f} / "
                                       f"{hc['stats'][iv]['cpu_ms_per_s']:.2f} ms/s = {ratio:.3f}"})
    return checks


def targets_text(checks: list[dict[str, Any]], markdown: bool = False) -> str:
    if markdown:
        return "\n".join(["| target | measured | |", "| --- | --- | --- |"] +
                         [f"| {c['target']} | {c['text']} | {'PASS' if c['pass'] else 'FAIL'} |" for c in checks])
    return "\n".join(f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['text']}" for c in checks)


def doc(data: dict[str, Any], plot_path: Path | None, out: Path) -> None:
    """A page with the method, the table and the plot: what `--doc` writes."""
    plugins = {r["plugin"]: r.get("plugin_version") for r in data["results"]}
    img = f"\n![side by side]({plot_path.name})\n" if plot_path and plot_path.parent == out.parent else ""
    floor = ""
    if "floor" in plugins:
        floor = f"""
The floor is a bare `grpc.aio` server (grpcio {plugins["floor"]}; `benches/runtime_floor.py`)
that answers Nomad's client with bytes captured from our plugin on the same node, and
streams that StatsResponse at each interval from a timer on its event loop: no plugin
code, no protobuf, no NVML. Its per-answer figures are grpcio's own cost of an answer.
"""
    checks = data.get("targets") or []
    checked = f"""
Targets for our Stats path, as `benches/side_by_side.py` checks them:

{targets_text(checks, markdown=True)}
""" if checks else ""
    threads = per_thread(data["results"], data["intervals_s"], markdown=True)
    threads = f"""
Per answer by thread at {" and ".join(map(str, FLOOR_SIZES))} GPUs (the Stats phase's CPU ms and wakes
per answer, threads of one name summed, the process's first thread as "main": the event
loop in ours and the floor; idle not taken off):

{threads}
""" if threads.count("\n") > 1 else ""
    out.write_text(f"""# Our plugin beside HashiCorp's Go plugin

Written by `{data['command']}` on {data['datetime']}
({data['cpus']} CPUs, load average {data['load_avg_at_start'][0]} at the start, {data['elapsed_s']:.0f} s).
Plugins: {", ".join(f"{k} {v}" for k, v in plugins.items())}. How to build HashiCorp's plugin
and what is measured: `benches/side_by_side.py --help`.

The plugins run with their default config on the simulated driver (whole H100s, no added
driver latency), driven by the Go harness (`harness cost`, Nomad's client code). Idle: the
plugin configured with its Fingerprint stream open, no Stats. Stats: one Stats stream at
that interval. CPU is the plugin process's CPU time in ms per second of wall time over a
{data['window_s']:g} s window ({data['settle_s']:g} s after the stream's first answer), the simulated
driver included; answers/s is how many Stats answers arrived per second; RSS is VmRSS at
the window's end; threads idle / the most with Stats open; handshake is exec to the
go-plugin handshake line, median of {data['launches']} launches. Per answer: the Stats
phase's CPU (ms) and wakes (the threads' context switches) above the plugin's own idle,
divided by the answers.
{floor}
{table(data["results"], data["intervals_s"], markdown=True)}
{checked}{threads}{img}""")


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = [r for r in data["results"] if "error" not in r]
    ivs = [go_duration(iv) for iv in data["intervals_s"]]
    panels: list[tuple[str, Any, bool]] = [("idle CPU (ms per s): Fingerprint open, no Stats",
                                            lambda r: r["idle"]["cpu_ms_per_s"], False)]
    panels += [(f"CPU with Stats every {iv} (ms per s)", lambda r, iv=iv: r["stats"][iv]["cpu_ms_per_s"], True)
               for iv in ivs]
    panels += [(f"CPU per Stats answer every {iv}, above idle (ms)",
                lambda r, iv=iv: (per_answer(r, iv) or (float("nan"),))[0], True) for iv in ivs]
    panels += [(f"wakes per Stats answer every {iv}, above idle",
                lambda r, iv=iv: _or_nan((per_answer(r, iv) or (0.0, None))[1]), False) for iv in ivs]
    last = ivs[-1] if ivs else None
    panels += [
        (f"RSS (MiB), with Stats every {last}" if last else "RSS (MiB), idle",
         lambda r: (r["stats"][last] if last else r["idle"])["rss_mib"], False),
        ("threads, with Stats open" if ivs else "threads, idle",
         lambda r: max(s["threads"] for s in r["stats"].values()) if ivs else r["idle"]["threads"], False),
        (f"exec to handshake line (ms, median of {data['launches']})", lambda r: r["handshake_ms"]["median"], False),
    ]
    ncols = 3
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(15, 4.3 * nrows), squeeze=False)
    styles = {"ours": "C0-o", "hashicorp": "C3-s", "floor": "C7--^"}
    labels = {"ours": "nomad-device-nvidia (this project)", "hashicorp": "HashiCorp's Go plugin",
              "floor": "floor: bare grpc.aio server, ready-made answers"}
    for ax, (title, value, logy) in zip(axes.flat, panels):
        for name in PLUGINS:
            pts = sorted((r["devices"], value(r)) for r in rows if r["plugin"] == name)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[name], label=labels[name])
        ax.set_xscale("log")
        ax.set_xticks(data["sizes"])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if logy:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("simulated GPUs")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"Side by side on the simulated driver ({data['window_s']:g} s windows, {data['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hashicorp", type=Path, help="HashiCorp's nomad-device-nvidia binary (see above); without it, ours alone")
    ap.add_argument("--floor", action="store_true",
                    help="also the streaming floor (benches/runtime_floor.py) on answers captured from ours")
    ap.add_argument("--floor-dir", type=Path, default=REPO / "build" / "floor",
                    help="where the floor's captured answers go (default: %(default)s)")
    ap.add_argument("--ours", type=Path, default=REPO / ".venv" / "bin" / "nomad-device-nvidia", help="our plugin (default: %(default)s)")
    ap.add_argument("--harness", type=Path, default=REPO / "build" / "bin" / "harness", help="default: %(default)s")
    ap.add_argument("--sim-dir", type=Path, default=REPO / "build" / "sim", help="directory of the simulated libnvidia-ml.so.1")
    ap.add_argument("--sizes", help=f"comma-separated GPU counts among {','.join(map(str, SIZES))} (default: all; --quick: "
                    f"{','.join(map(str, QUICK_SIZES))})")
    ap.add_argument("--intervals", default="1s,100ms", help="Stats intervals, comma-separated (default: %(default)s)")
    ap.add_argument("--window", type=parse_duration, help="length of each measured phase (default 15s; --quick 5s)")
    ap.add_argument("--settle", type=parse_duration, help="wait after a stream's first answer (default 2s; --quick 1s)")
    ap.add_argument("--launches", type=int, help="launches for the handshake median (default 30; --quick 3)")
    ap.add_argument("--quick", action="store_true", help="sizes 8 and 512, 5 s windows, 3 launches")
    ap.add_argument("--json", type=Path, help="write the results here ('-': print them after the table)")
    ap.add_argument("--plot", type=Path, help="write the plot here (PNG)")
    ap.add_argument("--doc", type=Path, help="write a markdown page with the table (and the plot, when beside it) here")
    ap.add_argument("--from", dest="from_json", type=Path, help="measure nothing: table, plot and page of a --json file")
    opts = ap.parse_args(argv)
    if opts.from_json:
        data = json.loads(opts.from_json.read_text())
        data["targets"] = targets(data["results"], data["intervals_s"])
        print(table(data["results"], data["intervals_s"]))
        print(per_thread(data["results"], data["intervals_s"]))
        print(targets_text(data["targets"]))
        if opts.plot:
            plot(data, opts.plot)
        if opts.doc:
            doc(data, opts.plot, opts.doc)
        return 0
    opts.window = opts.window or (5.0 if opts.quick else 15.0)
    opts.settle = opts.settle or (1.0 if opts.quick else 2.0)
    # 30: on a 2-core VM one launch takes anywhere from 100 to 180 ms, and a median of 10 moves by 20 ms between runs.
    opts.launches = opts.launches or (3 if opts.quick else 30)
    sizes = [int(s) for s in opts.sizes.split(",")] if opts.sizes else list(QUICK_SIZES if opts.quick else SIZES)
    if any(s not in SIZES for s in sizes):
        ap.error(f"--sizes: each one of {SIZES}")
    opts.intervals = [parse_duration(s) for s in opts.intervals.split(",") if s]
    plugins = {"ours": [str(opts.ours)]}
    if opts.hashicorp:
        plugins["hashicorp"] = [str(opts.hashicorp.resolve())]
    for what in [opts.harness, opts.sim_dir / "libnvidia-ml.so.1", opts.ours, *([opts.hashicorp] if opts.hashicorp else [])]:
        if not what.exists():
            ap.error(f"{what} does not exist (make native sim harness; --hashicorp: see --help)")
    if opts.floor:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import runtime_floor  # beside this file

    started = time.monotonic()
    load = os.getloadavg()
    results: list[dict[str, Any]] = []
    captured: dict[int, dict[str, int]] = {}
    for devices in sizes:
        failed_capture = None
        if opts.floor:
            answers = opts.floor_dir / f"answers-{devices}.json"
            try:
                captured[devices] = runtime_floor.capture_answers(opts.ours, node_env(devices, opts), answers,
                                                                   timeout=60.0 + devices / 20)
                plugins["floor"] = runtime_floor.floor_plugin(sys.executable, answers)
            except Exception as exc:  # the floor's row says so; the plugins' rows still come
                plugins.pop("floor", None)
                failed_capture = {"plugin": "floor", "devices": devices,
                                  "error": "capturing our answers: " + " ".join(str(exc).split())}
                print(f"  capturing our answers on {devices} GPUs failed: {exc!r}", file=sys.stderr)
        for name, cmd in plugins.items():  # all at one size before the next: drift hits all alike
            print(f"{name} on {devices} GPUs ...", file=sys.stderr, flush=True)
            try:
                results.append(measure(name, cmd, devices, opts))
                if name == "floor":
                    results[-1]["answers"] = captured[devices]
            except (HarnessError, StopIteration, KeyError) as exc:
                results.append({"plugin": name, "devices": devices, "error": str(exc) or repr(exc)})
                print(f"  failed: {exc!r}", file=sys.stderr)
        if failed_capture:
            results.append(failed_capture)
    data = {
        "note": "simulated NVML (build/sim), whole H100s, no added driver latency; each plugin with its default "
        "config; cpu_ms_per_s = CPU time of the plugin's threads (schedstat) per second of wall time over the "
        "window; wakes_per_s = the threads' voluntary and involuntary context switches per second; "
        "responses_per_s = Stats answers per second; RSS = VmRSS at the window's end; handshake = "
        "exec to the go-plugin handshake line (harness handshake-latency --mode handshake); floor = "
        "benches/runtime_floor.py's bare grpc.aio server streaming a StatsResponse captured from ours",
        "command": "benches/side_by_side.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "datetime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in load],
        "window_s": opts.window, "settle_s": opts.settle, "launches": opts.launches,
        "intervals_s": opts.intervals, "sizes": sizes, "elapsed_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    data["targets"] = targets(results, opts.intervals)
    print(table(results, opts.intervals))
    print(per_thread(results, opts.intervals))
    print(targets_text(data["targets"]))
    print(f"({data['elapsed_s']:.0f} s)", file=sys.stderr)
    if opts.json == Path("-"):
        print(json.dumps(data, indent=2))
    elif opts.json:
        opts.json.write_text(json.dumps(data, indent=2) + "\n")
    if opts.plot:
        plot(data, opts.plot)
    if opts.doc:
        doc(data, opts.plot, opts.doc)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
