"""Errors a plugin raises to answer Nomad with a clear, specific gRPC status."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value was rejected; the message names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f'config key "{key}": {problem}')
        self.key = key
        self.problem = problem


class ReservationRefused(Exception):
    """Reserve was asked for devices it cannot give; the message names them."""


class PluginDisabled(Exception):
    """The plugin is disabled by its config (Nomad's "device is not enabled")."""

    def __init__(self) -> None:
        super().__init__("device is not enabled")
