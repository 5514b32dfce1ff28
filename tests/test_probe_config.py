"""`probe --config` reads an agent file as the Nomad agent does.

The agent parses its files as HCL1 (or JSON) with its own code, keys plugin
blocks by name (the last one counts) and hands the plugin the block's config
through hcldec. The Go harness reads each file here with the agent's own
agent.ParseConfigFile and the loader's encoding, and sends it to the real
plugin; probe reads the same file with pyhcl. Both must come to the same
NvidiaConfig, or to the same refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nomad_device_nvidia.nvidia.config import NvidiaConfig
from nomad_device_nvidia.probe import ProbeError, load_plugin_config
from nomad_device_nvidia.sdk import ConfigError

FILES = sorted((Path(__file__).parent / "agent_configs").iterdir())


def agent_reading(run_harness: Callable[..., Any], plugin_bin: Path, path: Path) -> tuple[Any, str | None]:
    """What the agent makes of `path`: the decoded config value, and the plugin's answer to it."""
    run = run_harness("configs", "--plugin", plugin_bin, "--name", "nomad-device-nvidia", "--step", f"hcl:{path}").ok()
    config = run.one("config")
    assert config["agent_error"] is None, run.describe()
    return config["value"], run.one("set_config")["error"]


def probe_reading(path: Path) -> NvidiaConfig | str:
    try:
        return NvidiaConfig.from_mapping(load_plugin_config(path))
    except ConfigError as exc:
        return str(exc)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_probe_reads_what_the_agent_reads(
    run_harness: Callable[..., Any], plugin_bin: Path, path: Path
) -> None:
    value, plugin_error = agent_reading(run_harness, plugin_bin, path)
    probed = probe_reading(path)
    if plugin_error is None:
        assert probed == NvidiaConfig.from_mapping(value), (value, probed)
    else:
        assert isinstance(probed, str), f"the plugin refused {plugin_error!r}; probe read {probed}"
        assert probed in plugin_error


def test_the_files_cover_what_agent_files_hold() -> None:
    texts = {p.name: p.read_text() for p in FILES}
    joined = "\n".join(texts.values())
    for marker in ("#", "//", "/*", "<<EOT"):
        assert marker in joined, marker
    assert joined.count('plugin "nomad-device-nvidia"') >= 3  # one file repeats the block
    assert any(name.endswith(".json") for name in texts)


def test_the_last_block_of_that_name_counts_whole(tmp_path: Path) -> None:
    path = Path(__file__).parent / "agent_configs" / "repeated.hcl"
    config = load_plugin_config(path)
    assert config == {"extended_stats": True, "health": {"probe_interval": "3s"}}


def test_a_file_without_the_block_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "agent.hcl"
    path.write_text('plugin "raw_exec" {\n  config { enabled = true }\n}\n')
    with pytest.raises(ProbeError, match='no plugin "nomad-device-nvidia" block'):
        load_plugin_config(path)
    path.write_text("plugin {{{")
    with pytest.raises(ProbeError, match="is not valid HCL"):
        load_plugin_config(path)
