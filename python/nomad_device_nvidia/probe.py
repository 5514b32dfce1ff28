"""`nomad-device-nvidia probe`: what Nomad would see on this node, without Nomad.

Runs the plugin in-process with the agent's plugin block (or defaults), takes
one fingerprint and one stats sample, and prints them as a table or JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nomad_device_nvidia.sdk import ConfigError, DeviceGroup, PluginDisabled, StatObject, StatValue

if TYPE_CHECKING:
    from nomad_device_nvidia.nvidia.plugin import NvidiaDevicePlugin

PLUGIN_BLOCK_NAMES = ("nomad-device-nvidia", "nvidia-gpu")


class ProbeError(Exception):
    """A problem the operator can fix; printed as one line."""


def load_plugin_config(path: Path) -> dict[str, Any]:
    """The `config` of the agent's `plugin "nomad-device-nvidia"` block in an agent file.

    Read with pyhcl, an HCL1 parser, as the agent reads its files (HCL1, or JSON);
    of several blocks with that name the last one counts, as in Nomad's plugin
    loader, which keys the blocks by name. tests/test_probe_config.py compares
    the result with what the agent's own code reads from the same files.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProbeError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = _hcl1_loads(text)
    except Exception as exc:
        raise ProbeError(f"{path} is not valid HCL: {str(exc).splitlines()[0]}") from None
    found: Any = None
    for block in _blocks(doc.get("plugin") if isinstance(doc, dict) else None):
        for name in PLUGIN_BLOCK_NAMES:
            if name in block:
                found = block[name]
    if found is None:
        raise ProbeError(f'{path} has no plugin "nomad-device-nvidia" block')
    body = _last(found)
    config = _unwrap_blocks(body.get("config", {})) if isinstance(body, dict) else None
    if not isinstance(config, dict):
        raise ProbeError(f"{path}: the plugin block's config must be a block")
    return config


def _hcl1_loads(text: str) -> Any:
    """pyhcl's reading of an HCL1 or JSON document, heredocs as HCL1 itself reads them.

    Go's HCL1 keeps the newline before a heredoc's closing marker
    (`<<EOT\npython\nEOT` is "python\n", which the plugin then refuses as the
    agent would); pyhcl drops it.
    """
    from hcl.api import isHcl
    from hcl.lexer import Lexer
    from hcl.parser import HclParser

    if not isHcl(text):
        return json.loads(text)

    class Hcl1Lexer(Lexer):  # type: ignore[misc]
        def _end_heredoc(self, t: Any) -> Any:
            closing = t.value.strip() if t.lexer.is_tabbed else t.value
            on_own_line = closing == t.lexer.here_identifier
            tok = super()._end_heredoc(t)
            if tok is not None and on_own_line:
                tok.value += "\n"
            return tok

    return HclParser().yacc.parse(text, lexer=Hcl1Lexer())


def _blocks(value: Any) -> list[dict[str, Any]]:
    # `plugin "x" {}` parses as {"x": {...}}; JSON may also give a list of such objects.
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _last(value: Any) -> Any:
    return value[-1] if isinstance(value, list) and value else value


