"""Grouping, sharing and Reserve over device inventories (no NVML involved).

The NVML side is tested on the simulated driver in test_nvidia_sim.py; here
hypothesis drives the pure decisions with arbitrary inventories.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sim_branches
from conftest import REPO_ROOT, HarnessRun
from nomad_device_nvidia.nvidia.config import GROUP_BY, NvidiaConfig, ReserveConfig
from nomad_device_nvidia.nvidia.fingerprint import (
    MIB,
    NUMA_NODE,
    PARENT_UUID,
    GpuDevice,
    Inventory,
    pcie_bandwidth,
    cuda_version_text,
)
from nomad_device_nvidia.nvidia.grouping import (
    GROUPING_ATTRIBUTES,
    SHARE_SEPARATOR,
    group_name,
    render,
    sysfs_bus_id,
    variant_key,
)
from nomad_device_nvidia.sdk import ConfigError
from nomad_device_nvidia.nvidia.reserve import device_nodes, reservation, resolve
from nomad_device_nvidia.sdk import Attribute, ReservationRefused

NAMES = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB MIG 1g.5gb"]


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    n = draw(st.integers(min_value=0, max_value=12))
    devices = []
    for i in range(n):
        name = draw(st.sampled_from(NAMES))
        mem = draw(st.sampled_from([5120, 40960, 81559]))
        power = draw(st.sampled_from([300, 700]))
        parent = draw(st.sampled_from(["", "GPU-p0", "GPU-p1"])) if "MIG" in name else ""
        devices.append(
            GpuDevice(
                id=f"{'MIG' if parent else 'GPU'}-{i:04d}",
                name=name,
                pci_bus_id=f"00000000:{i:02X}:00.0",
                slot=(i, -1),
                attributes={
                    "memory": Attribute(mem, MIB),
                    "power": Attribute(power, "W"),
                    **({"architecture": Attribute("ampere")} if draw(st.booleans()) else {}),
                },
                numa_node=draw(st.sampled_from([None, 0, 1])),
                parent_uuid=parent,
                minor=i,
            )
        )
    return Inventory(driver_version="550.90.07", cuda_driver_version="12.4", devices=tuple(devices))


def healthy(_: str) -> tuple[bool, str]:
    return True, ""


@given(inv=inventories(), shares=st.integers(min_value=1, max_value=4), data=st.data())
def test_render_properties(inv: Inventory, shares: int, data: st.DataObject) -> None:
    ignored = frozenset(data.draw(st.lists(st.sampled_from([d.id for d in inv.devices] or ["x"]), max_size=3)))
    group_by = data.draw(st.sets(st.sampled_from(GROUP_BY)))
    groups, offered = render(inv, healthy, ignored, shares, group_by=group_by)
    ids = [d.id for g in groups for d in g.devices]
    # No device twice, and exactly the offered IDs.
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(o.id for o in offered)
    # Group names are unique (Nomad keys groups by vendor/type/name).
    assert len({g.name for g in groups}) == len(groups)
    visible = [d for d in inv.devices if d.id not in ignored]
    assert len(ids) == len(visible) * shares
    by_id = {o.id: o.device for o in offered}
    for g in groups:
        assert (g.vendor, g.device_type) == ("nvidia", "gpu")
        members = {by_id[d.id].id: by_id[d.id] for d in g.devices}.values()
        # Only identical devices: same name and the same SKU attributes.
        assert len({(m.name, variant_key(m.attributes)) for m in members}) == 1
        assert g.name.startswith(next(iter(members)).name)
        for k in GROUPING_ATTRIBUTES:
            assert g.attributes.get(k) == next(iter(members)).attributes.get(k)
        # A group attribute holds for every member; one they disagree on is left out.
        for m in members:
            for k, a in m.attributes.items():
                if k in g.attributes:
                    assert g.attributes[k] == a
        for k in {k for m in members for k in m.attributes}:
            if len({m.attributes.get(k) for m in members}) > 1:
                assert k not in g.attributes
        assert g.attributes["driver_version"].value == "550.90.07"
        # Per-device facts are group attributes exactly when every member has the same one.
        numas = {m.numa_node for m in members}
        parents = {m.parent_uuid for m in members}
        if len(numas) == 1 and None not in numas:
            assert g.attributes[NUMA_NODE].value == next(iter(numas))
        else:
            assert NUMA_NODE not in g.attributes
        if len(parents) == 1 and "" not in parents:
            assert g.attributes[PARENT_UUID].value == next(iter(parents))
        else:
            assert PARENT_UUID not in g.attributes
        # A split group holds one NUMA node (or only devices whose node is unknown) /
        # one parent (or only whole GPUs), and says which in its name.
        member = next(iter(members))
        if NUMA_NODE in group_by:
            assert len(numas) == 1
            assert ("NUMA " in g.name) == (member.numa_node is not None)
            if member.numa_node is not None:
                assert re.search(rf"[(,] ?NUMA {member.numa_node}[,)]", g.name), g.name
        else:
            assert "NUMA" not in g.name
        if PARENT_UUID in group_by:
            assert len(parents) == 1
            assert ("GPU-" in g.name) == bool(member.parent_uuid)
            assert member.parent_uuid in g.name
        else:
            assert "GPU-" not in g.name
        # Each instance's locality is its device's bus ID in sysfs form.
        for d in g.devices:
            assert d.pci_bus_id == sysfs_bus_id(by_id[d.id].pci_bus_id)
        # Every share maps back to its device; each device has exactly `shares` IDs.
        assert Counter(by_id[d.id].id for d in g.devices) == {m.id: shares for m in members}
    # Reserving any offered IDs gives each physical device once, in first-seen order.
    if offered:
        pick = data.draw(st.lists(st.sampled_from([o.id for o in offered]), min_size=1, max_size=6))
        devs = resolve(pick, {o.id: o for o in offered}, healthy)
        expected = list(dict.fromkeys(by_id[i].id for i in pick))
        assert [d.id for d in devs] == expected
        r = reservation(devs, ReserveConfig())
        assert r.envs == {"NVIDIA_VISIBLE_DEVICES": ",".join(expected)}


def test_sharing_ids_and_reserve_of_several_shares_gives_the_gpu_once() -> None:
    gpu = GpuDevice("GPU-a", "NVIDIA H100 80GB HBM3", "00000000:01:00.0", (0, -1), {}, minor=0)
    inv = Inventory("550.90.07", "12.4", (gpu,))
    groups, offered = render(inv, healthy, frozenset(), 3)
    assert [d.id for d in groups[0].devices] == [f"GPU-a{SHARE_SEPARATOR}{k}" for k in range(3)]
    assert groups[0].attributes["shares"].value == 3
    table = {o.id: o for o in offered}
    assert [d.id for d in resolve(["GPU-a::2", "GPU-a::0"], table, healthy)] == ["GPU-a"]
    with pytest.raises(ReservationRefused, match="GPU-a::3"):
        resolve(["GPU-a::0", "GPU-a::3"], table, healthy)
    with pytest.raises(ReservationRefused, match="unknown device IDs: GPU-a"):
        resolve(["GPU-a"], table, healthy)  # with sharing on, only share IDs exist


def test_refusal_names_unknown_and_unhealthy_ids() -> None:
    a = GpuDevice("GPU-a", "X", "", (0, -1), {})
    b = GpuDevice("GPU-b", "X", "", (1, -1), {})
    inv = Inventory("1", "", (a, b))
    _, offered = render(inv, healthy, frozenset(), 1)

    def health(device_id: str) -> tuple[bool, str]:
        return (False, "XID 79 (GPU has fallen off the bus) reported") if device_id == "GPU-b" else (True, "")

    with pytest.raises(ReservationRefused) as info:
        resolve(["GPU-a", "GPU-b", "GPU-zz"], {o.id: o for o in offered}, health)
    assert str(info.value) == (
        "unknown device IDs: GPU-zz; unhealthy device IDs: GPU-b (XID 79 (GPU has fallen off the bus) reported)"
    )


def _gpu(i: int, memory: int = 40960, power: int = 400, name: str = "NVIDIA A100") -> GpuDevice:
    attrs = {"memory": Attribute(memory, MIB), "power": Attribute(power, "W")}
    return GpuDevice(f"GPU-{i}", name, "", (i, -1), attrs)


def test_power_limit_does_not_split_a_group_and_is_left_out_when_it_differs() -> None:
    # `nvidia-smi -pl` on one GPU must not rename the group a job asks for.
    groups, _ = render(Inventory("1", "", (_gpu(0, power=400), _gpu(1, power=250), _gpu(2))), healthy, frozenset(), 1)
    assert [(g.name, [d.id for d in g.devices]) for g in groups] == [("NVIDIA A100", ["GPU-0", "GPU-1", "GPU-2"])]
    assert "power" not in groups[0].attributes and groups[0].attributes["memory"].value == 40960
    groups, _ = render(Inventory("1", "", (_gpu(0), _gpu(1))), healthy, frozenset(), 1)
    assert groups[0].attributes["power"] == Attribute(400, "W")


def test_sku_attributes_split_and_the_largest_variant_keeps_the_plain_name() -> None:
    # The odd GPU sorts first by UUID, yet the two 80 GB ones keep the plain name.
    inv = Inventory("1", "", (_gpu(0, memory=40960), _gpu(1, memory=81920), _gpu(2, memory=81920)))
    groups, _ = render(inv, healthy, frozenset(), 1)
    assert [(g.name, [d.id for d in g.devices], g.attributes["memory"].value) for g in groups] == [
        ("NVIDIA A100", ["GPU-1", "GPU-2"], 81920),
        ("NVIDIA A100 (2)", ["GPU-0"], 40960),
    ]
    # A tie goes to the variant holding the lowest UUID, whatever order NVML lists them in.
    tie = (_gpu(3, memory=81920), _gpu(1, memory=40960))
    groups, _ = render(Inventory("1", "", tie), healthy, frozenset(), 1)
    assert [(g.name, [d.id for d in g.devices]) for g in groups] == [
        ("NVIDIA A100", ["GPU-1"]),
        ("NVIDIA A100 (2)", ["GPU-3"]),
    ]


def test_refusal_lists_each_repeated_id_once() -> None:
    a = GpuDevice("GPU-a", "X", "", (0, -1), {})
    _, offered = render(Inventory("1", "", (a,)), healthy, frozenset(), 1)

    def sick(_: str) -> tuple[bool, str]:
        return False, "lost"

    with pytest.raises(ReservationRefused) as info:
        resolve(["GPU-z", "GPU-a", "GPU-z", "GPU-a"], {o.id: o for o in offered}, sick)
    assert str(info.value) == "unknown device IDs: GPU-z; unhealthy device IDs: GPU-a (lost)"


def test_ignoring_a_gpu_hides_its_mig_instances() -> None:
    mig = GpuDevice("MIG-1", "A100 MIG 1g.5gb", "", (0, 0), {}, parent_uuid="GPU-p")
    other = GpuDevice("MIG-2", "A100 MIG 1g.5gb", "", (1, 0), {}, parent_uuid="GPU-q")
    groups, _ = render(Inventory("1", "", (mig, other)), healthy, frozenset({"GPU-p"}), 1)
    assert [d.id for g in groups for d in g.devices] == ["MIG-2"]
    assert groups[0].attributes["parent_uuid"].value == "GPU-q"


def test_device_nodes_for_gpus_and_mig(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    caps = tmp_path / "caps"
    (dev / "nvidia-caps").mkdir(parents=True)
    for name in ["nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm", "nvidia-caps/nvidia-cap21", "nvidia-caps/nvidia-cap22"]:
        (dev / name).touch()
    (caps / "gpu3/mig/gi2/ci0").mkdir(parents=True)
    (caps / "gpu3/mig/gi2/access").write_text("DeviceFileMinor: 21\nDeviceFileMode: 292\n")
    (caps / "gpu3/mig/gi2/ci0/access").write_text("DeviceFileMinor: 22\n")
    gpu = GpuDevice("GPU-a", "X", "", (0, -1), {}, minor=0)
    mig = GpuDevice("MIG-b", "X MIG", "", (3, 0), {}, parent_uuid="GPU-c", minor=3, gpu_instance_id=2, compute_instance_id=0)
    cfg = ReserveConfig(device_nodes=True, cuda_visible_devices=True, dev_root=str(dev), mig_capabilities_root=str(caps))
    specs = device_nodes([gpu, mig], cfg)
    assert [(s.task_path, s.host_path) for s in specs] == [
        ("/dev/nvidia0", f"{dev}/nvidia0"),
        ("/dev/nvidia3", f"{dev}/nvidia3"),
        ("/dev/nvidiactl", f"{dev}/nvidiactl"),
        ("/dev/nvidia-uvm", f"{dev}/nvidia-uvm"),  # nvidia-uvm-tools is absent on this host: left out
        ("/dev/nvidia-caps/nvidia-cap21", f"{dev}/nvidia-caps/nvidia-cap21"),
        ("/dev/nvidia-caps/nvidia-cap22", f"{dev}/nvidia-caps/nvidia-cap22"),
    ]
    r = reservation([gpu, mig], cfg)
    assert r.envs == {"NVIDIA_VISIBLE_DEVICES": "GPU-a,MIG-b", "CUDA_VISIBLE_DEVICES": "GPU-a,MIG-b"}
    assert len(r.devices) == 6


def test_pcie_bandwidth_and_cuda_version_forms() -> None:
    assert pcie_bandwidth(3, 16) == 16384
    assert pcie_bandwidth(4, 16) == 32768
    assert pcie_bandwidth(5, 16) == 49152
    assert pcie_bandwidth(0, 16) == 0
    assert cuda_version_text(12040) == "12.4"
    assert cuda_version_text(11080) == "11.8"


# --- group_by: groups split by NUMA node and parent GPU ---


@given(inv=inventories(), group_by=st.sets(st.sampled_from(GROUP_BY)), data=st.data())
def test_groups_do_not_depend_on_the_order_nvml_lists_devices(
    inv: Inventory, group_by: set[str], data: st.DataObject
) -> None:
    shuffled = Inventory(inv.driver_version, inv.cuda_driver_version, tuple(data.draw(st.permutations(inv.devices))))
    a, _ = render(inv, healthy, frozenset(), 1, group_by=group_by)
    b, _ = render(shuffled, healthy, frozenset(), 1, group_by=group_by)
    assert a == b


def _hgx(numa_of: Callable[[int], int | None] = lambda i: i // 4) -> list[GpuDevice]:
    """Eight H100s as the simulator lays out an HGX board: GPUs 0-3 on NUMA node 0, 4-7 on 1."""
    buses = ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]
    return [
        GpuDevice(f"GPU-{i}", "NVIDIA H100 80GB HBM3", f"00000000:{buses[i]}:00.0", (i, -1),
                  {"memory": Attribute(81559, MIB)}, numa_node=numa_of(i), minor=i)
        for i in range(8)
    ]


def _names(groups: list[Any]) -> list[tuple[str, list[str], Any]]:
    return [(g.name, [d.id for d in g.devices], g.attributes.get(NUMA_NODE)) for g in groups]


def test_a_group_spanning_two_sockets_has_no_numa_node_unless_split() -> None:
    inv = Inventory("550.90.07", "12.4", tuple(_hgx()))
    groups, _ = render(inv, healthy, frozenset(), 1)
    assert _names(groups) == [("NVIDIA H100 80GB HBM3", [f"GPU-{i}" for i in range(8)], None)]
    groups, offered = render(inv, healthy, frozenset(), 1, group_by=("numa_node",))
    assert _names(groups) == [
        ("NVIDIA H100 80GB HBM3 (NUMA 0)", ["GPU-0", "GPU-1", "GPU-2", "GPU-3"], Attribute(0)),
        ("NVIDIA H100 80GB HBM3 (NUMA 1)", ["GPU-4", "GPU-5", "GPU-6", "GPU-7"], Attribute(1)),
    ]
    assert {o.id: o.group for o in offered}["GPU-5"] == "NVIDIA H100 80GB HBM3 (NUMA 1)"
    # A split names the socket even when every GPU is on one: the name must not
    # change when a GPU on the other socket is ignored or comes back.
    groups, _ = render(inv, healthy, frozenset({"GPU-4", "GPU-5", "GPU-6", "GPU-7"}), 1, group_by=("numa_node",))
    assert _names(groups) == [("NVIDIA H100 80GB HBM3 (NUMA 0)", ["GPU-0", "GPU-1", "GPU-2", "GPU-3"], Attribute(0))]


def test_devices_whose_numa_node_is_unknown_keep_the_plain_name_without_the_attribute() -> None:
    inv = Inventory("1", "", tuple(_hgx(lambda i: None if i % 2 else 1)))
    groups, _ = render(inv, healthy, frozenset(), 1, group_by=("numa_node",))
    assert _names(groups) == [
        ("NVIDIA H100 80GB HBM3", ["GPU-1", "GPU-3", "GPU-5", "GPU-7"], None),
        ("NVIDIA H100 80GB HBM3 (NUMA 1)", ["GPU-0", "GPU-2", "GPU-4", "GPU-6"], Attribute(1)),
    ]


def test_variants_are_ranked_over_the_node_before_the_split() -> None:
    # Two 40 GB and three 80 GB A100s: NUMA node 1 holds more 40 GB ones, yet the
    # 80 GB model keeps the plain name (and the 40 GB one "(2, ...)") on both sockets.
    gpus = [_gpu(0, 81920), _gpu(1, 81920), _gpu(2, 40960), _gpu(3, 40960), _gpu(4, 81920)]
    numa = {0: 0, 1: 0, 2: 1, 3: 1, 4: 1}
    inv = Inventory("1", "", tuple(GpuDevice(g.id, g.name, "", g.slot, g.attributes, numa_node=numa[i])
                                   for i, g in enumerate(gpus)))
    groups, _ = render(inv, healthy, frozenset(), 1, group_by=("numa_node",))
    assert [(g.name, [d.id for d in g.devices], g.attributes["memory"].value) for g in groups] == [
        ("NVIDIA A100 (NUMA 0)", ["GPU-0", "GPU-1"], 81920),
        ("NVIDIA A100 (NUMA 1)", ["GPU-4"], 81920),
        ("NVIDIA A100 (2, NUMA 1)", ["GPU-2", "GPU-3"], 40960),
    ]


def _mig(i: int, parent: str, numa: int) -> GpuDevice:
    return GpuDevice(f"MIG-{i}", "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "00000000:BA:00.0", (6, i),
                     {"memory": Attribute(9856, MIB), "mig_profile": Attribute("1g.10gb")},
                     numa_node=numa, parent_uuid=parent)


def test_parent_uuid_only_when_every_instance_has_the_same_parent_or_split_by_it() -> None:
    migs = (_mig(0, "GPU-b", 1), _mig(1, "GPU-a", 1), _mig(2, "GPU-b", 1))
    groups, _ = render(Inventory("1", "", migs), healthy, frozenset(), 1)
    # Instances of two GPUs in one group: no parent_uuid (a list no constraint can use).
    assert [(g.name, PARENT_UUID in g.attributes, g.attributes[NUMA_NODE].value) for g in groups] == [
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", False, 1)
    ]
    groups, _ = render(Inventory("1", "", migs), healthy, frozenset({"GPU-a"}), 1)
    assert groups[0].attributes[PARENT_UUID] == Attribute("GPU-b")
    groups, _ = render(Inventory("1", "", migs), healthy, frozenset(), 1, group_by=("parent_uuid",))
    assert [(g.name, [d.id for d in g.devices], g.attributes[PARENT_UUID].value) for g in groups] == [
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb (GPU-a)", ["MIG-1"], "GPU-a"),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb (GPU-b)", ["MIG-0", "MIG-2"], "GPU-b"),
    ]
    # Whole GPUs have no parent: splitting by parent leaves them as they were.
    gpus = tuple(_hgx())
    assert render(Inventory("1", "", gpus), healthy, frozenset(), 1, group_by=("parent_uuid",)) == render(
        Inventory("1", "", gpus), healthy, frozenset(), 1
    )
    both, _ = render(Inventory("1", "", migs), healthy, frozenset(), 1, group_by=("numa_node", "parent_uuid"))
    assert [g.name for g in both] == [
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb (NUMA 1, GPU-a)",
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb (NUMA 1, GPU-b)",
    ]


def test_group_name_forms() -> None:
    assert group_name("X", 1) == "X"
    assert group_name("X", 2) == "X (2)"
    assert group_name("X", 1, 0) == "X (NUMA 0)"
    assert group_name("X", 3, 1, "GPU-p") == "X (3, NUMA 1, GPU-p)"
    assert group_name("X", 1, None, "GPU-p") == "X (GPU-p)"


def test_group_by_config_key() -> None:
    assert NvidiaConfig().group_by == ()
    assert NvidiaConfig.from_mapping({"group_by": []}).group_by == ()
    # One order whatever the operator's, so a reordered list is not a config change.
    assert NvidiaConfig.from_mapping({"group_by": ["parent_uuid", "numa_node", "numa_node"]}).group_by == (
        "numa_node",
        "parent_uuid",
    )
    assert GROUP_BY == (NUMA_NODE, PARENT_UUID)
    with pytest.raises(ConfigError, match="group_by.*'numa_node' and 'parent_uuid' only, got 'numa'"):
        NvidiaConfig.from_mapping({"group_by": ["numa"]})
    with pytest.raises(ConfigError, match="group_by.*list of strings"):
        NvidiaConfig.from_mapping({"group_by": "numa_node"})
    with pytest.raises(ConfigError, match="group_by.*item 1 must be a non-empty string"):
        NvidiaConfig.from_mapping({"group_by": ["numa_node", 1]})


# --- PCI bus IDs as Nomad's NUMA scheduling matches them ---


def nomad_equal_bus_id(a: str, b: str) -> bool:
    """Nomad's equalBusID, mirrored: it is unexported, so the harness cannot call it.

    hashicorp/nomad v1.11.3, scheduler/feasible/device.go lines 52-59:

        func equalBusID(a, b string) bool {
            if a == b {
                return true
            }
            noDomainA := strings.TrimLeft(a, "0")
            noDomainB := strings.TrimLeft(b, "0")
            return noDomainA == noDomainB
        }

    (strings.TrimLeft with cutset "0" = str.lstrip("0"); both compare case-sensitively.)
    """
    if a == b:
        return True
    return a.lstrip("0") == b.lstrip("0")


def nomad_numa_node_of(bus_associativity: dict[str, int], pci_bus_id: str) -> int | None:
    """The NUMA node memoryNodeMatcher.Matches finds for an instance, or None when it finds none.

    scheduler/feasible/device.go lines 86-96: for an instance with a Locality, it walks
    topology.BusAssociativity and takes the node of the first key equalBusID accepts.
    Those keys are the entry names of /sys/bus/pci/devices with a numa_node >= 0
    (client/lib/numalib/detect_linux.go lines 46 and 77-88, discoverPCI).
    """
    for bus_id, node in bus_associativity.items():
        if nomad_equal_bus_id(bus_id, pci_bus_id):
            return node
    return None


def kernel_pci_name(domain: int, bus: int, device: int, function: int) -> str:
    """How Linux names a PCI device in sysfs: pci_setup_device's "%04x:%02x:%02x.%d"."""
    return f"{domain:04x}:{bus:02x}:{device:02x}.{function}"


