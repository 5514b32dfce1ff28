"""Logs are hclog JSON lines that go-plugin's host can parse."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from nomad_device_nvidia.sdk import logs


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """logs.configure sets the process-wide root logger; give later tests theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_hclog_json_line_has_level_message_module_timestamp_and_pairs() -> None:
    out = io.StringIO()
    logs.configure("debug", stream=out)
    logging.getLogger("nomad_device_nvidia.test").warning("gpu lost", extra={"uuid": "GPU-1", "n": 3})
    logging.getLogger("x").debug("detail")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["@level"] == "warn"
    assert first["@message"] == "gpu lost"
    assert first["@module"] == "nomad_device_nvidia.test"
    assert first["uuid"] == "GPU-1" and first["n"] == 3
    # go-plugin parses @timestamp with Go's layout 2006-01-02T15:04:05.000000Z07:00.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)", first["@timestamp"])
    assert second["@level"] == "debug"


def test_level_filter() -> None:
    out = io.StringIO()
    logs.configure("error", stream=out)
    logging.getLogger("x").warning("quiet")
    logging.getLogger("x").error("loud")
    assert [json.loads(line)["@message"] for line in out.getvalue().splitlines()] == ["loud"]


def _log_each_level(out: io.StringIO) -> list[str]:
    log = logging.getLogger("x")
    log.debug("debug")
    log.info("info")
    log.warning("warn")
    log.error("error")
    return [json.loads(line)["@message"] for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(("env", "first_logged"), [
    ({}, "info"),
    ({"NOMAD_PLUGIN_LOG_LEVEL": "debug"}, "debug"),
    ({"NOMAD_DEVICE_NVIDIA_LOG_LEVEL": "warn"}, "warn"),  # the project's old name still works
    ({"NOMAD_PLUGIN_LOG_LEVEL": "error", "NOMAD_DEVICE_NVIDIA_LOG_LEVEL": "debug"}, "error"),  # the SDK's wins
    ({"NOMAD_PLUGIN_LOG_LEVEL": "", "NOMAD_DEVICE_NVIDIA_LOG_LEVEL": "warn"}, "warn"),  # empty is unset
    ({"NOMAD_PLUGIN_LOG_LEVEL": "DEBUG"}, "debug"),
])
def test_level_from_the_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], first_logged: str) -> None:
    for name in logs.LEVEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    logs.configure(stream=out)
    order = ["debug", "info", "warn", "error"]
    assert _log_each_level(out) == order[order.index(first_logged):]


def test_level_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMAD_PLUGIN_LOG_LEVEL", "debug")
    out = io.StringIO()
    logs.configure("error", stream=out)
    assert _log_each_level(out) == ["error"]
