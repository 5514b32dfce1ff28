"""NvidiaConfig: defaults, validation errors naming the key, the HCL schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomad_device_nvidia.nvidia.config import DEFAULT_IGNORED_XIDS, NvidiaConfig, config_spec, format_duration
from nomad_device_nvidia.nvidia.plugin import NvidiaDevicePlugin
from nomad_device_nvidia.sdk import ConfigError


def test_defaults_match_hashicorp_plugin_and_brief() -> None:
    cfg = NvidiaConfig.from_mapping({})
    assert cfg.enabled is True
    assert cfg.ignored_gpu_ids == frozenset()
    assert cfg.fingerprint_period == 60.0
    assert (cfg.nvml_library, cfg.simulate, cfg.stats_engine, cfg.extended_stats) == ("", "", "native", False)
    assert cfg.health.enabled and cfg.health.ignored_xids == frozenset({13, 31, 43, 45, 68, 109})
    assert cfg.health.probe_interval == 5.0
    assert not cfg.reserve.cuda_visible_devices and not cfg.reserve.device_nodes
    assert cfg.sharing.shares == 1
    assert NvidiaConfig.from_mapping(None) == cfg


def test_agent_style_config_with_null_blocks() -> None:
    # What the agent sends when blocks are absent: every attr with its default, blocks null.
    cfg = NvidiaConfig.from_mapping(
        {
            "enabled": True,
            "ignored_gpu_ids": ["GPU-a", "MIG-b"],
            "fingerprint_period": "1m30s",
            "nvml_library": "",
            "simulate": "",
            "stats_engine": "python",
            "extended_stats": True,
            "health": None,
            "reserve": {"cuda_visible_devices": True, "device_nodes": True, "dev_root": "/host/dev/"},
            "sharing": {"shares": 4.0},
        }
    )
    assert cfg.ignored_gpu_ids == {"GPU-a", "MIG-b"}
    assert cfg.fingerprint_period == 90.0
    assert cfg.stats_engine == "python" and cfg.extended_stats
    assert cfg.health.ignored_xids == frozenset(DEFAULT_IGNORED_XIDS)
    assert cfg.reserve.cuda_visible_devices and cfg.reserve.device_nodes and cfg.reserve.dev_root == "/host/dev"
    assert cfg.sharing.shares == 4


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"enabled": "yes"}, "enabled", "true or false"),
        ({"ignored_gpu_ids": "GPU-1"}, "ignored_gpu_ids", "list of strings"),
        ({"ignored_gpu_ids": ["GPU-1", 3]}, "ignored_gpu_ids", "item 1"),
        ({"fingerprint_period": "soon"}, "fingerprint_period", "invalid duration"),
        ({"fingerprint_period": "-5s"}, "fingerprint_period", "at least 1s"),
        ({"fingerprint_period": "0"}, "fingerprint_period", "at least 1s"),
        ({"fingerprint_period": "1ns"}, "fingerprint_period", "at least 1s"),
        ({"fingerprint_period": "999ms"}, "fingerprint_period", "at least 1s"),
        ({"fingerprint_period": 60}, "fingerprint_period", "duration string"),
        ({"stats_engine": "rust"}, "stats_engine", "one of"),
        ({"nvml_library": 1}, "nvml_library", "string"),
        ({"nvml_library": "lib/libnvidia-ml.so.1"}, "nvml_library", "absolute path"),
        ({"nvml_library": "/nonexistent/libnvidia-ml.so.1"}, "nvml_library", "not an existing file"),
        ({"nvml_library": "/"}, "nvml_library", "not an existing file"),
        ({"simulate": "scenarios/1gpu.toml"}, "simulate", "absolute path"),
        ({"simulate": "/nonexistent/scenario.toml"}, "simulate", "not an existing file"),
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"health": {"ignored_xids": "13"}}, "health.ignored_xids", "list of XID"),
        ({"health": {"ignored_xids": [13, "x"]}}, "health.ignored_xids", "item 1"),
        ({"health": {"ignored_xids": [13, 1.5]}}, "health.ignored_xids", "item 1"),
        ({"health": {"ignored_xids": [0]}}, "health.ignored_xids", "between"),
        ({"health": {"ignored_xids": [True]}}, "health.ignored_xids", "item 0"),
        ({"health": {"probe_interval": "-1s"}}, "health.probe_interval", "at least 100ms"),
        ({"health": {"probe_interval": "1us"}}, "health.probe_interval", "at least 100ms"),
        ({"health": {"probe_interval": "99ms"}}, "health.probe_interval", "at least 100ms"),
        ({"health": {"typo": 1}}, "health.typo", "unknown key"),
        ({"health": "on"}, "health", "must be a block"),
        ({"reserve": {"dev_root": "dev"}}, "reserve.dev_root", "absolute path"),
        ({"reserve": {"device_nodes": 1}}, "reserve.device_nodes", "true or false"),
        ({"sharing": {"shares": 0}}, "sharing.shares", "between 1 and"),
        ({"sharing": {"shares": 1000}}, "sharing.shares", "between 1 and"),
        ({"sharing": {"shares": 2.5}}, "sharing.shares", "whole number"),
        ({"sharing": {"shares": "2.5"}}, "sharing.shares", "whole number"),
        ({"sharing": {"shares": "two"}}, "sharing.shares", "whole number"),
        ({"sharing": {"shares": "NaN"}}, "sharing.shares", "whole number"),
        ({"sharing": {"shares": "100000000000000000000000"}}, "sharing.shares", "between 1 and"),
        ({"health": {"ignored_xids": ["1e400"]}}, "health.ignored_xids", "between"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        NvidiaConfig.from_mapping(raw)
    assert info.value.key == key
    assert f'config key "{key}"' in str(info.value)
    assert fragment in str(info.value)


def test_floors_and_paths_that_are_accepted(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "s"\n')
    cfg = NvidiaConfig.from_mapping(
        {"fingerprint_period": "1s", "health": {"probe_interval": "100ms"}, "simulate": str(scenario), "nvml_library": ""}
    )
    assert (cfg.fingerprint_period, cfg.health.probe_interval) == (1.0, 0.1)
    assert (cfg.simulate, cfg.nvml_library) == (str(scenario), "")


def test_numbers_as_decimal_strings_as_cty_sends_big_ones() -> None:
    cfg = NvidiaConfig.from_mapping({"sharing": {"shares": "8"}, "health": {"ignored_xids": ["79", 48, "4294967295"]}})
    assert cfg.sharing.shares == 8
    assert cfg.health.ignored_xids == frozenset({79, 48, 2**32 - 1})


@pytest.mark.parametrize("text", ["1e1000000", "1e10000000", "99999999999999999999", "-1e25"])
def test_huge_decimal_strings_are_refused_at_once(text: str) -> None:
    # int("1e1000000") builds a million-digit number: SetConfig would hang on it.
    with pytest.raises(ConfigError, match=f"between 1 and 64, got '{text}'"):
        NvidiaConfig.from_mapping({"sharing": {"shares": text}})
    with pytest.raises(ConfigError, match=f"between 1 and 4294967295, got '{text}'"):
        NvidiaConfig.from_mapping({"health": {"ignored_xids": [text]}})


@pytest.mark.parametrize(("seconds", "text"), [(60.0, "1m"), (5.0, "5s"), (0.1, "100ms"), (90.0, "90s"), (7200.0, "2h")])
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert NvidiaConfig.from_mapping({"fingerprint_period": format_duration(seconds + 1)}).fingerprint_period == seconds + 1


def test_rejected_config_keeps_the_previous_one() -> None:
    plugin = NvidiaDevicePlugin()
    plugin.set_config({"fingerprint_period": "5s", "ignored_gpu_ids": ["GPU-x"]})
    good = plugin.config
    with pytest.raises(ConfigError):
        plugin.set_config({"fingerprint_period": "5 seconds"})
    assert plugin.config == good


def _spec_defaults(spec: Any) -> dict[str, Any]:
    """Walk the hclspec proto back into {key: default} (blocks: nested dicts)."""
    out: dict[str, Any] = {}
    for name, sub in spec.object.attributes.items():
        kind = sub.WhichOneof("block")
        if kind == "default":
            out[name] = json.loads(sub.default.default.literal.value)
            assert sub.default.primary.Attr.name == name
        elif kind == "block_value":
            out[name] = _spec_defaults(sub.block_value.nested)
        elif kind == "block_list":
            out[name] = []  # absent blocks: an empty list
        else:
            raise AssertionError(f"{name}: no default ({kind})")
    return out


def test_schema_has_a_default_for_every_key_that_parses_to_the_dataclass_defaults() -> None:
    defaults = _spec_defaults(config_spec())
    assert set(defaults) == {
        "enabled",
        "ignored_gpu_ids",
        "fingerprint_period",
        "nvml_library",
        "simulate",
        "stats_engine",
        "extended_stats",
        "group_by",
        "health",
        "reserve",
        "sharing",
        "mps",
    }
    assert NvidiaConfig.from_mapping(defaults) == NvidiaConfig()
    # The agent-visible form of the defaults (HashiCorp's first three keys).
    assert (defaults["enabled"], defaults["ignored_gpu_ids"], defaults["fingerprint_period"]) == (True, [], "1m")
    assert defaults["health"]["probe_interval"] == "5s"
    assert defaults["health"]["ignored_xids"] == sorted(DEFAULT_IGNORED_XIDS)


durations = st.builds(lambda n, u: f"{n}{u}", st.integers(min_value=1, max_value=10_000), st.sampled_from(["s", "m", "h"]))


@given(
    period=durations,
    ids=st.lists(st.text(alphabet="GPU-abcdef0123456789", min_size=1, max_size=12), max_size=5),
    xids=st.lists(st.integers(min_value=1, max_value=200), max_size=8),
    shares=st.integers(min_value=1, max_value=64),
)
def test_any_valid_config_round_trips(period: str, ids: list[str], xids: list[int], shares: int) -> None:
    cfg = NvidiaConfig.from_mapping(
        {"fingerprint_period": period, "ignored_gpu_ids": ids, "health": {"ignored_xids": xids}, "sharing": {"shares": shares}}
    )
    assert cfg.fingerprint_period > 0
    assert cfg.ignored_gpu_ids == frozenset(i.strip() for i in ids)
    assert cfg.health.ignored_xids == frozenset(xids)
    assert cfg.sharing.shares == shares


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text() | st.booleans(), min_size=1))
def test_garbage_is_a_config_error_never_a_crash(raw: dict[str, Any]) -> None:
    try:
        NvidiaConfig.from_mapping(raw)
    except ConfigError as exc:
        assert exc.key