@given(
    domain=st.integers(min_value=0, max_value=2**32 - 1) | st.sampled_from([0, 1, 0x10000]),
    bus=st.integers(min_value=0, max_value=255),
    device=st.integers(min_value=0, max_value=31),
    function=st.integers(min_value=0, max_value=7),
)
def test_every_nvml_bus_id_matches_its_sysfs_entry_the_way_nomad_compares(
    domain: int, bus: int, device: int, function: int
) -> None:
    kernel = kernel_pci_name(domain, bus, device, function)
    nvml = f"{domain:08X}:{bus:02X}:{device:02X}.{function}"  # nvmlPciInfo_t.busId
    legacy = f"{domain & 0xFFFF:04X}:{bus:02X}:{device:02X}.{function}"  # busIdLegacy
    ours = sysfs_bus_id(nvml)
    assert ours == kernel
    assert nomad_equal_bus_id(kernel, ours)
    if domain <= 0xFFFF:
        assert sysfs_bus_id(legacy) == kernel
    # Another device (a neighbour function, or the same slot on the next bus) never matches.
    assert not nomad_equal_bus_id(kernel_pci_name(domain, bus, device, (function + 1) % 8), ours)
    assert not nomad_equal_bus_id(kernel_pci_name(domain, (bus + 1) % 256, device, function), ours)
    # NVML's own form matches only when it happens to hold no hex letter: why it is converted.
    assert nomad_equal_bus_id(kernel, nvml) == (nvml.lower() == nvml or nvml.lstrip("0") == kernel.lstrip("0"))


