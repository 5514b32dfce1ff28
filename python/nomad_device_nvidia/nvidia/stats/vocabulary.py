"""The stats vocabulary (docs/stats.md): every stat's name, unit and description
and the order they are sent in, read from stats/vocabulary.json beside this
module. The native engine's build generates its Rust constants from the same
file (src_rust/stats_core/build.rs), so the two engines cannot drift apart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stat:
    name: str
    unit: str
    desc: str


@dataclass(frozen=True)
class GpmStat(Stat):
    nvml_metric: str  # the pynvml / nvml.h constant of the metric, e.g. NVML_GPM_METRIC_SM_UTIL
    scale: str  # "percent" (two decimals) or "mib_to_mb" (NVML's MiB/s as whole MB/s)


def _load() -> dict[str, Any]:
    # Beside this file, in the source tree and in the installed wheel alike (a package
    # with a native extension is never imported from a zip); importlib.resources would
    # only add import time. Not pathlib: it brings urllib.parse and ipaddress, and the
    # serving process loads this module whatever the engine (cli.preload).
    with open(os.path.join(os.path.dirname(__file__), "vocabulary.json"), encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc


def _stat(entry: dict[str, Any]) -> Stat:
    return Stat(entry["name"], entry["unit"], entry["desc"])


_DOC = _load()

# Every stat by its id (the constant name both engines use for it).
STATS: dict[str, Stat] = {}
for _entry in _DOC["standard"] + [s for t in _DOC["extended"] for s in t["stats"]]:
    STATS[_entry["id"]] = _stat(_entry)
for _entry in _DOC["gpm"]["stats"]:
    STATS[_entry["id"]] = GpmStat(
        _entry["name"], _entry["unit"], _entry["desc"], _entry["nvml_metric"], _entry["scale"]
    )

# The attributes of every device's stats object, in the order they are sent.
STANDARD: tuple[Stat, ...] = tuple(STATS[s["id"]] for s in _DOC["standard"])
# The standard stat that is also DeviceStats.summary.
SUMMARY: Stat = STATS[_DOC["summary"]]
# Extended stats: (nested object key, its stats), in the order they are sent.
EXTENDED: tuple[tuple[str, tuple[Stat, ...]], ...] = tuple(
    (t["name"], tuple(STATS[s["id"]] for s in t["stats"])) for t in _DOC["extended"]
)
# GPM (Hopper and later), one more nested object: its key and stats.
GPM: str = _DOC["gpm"]["name"]
GPM_STATS: tuple[GpmStat, ...] = tuple(
    s for s in (STATS[e["id"]] for e in _DOC["gpm"]["stats"]) if isinstance(s, GpmStat)
)
