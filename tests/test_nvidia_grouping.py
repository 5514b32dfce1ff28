"""Grouping, sharing and Reserve over device inventories (no NVML involved).

The NVML side is tested on the simulated driver in test_nvidia_sim.py; here
hypothesis drives the pure decisions with arbitrary inventories.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomad_device_nvidia.nvidia.config import ReserveConfig
from nomad_device_nvidia.nvidia.fingerprint import (
    MIB,
    GpuDevice,
    Inventory,
    pcie_bandwidth,
    cuda_version_text,
)
from nomad_device_nvidia.nvidia.grouping import GROUPING_ATTRIBUTES, SHARE_SEPARATOR, render, variant_key
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
    groups, offered = render(inv, healthy, ignored, shares)
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
        if "numa_node" in g.attributes:
            assert {m.numa_node for m in members} == {g.attributes["numa_node"].value}
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