def test_bus_id_examples() -> None:
    assert sysfs_bus_id("00000000:2A:00.0") == "0000:2a:00.0"
    assert sysfs_bus_id("00000001:DB:00.0") == "0001:db:00.0"
    assert sysfs_bus_id(" 0000:2A:00.0 ") == "0000:2a:00.0"
    assert sysfs_bus_id("2a:00.0") == "0000:2a:00.0"  # no domain: domain 0, as the kernel assumes
    assert sysfs_bus_id("") == ""  # no locality at all
    assert sysfs_bus_id("PCI-OTHER") == "pci-other"
    assert not nomad_equal_bus_id("0000:2a:00.0", "00000000:2A:00.0")
    assert nomad_equal_bus_id("0000:2a:00.0", "00000000:2a:00.0")


def test_this_machines_sysfs_names_round_trip() -> None:
    # The kernel's real names, where this machine has PCI devices: written back in
    # NVML's form, each must come out as the entry Nomad's numalib would key it by.
    root = Path("/sys/bus/pci/devices")
    names = sorted(os.listdir(root)) if root.is_dir() else []
    for name in names:
        m = re.fullmatch(r"([0-9a-f]{4,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])", name)
        assert m, f"unexpected sysfs PCI name {name!r}"
        domain, bus, device, function = (int(g, 16) for g in m.groups())
        assert sysfs_bus_id(f"{domain:08X}:{bus:02X}:{device:02X}.{function}") == name