def _unwrap_blocks(value: Any) -> Any:
    # A block written in JSON as a one-element list of objects is that object, as hcldec sees it.
    if isinstance(value, dict):
        return {k: _unwrap_blocks(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return _unwrap_blocks(value[0])
    return value


def _attr_text(value: Any, unit: str) -> str:
    return f"{value} {unit}".strip()


def render_table(groups: Sequence[DeviceGroup], stats: Mapping[str, Mapping[str, str]]) -> str:
    lines: list[str] = []
    if not groups:
        return "No devices found.\n"
    for g in groups:
        lines.append(f"{g.vendor}/{g.device_type}/{g.name}  ({len(g.devices)} devices)")
        keys = sorted(g.attributes)
        width = max(len(k) for k in keys) if keys else 0
        for k in keys:
            a = g.attributes[k]
            lines.append(f"  {k.ljust(width)}  {_attr_text(a.value, a.unit)}")
        lines.append(f"  {'ID':<44} {'HEALTH':<9} {'PCI BUS ID':<18} MEMORY / SUMMARY")
        for d in g.devices:
            health = "healthy" if d.healthy else "UNHEALTHY"
            summary = stats.get(d.id, {}).get("summary", "")
            lines.append(f"  {d.id:<44} {health:<9} {d.pci_bus_id or '-':<18} {summary}")
            if d.health_description and not d.healthy:
                lines.append(f"      ! {d.health_description}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _stat_text(value: StatValue) -> str:
    if value.string_val is not None:
        text = value.string_val
    elif value.int_numerator_val is not None:
        text = str(value.int_numerator_val)
        if value.int_denominator_val is not None:
            text += f" / {value.int_denominator_val}"
    elif value.float_numerator_val is not None:
        text = f"{value.float_numerator_val:g}"
        if value.float_denominator_val is not None:
            text += f" / {value.float_denominator_val:g}"
    elif value.bool_val is not None:
        text = str(value.bool_val).lower()
    else:
        text = ""
    return f"{text} {value.unit}".strip()


def decode_stats(payload: bytes) -> dict[str, dict[str, str]]:
    from nomad_device_nvidia.sdk import stats_from_bytes  # loads protobuf: only once there is a sample

    out: dict[str, dict[str, str]] = {}
    for group in stats_from_bytes(payload).groups:
        for dev_id, st in group.instance_stats.items():
            values = {name: _stat_text(v) for name, v in (st.stats or StatObject()).attributes.items()}
            values["summary"] = _stat_text(st.summary or StatValue())
            out[dev_id] = values
    return out


def _as_json(groups: Sequence[DeviceGroup], stats: Mapping[str, Mapping[str, str]], library: str = "",
             why_none: str = "") -> str:
    return json.dumps({"nvml": {"library": library, "why_no_devices": why_none}, "groups": [{
        "vendor": g.vendor, "type": g.device_type, "name": g.name,
        "attributes": {k: {"value": a.value, "unit": a.unit} for k, a in sorted(g.attributes.items())},
        "devices": [{"id": d.id, "healthy": d.healthy, "health_description": d.health_description,
                     "pci_bus_id": d.pci_bus_id, "stats": dict(stats.get(d.id, {}))} for d in g.devices],
    } for g in groups]}, indent=2)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="nomad-device-nvidia probe",
                                description="Show what Nomad would see on this node: device groups, health, "
                                            "attributes and one stats sample.")
    p.add_argument("--config", type=Path, metavar="AGENT_PLUGIN_HCL",
                   help='an HCL file with the agent\'s plugin "nomad-device-nvidia" block')
    p.add_argument("--simulate", default="", metavar="SCENARIO", help="use the simulated driver with this scenario")
    p.add_argument("--nvml-library", default="", metavar="PATH", help="load this libnvidia-ml.so.1")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(list(argv))
    try:
        return _probe(args)
    except (ProbeError, ConfigError) as exc:
        print(f"nomad-device-nvidia probe: {exc}", file=sys.stderr)
        return 2


def _probe(args: argparse.Namespace) -> int:
    from nomad_device_nvidia.nvidia.plugin import NvidiaDevicePlugin

    config = load_plugin_config(args.config) if args.config else {}
    for flag, value in (("--simulate", args.simulate), ("--nvml-library", args.nvml_library)):
        if value and not Path(value).is_file():
            raise ProbeError(f"{flag}: {value} does not exist (a {'scenario' if flag == '--simulate' else 'library'} file)")
    if args.simulate:
        config["simulate"] = str(Path(args.simulate).resolve())
    if args.nvml_library:
        config["nvml_library"] = str(Path(args.nvml_library).resolve())
    # The NVML lifecycle's state lines are for a long-running plugin ("retrying with
    # backoff"); a one-shot probe says why it found nothing itself, once, at the end.
    # Every other line (a scan's warnings, a failure of the watch) still shows.
    logging.getLogger("nomad_device_nvidia.nvidia.nvml.lifecycle").addFilter(lambda record: False)
    plugin = NvidiaDevicePlugin()
    plugin.set_config(config)
    stop = threading.Event()
    try:
        # closing(): the streams' finally blocks (unsubscribe, stats engine close) run now.
        with contextlib.closing(plugin.fingerprint(stop)) as answers:
            groups = list(next(answers, []))
        stats: dict[str, dict[str, str]] = {}
        if groups:
            with contextlib.closing(plugin.stats(1.0, stop)) as samples:
                sample = next(samples, None)
            if sample is not None:
                from nomad_device_nvidia.sdk.convert import stats_bytes

                stats = decode_stats(stats_bytes(sample))
        why_none = "" if groups else why_no_devices(plugin)
        inventory = plugin.watch.inventory
        library = plugin.watch.library(inventory.driver_version) if inventory is not None else ""
    except PluginDisabled:
        raise ProbeError("the plugin is disabled by its config (enabled = false)") from None
    finally:
        stop.set()
        plugin.shutdown()
    if args.json:
        sys.stdout.write(_as_json(groups, stats, library, why_none) + "\n")
    else:
        sys.stdout.write((f"NVML: {library}\n\n" if groups else "") + render_table(groups, stats))
    if not groups:
        # A one-shot command: it says why, and nothing about retrying.
        print(f"nomad-device-nvidia probe: no devices: {why_none}", file=sys.stderr)
        return 1
    return 0


def why_no_devices(plugin: NvidiaDevicePlugin) -> str:
    """Why the plugin offers no device, in words for a person."""
    from nomad_device_nvidia.nvidia import grouping

    watch = plugin.watch
    if watch.reason:
        return watch.reason
    inventory = watch.inventory
    if inventory is None:
        return "NVML did not answer within the call timeout"
    library = watch.library(inventory.driver_version)
    if not inventory.devices:
        return f"NVML found no GPUs ({library})"
    ignored = plugin.config.ignored_gpu_ids
    if not any(grouping.is_visible(d, ignored) for d in inventory.devices):
        return f"every GPU is ignored by the config's ignored_gpu_ids ({len(inventory.devices)} found; {library})"
    return f"no device is offered ({library})"
