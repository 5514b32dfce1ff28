"""Reserve options for NVLink-switched and RDMA nodes: IMEX channels and
NVIDIA's container toolkit feature toggles, opt-in, decoded with errors that name the key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from nomad_device_nvidia.nvidia.config import MAX_IMEX_CHANNEL, NvidiaConfig, ReserveConfig, config_spec
from nomad_device_nvidia.nvidia.fingerprint import GpuDevice
from nomad_device_nvidia.nvidia.reserve import reservation
from nomad_device_nvidia.sdk import ConfigError

GPU = GpuDevice(
    id="GPU-6d2c4a8e-1f3b-4c7d-9e5a-0b8f2d6c4e1a", name="NVIDIA GB200", pci_bus_id="", slot=(0, -1), attributes={}, minor=0
)


def reserve_config(**keys: Any) -> ReserveConfig:
    return NvidiaConfig.from_mapping({"reserve": keys}).reserve


def test_off_by_default() -> None:
    cfg = NvidiaConfig().reserve
    assert (cfg.imex_channels, cfg.gds, cfg.mofed, cfg.gdrcopy) == ((), False, False, False)
    assert reservation([GPU], cfg).envs == {"NVIDIA_VISIBLE_DEVICES": GPU.id}
    # The schema's defaults decode to the same config.
    spec = config_spec().object.attributes["reserve"].block_value.nested.object.attributes
    assert {"imex_channels", "gds", "mofed", "gdrcopy"} <= set(spec)


def test_toggles_and_channels_become_the_toolkit_variables() -> None:
    cfg = reserve_config(imex_channels=[3, 0], gds=True, mofed=True, gdrcopy=True)
    assert cfg.imex_channels == (0, 3)
    envs = reservation([GPU], cfg).envs
    assert envs == {
        "NVIDIA_VISIBLE_DEVICES": GPU.id,
        "NVIDIA_IMEX_CHANNELS": "0,3",
        "NVIDIA_GDS": "enabled",
        "NVIDIA_MOFED": "enabled",
        "NVIDIA_GDRCOPY": "enabled",
    }
    only = reservation([GPU], reserve_config(gdrcopy=True)).envs
    assert set(only) == {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_GDRCOPY"}
    # Channels arrive as cty numbers: floats and whole decimal strings too.
    assert reserve_config(imex_channels=[1.0, "2"]).imex_channels == (1, 2)


def test_with_device_nodes_the_channel_nodes_that_exist(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-caps-imex-channels/channel0"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    cfg = reserve_config(imex_channels=[0, 1], device_nodes=True, dev_root=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        res = reservation([GPU], cfg)
    paths = [(d.task_path, d.host_path, d.permissions) for d in res.devices]
    assert ("/dev/nvidia-caps-imex-channels/channel0", f"{tmp_path}/nvidia-caps-imex-channels/channel0", "rw") in paths
    assert not any("channel1" in p[0] for p in paths)
    assert any("channel1 does not exist" in r.getMessage() for r in caplog.records)
    assert res.envs["NVIDIA_IMEX_CHANNELS"] == "0,1"
    # Without device_nodes the toolkit creates the channels; no nodes are handed over.
    assert reservation([GPU], reserve_config(imex_channels=[0], dev_root=str(tmp_path))).devices == ()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"imex_channels": 0}, 'config key "reserve.imex_channels": must be a list of IMEX channel numbers, got a number'),
        ({"imex_channels": ["x"]}, "item 0 must be an IMEX channel number, got 'x'"),
        ({"imex_channels": [1, -1]}, f"item 1 must be a channel between 0 and {MAX_IMEX_CHANNEL}, got -1"),
        ({"imex_channels": [2, 2]}, "item 1: channel 2 is listed twice"),
        ({"imex_channels": [0.5]}, "item 0 must be an IMEX channel number, got 0.5"),
        ({"gds": "yes"}, 'config key "reserve.gds": must be true or false'),
        ({"mofed": 1}, 'config key "reserve.mofed": must be true or false'),
        ({"gdrcopy": None, "gdr": True}, 'config key "reserve.gdr": unknown key'),
    ],
)
def test_bad_values_name_the_key(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        NvidiaConfig.from_mapping({"reserve": keys})
    assert message in str(err.value)