# --- Through Nomad's own client code: the node's devices as the device manager registers them ---

SIM_LIB = REPO_ROOT / "build" / "sim" / "libnvidia-ml.so.1"

# pynvml over the simulated library: each offered device's PCI address fields,
# NUMA node and parent, read independently of the plugin.
NVML_TRUTH = """
import json, sys
from nomad_device_nvidia.nvidia.nvml.library import load_nvml
load_nvml(sys.argv[1], sys.argv[2])
import pynvml as n
n.nvmlInit()
def text(v): return v.decode() if isinstance(v, bytes) else v
out = {}
for i in range(n.nvmlDeviceGetCount()):
    h = n.nvmlDeviceGetHandleByIndex(i)
    pci = n.nvmlDeviceGetPciInfo(h)
    gpu = {"domain": pci.domain, "bus": pci.bus, "device": pci.device, "busId": text(pci.busId),
           "numa": n.nvmlDeviceGetNumaNodeId(h), "uuid": text(n.nvmlDeviceGetUUID(h)), "parent": ""}
    try:
        mig_on = n.nvmlDeviceGetMigMode(h)[0] == n.NVML_DEVICE_MIG_ENABLE
    except n.NVMLError_NotSupported:
        mig_on = False
    if not mig_on:
        out[gpu["uuid"]] = gpu
        continue
    for j in range(n.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            mig = n.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
        except n.NVMLError_NotFound:
            continue
        out[text(n.nvmlDeviceGetUUID(mig))] = {**gpu, "parent": gpu["uuid"]}
n.nvmlShutdown()
print(json.dumps(out))
"""

