"""Reserve: check the asked-for IDs, map shares back to devices, say what the task needs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

from nomad_device_nvidia.nvidia import cdi
from nomad_device_nvidia.nvidia.config import ReserveConfig
from nomad_device_nvidia.nvidia.fingerprint import GpuDevice
from nomad_device_nvidia.nvidia.grouping import Offered
from nomad_device_nvidia.sdk import DeviceSpec, Reservation, ReservationRefused

log = logging.getLogger(__name__)

NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
# Nodes every CUDA process opens besides its GPU's own /dev/nvidiaN.
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
# Read by NVIDIA's container toolkit: IMEX channels to create in the container
# (multi-node NVLink), and the GPUDirect Storage, MOFED and GDRCopy features.
NVIDIA_IMEX_CHANNELS = "NVIDIA_IMEX_CHANNELS"
IMEX_CHANNELS_DIR = "nvidia-caps-imex-channels"
FEATURE_TOGGLES = (("gds", "NVIDIA_GDS"), ("mofed", "NVIDIA_MOFED"), ("gdrcopy", "NVIDIA_GDRCOPY"))
# A refusal names at most this many IDs, each cut to this many characters, and the count.
NAMED_IDS = 5
ID_CHARS = 80


def resolve(
    device_ids: Sequence[str],
    offered: Mapping[str, Offered],
    health: Callable[[str], tuple[bool, str]],
) -> list[GpuDevice]:
    """The devices behind the IDs, in the order given, each once; refuses unknown/unhealthy IDs."""
    # Each ID named once, in the order given, however often Nomad repeats it.
    asked = list(dict.fromkeys(device_ids))
    unknown = [i for i in asked if i not in offered]
    unhealthy = []
    for i in asked:
        if i in offered:
            ok, why = health(offered[i].device.id)
            if not ok:
                unhealthy.append(f"{_short(i)} ({why})")
    problems = []
    if unknown:
        problems.append(f"unknown device IDs: {_some(unknown, _short)}")
    if unhealthy:
        problems.append(f"unhealthy device IDs: {_some(unhealthy, str)}")
    if problems:
        raise ReservationRefused("; ".join(problems))
    devices: dict[str, GpuDevice] = {}
    for i in asked:
        dev = offered[i].device
        devices.setdefault(dev.id, dev)  # several shares of one GPU give that GPU once
    return list(devices.values())


def _some(items: Sequence[str], show: Callable[[str], str]) -> str:
    """A few of `items` and how many there are: a bounded message for any request."""
    shown = [show(i) for i in items[:NAMED_IDS]]
    if len(items) > NAMED_IDS:
        return f"{', '.join(shown)} and {len(items) - NAMED_IDS:,} more ({len(items):,} in all)"
    return ", ".join(shown)


def _short(text: str) -> str:
    """An ID as a message names it: on one line, cut short."""
    if not text.isprintable():
        text = repr(text)[1:-1]  # control characters escaped, so the message stays one line
    return text if len(text) <= ID_CHARS else f"{text[:ID_CHARS]}... ({len(text):,} characters)"


def _cap_minor(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "DeviceFileMinor":
                    return int(value.strip())
    except (OSError, ValueError) as exc:
        log.warning("cannot read MIG capability %s: %s", path, exc)
    return None


def device_nodes(devices: Sequence[GpuDevice], config: ReserveConfig) -> list[DeviceSpec]:
    """The /dev nodes the devices need, present on this host, each once."""
    names: list[str] = []
    for dev in devices:
        if dev.minor is None:
            log.warning("no device minor known for %s; /dev/nvidiaN not added", dev.id)
            continue
        names.append(f"nvidia{dev.minor}")
    names.extend(CONTROL_NODES)
    for dev in devices:
        if dev.parent_uuid and dev.minor is not None and dev.gpu_instance_id is not None:
            gi_dir = f"{config.mig_capabilities_root}/gpu{dev.minor}/mig/gi{dev.gpu_instance_id}"
            paths = [f"{gi_dir}/access"]
            if dev.compute_instance_id is not None:
                paths.append(f"{gi_dir}/ci{dev.compute_instance_id}/access")
            for path in paths:
                minor = _cap_minor(path)
                if minor is not None:
                    names.append(f"nvidia-caps/nvidia-cap{minor}")
    names.extend(f"{IMEX_CHANNELS_DIR}/channel{n}" for n in config.imex_channels)
    specs: list[DeviceSpec] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        host = f"{config.dev_root}/{name}"
        if not os.path.exists(host):
            log.warning("device node %s does not exist on this host; not added", host)
            continue
        specs.append(DeviceSpec(task_path=f"/dev/{name}", host_path=host, permissions="rw"))
    return specs


def reservation(devices: Sequence[GpuDevice], config: ReserveConfig) -> Reservation:
    if config.cdi:
        return cdi_reservation(devices, config)
    visible = ",".join(d.id for d in devices)
    envs = {NVIDIA_VISIBLE_DEVICES: visible}
    if config.cuda_visible_devices:
        envs[CUDA_VISIBLE_DEVICES] = visible
    if config.imex_channels:
        envs[NVIDIA_IMEX_CHANNELS] = ",".join(str(n) for n in config.imex_channels)
    for key, env in FEATURE_TOGGLES:
        if getattr(config, key):
            envs[env] = "enabled"
    nodes = tuple(device_nodes(devices, config)) if config.device_nodes else ()
    return Reservation(envs=envs, devices=nodes)


def cdi_name(dev: GpuDevice) -> str:
    """The device's name under nvidia-ctk's index strategy: "2", or "2:1" for a MIG device."""
    gpu, mig = dev.slot
    return f"{gpu}:{mig}" if mig >= 0 else str(gpu)


def cdi_reservation(devices: Sequence[GpuDevice], config: ReserveConfig) -> Reservation:
    """The CDI spec's edits for the devices, and no NVIDIA_VISIBLE_DEVICES (cdi.py says why)."""
    edits = cdi.edits_for([(d.id, cdi_name(d)) for d in devices], config.cdi_spec_dirs)
    envs = dict(edits.env)
    if config.cuda_visible_devices:
        envs[CUDA_VISIBLE_DEVICES] = ",".join(d.id for d in devices)
    return Reservation(envs=envs, mounts=edits.mounts, devices=edits.devices)
