"""Condenses a pytest-benchmark JSON (make bench writes build/bench.json) into
docs/benchmarks.json and plots docs/benchmarks.png.

    .venv/bin/python benches/plot.py [build/bench.json]
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def condense(raw: dict[str, Any]) -> dict[str, Any]:
    ticks: list[dict[str, Any]] = []
    parallel: dict[str, dict[str, float]] = {}
    for b in raw["benchmarks"]:
        e, s = b["extra_info"], b["stats"]
        if "engine" not in e:
            continue  # not a stats tick (the probe rounds): not on this plot
        row = {
            "engine": e["engine"],
            "latency": e["latency"],
            "devices": e["devices"],
            "tick_ms_median": s["median"] * 1e3,
            "tick_ms_mean": s["mean"] * 1e3,
            "cpu_us_per_device": e["cpu_per_device_us"],
            "rounds": e["rounds"],
        }
        if "workers" in e:
            parallel.setdefault(e["latency"], {})[f"workers_{e['workers']}_tick_ms"] = row["tick_ms_median"]
        else:
            ticks.append(row)
    ticks.sort(key=lambda r: (r["latency"], r["engine"], r["devices"]))
    speedup = {}
    for r in ticks:
        if r["engine"] != "native":
            continue
        py = next((p for p in ticks if p["engine"] == "python" and p["latency"] == r["latency"] and p["devices"] == r["devices"]), None)
        if py:
            speedup[f"{r['latency']} {r['devices']}"] = py["tick_ms_median"] / r["tick_ms_median"]
    for lat, p in parallel.items():
        if "workers_1_tick_ms" in p and "workers_32_tick_ms" in p:
            p["parallel_over_serial"] = p["workers_32_tick_ms"] / p["workers_1_tick_ms"]
    return {
        "machine": raw.get("machine_info", {}).get("cpu", {}).get("brand_raw", platform.processor()),
        "datetime": raw.get("datetime"),
        "note": "simulated NVML (build/sim); latency 50us = every device call sleeps 50 us; "
        "cpu_us_per_device = process CPU (all threads, simulated driver included) / devices / ticks",
        "ticks": ticks,
        "native_speedup_over_python": speedup,
        "parallel_64_devices": parallel,
    }


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {("native", "0us"): "C0-o", ("native", "50us"): "C0--s", ("python", "0us"): "C3-o", ("python", "50us"): "C3--s"}
    for (engine, latency), style in styles.items():
        rows = [r for r in data["ticks"] if r["engine"] == engine and r["latency"] == latency]
        if not rows:
            continue
        xs = [r["devices"] for r in rows]
        label = f"{engine}, {latency}/call"
        ax_t.plot(xs, [r["tick_ms_median"] for r in rows], style, label=label)
        ax_c.plot(xs, [r["cpu_us_per_device"] for r in rows], style, label=label)
    for ax in (ax_t, ax_c):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("simulated devices")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_t.set_ylabel("time per stats tick (ms, median)")
    ax_c.set_ylabel("process CPU per device per tick (us)")
    ax_c.axhline(2.0, color="grey", linewidth=0.8)
    fig.suptitle("Stats engines on the simulated driver: native (Rust) vs python")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "build" / "bench.json"
    data = condense(json.loads(src.read_text()))
    docs = REPO / "docs"
    (docs / "benchmarks.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, docs / "benchmarks.png")
    print(json.dumps({k: data[k] for k in ("native_speedup_over_python", "parallel_64_devices")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