# Ten H100s: the simulator puts GPUs 8 and 9 in PCI domain 1; the last two in MIG mode.
TEN_GPUS = """name = "ten"
[topology]
numa_nodes = 2
[[gpus]]
model = "h100-sxm5-80gb"
count = 8
[[gpus]]
model = "h100-sxm5-80gb"
count = 2
mig = ["3g.40gb", "1g.10gb", "1g.10gb"]
"""


def _nvml_truth(scenario: Path) -> dict[str, dict[str, Any]]:
    if not SIM_LIB.exists():
        pytest.fail(f"{SIM_LIB} is missing (make sim)")
    out = subprocess.run([sys.executable, "-c", NVML_TRUTH, str(SIM_LIB), str(scenario)], capture_output=True,
                         text=True, timeout=120, check=True)
    truth: dict[str, dict[str, Any]] = json.loads(out.stdout)
    return truth


def _node_devices(run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path, scenario: Path,
                  library: Path = SIM_LIB, **settings: Any) -> list[dict[str, Any]]:
    values = {"simulate": str(scenario), "nvml_library": str(library), "fingerprint_period": "1h", **settings}
    config = tmp_path / "nvidia.hcl"
    config.write_text("config {\n" + "".join(f"  {k} = {json.dumps(v)}\n" for k, v in values.items()) + "}\n")
    run = run_harness("agent", "--plugin", plugin_bin, "--config", config).ok()
    devices: list[dict[str, Any]] = run.of("node_devices")[0]["devices"]
    assert devices, run.describe()
    return devices


