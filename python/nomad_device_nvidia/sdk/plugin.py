"""The interface a Python device plugin implements; `serve` does the rest."""

from __future__ import annotations

import abc
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the models and protobuf load after the handshake line, not with the interface
    from nomad_device_nvidia.sdk.convert import StatsItem
    from nomad_device_nvidia.sdk.hclspec import Spec
    from nomad_device_nvidia.sdk.model import DeviceGroup, PluginInfo, Reservation


class DevicePlugin(abc.ABC):
    """A Nomad device plugin.

    Streams get a `stop` event that is set when Nomad cancels the stream or the
    plugin shuts down: wait on it instead of sleeping, and return once it is set.
    """

    @abc.abstractmethod
    def info(self) -> PluginInfo:
        """Name and version reported in PluginInfo."""

    @abc.abstractmethod
    def config_spec(self) -> Spec:
        """The HCL schema of the plugin's config block (see `sdk.hclspec`)."""

    @abc.abstractmethod
    def set_config(self, config: Mapping[str, Any]) -> None:
        """Apply the agent's config, decoded to Python values.

        Raise `ConfigError` to reject it; the previous config must stay in force.
        """

    @abc.abstractmethod
    def fingerprint(self, stop: threading.Event) -> Iterator[Sequence[DeviceGroup]]:
        """Yield the device groups at once, then whenever they may have changed.

        Answers equal to the last one sent are dropped by the service, so
        yielding periodically is fine. Raise `PluginDisabled` when disabled.
        """

    @abc.abstractmethod
    def stats(self, interval: float, stop: threading.Event) -> Iterator[StatsItem]:
        """Yield one `StatsResponse` at once, then one per `interval` seconds until `stop` is set.

        The fast path: a plugin that encodes its own messages may yield a
        serialized StatsResponse as bytes; they are sent untouched. See
        `sdk.convert.stats_bytes` for what each yielded item becomes.
        """

    def stats_stream(self, interval: float, stop: threading.Event) -> AsyncIterator[StatsItem] | None:
        """Optional: the Stats stream as an async iterator run on the server's event loop.

        Return None (the default) and the service runs `stats` on a thread of
        its own instead. Return an async iterator to answer from the event loop
        with no thread per stream: it is called and iterated on the loop, so it
        must never block (hand blocking work to threads of the plugin's own and
        await it); it yields what `stats` would, one item per `interval`, and
        returns soon after `stop` is set (the service also stops taking items).
        """
        return None

    @abc.abstractmethod
    def reserve(self, device_ids: Sequence[str]) -> Reservation:
        """Say what a task needs to use these devices; raise `ReservationRefused` if it cannot."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release resources; called once when the server stops."""