def test_nomads_numa_matcher_finds_every_instance_on_its_gpus_node(
    run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path
) -> None:
    scenario = tmp_path / "ten.toml"
    scenario.write_text(TEN_GPUS)
    truth = _nvml_truth(scenario)
    # The node's topology as numalib would read it from sysfs on this machine.
    bus_associativity = {kernel_pci_name(t["domain"], t["bus"], t["device"], int(t["busId"][-1])): t["numa"]
                         for t in truth.values()}
    assert {t["domain"] for t in truth.values()} == {0, 1} and {t["numa"] for t in truth.values()} == {0, 1}
    devices = _node_devices(run_harness, plugin_bin, tmp_path, scenario)
    instances = {i["id"]: i for d in devices for i in d["devices"]}
    assert set(instances) == set(truth)
    for device_id, inst in instances.items():
        assert nomad_numa_node_of(bus_associativity, inst["pci_bus_id"]) == truth[device_id]["numa"], inst
    # NVML's own form, as HashiCorp's plugin sends it, is found for no GPU whose bus has a hex letter.
    assert any(nomad_numa_node_of(bus_associativity, t["busId"]) is None for t in truth.values())


@pytest.mark.parametrize("branch", [sim_branches.OLDEST, sim_branches.NEWEST])
def test_group_by_through_nomads_client_gives_constraint_ready_attributes(
    run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path, branch: int
) -> None:
    # The truth from the library with every function (nvmlDeviceGetNumaNodeId included);
    # the plugin on the branch's own (535 lacks that call: the node comes another way).
    ready_made = REPO_ROOT / "scenarios" / "8xh100-mig.toml"
    truth = _nvml_truth(ready_made)
    scenario = tmp_path / f"8xh100-mig-{branch}.toml"
    scenario.write_text(sim_branches.at_branch(ready_made.read_text(), branch))
    library = sim_branches.library(branch)
    plain = _node_devices(run_harness, plugin_bin, tmp_path, scenario, library)
    h100 = next(d for d in plain if d["name"] == "NVIDIA H100 80GB HBM3")
    assert "numa_node" not in h100["attributes"], "the scenario's whole GPUs should span both sockets"
    assert any("parent_uuid" not in d["attributes"] for d in plain if "MIG" in d["name"])

    split = _node_devices(run_harness, plugin_bin, tmp_path, scenario, library,
                          group_by=["numa_node", "parent_uuid"])
    assert len({d["name"] for d in split}) == len(split)
    assert sorted(i["id"] for d in split for i in d["devices"]) == sorted(truth)
    for d in split:
        members = [truth[i["id"]] for i in d["devices"]]
        numa = d["attributes"]["numa_node"]
        assert (numa["type"], {m["numa"] for m in members}) == ("int", {numa["value"]}), d
        assert f"NUMA {numa['value']}" in d["name"]
        if "MIG" in d["name"]:
            parent = d["attributes"]["parent_uuid"]
            assert (parent["type"], {m["parent"] for m in members}) == ("string", {parent["value"]}), d
            assert d["name"].endswith(f", {parent['value']})")
        else:
            assert "parent_uuid" not in d["attributes"]
    assert {d["name"] for d in split if "MIG" not in d["name"]} == {
        "NVIDIA H100 80GB HBM3 (NUMA 0)",
        "NVIDIA H100 80GB HBM3 (NUMA 1)",
    }
