"""Bounds that keep one plugin process answering whatever a client opens or sends.

The server is grpc.aio: go-plugin's own streams cost no thread, but a
plugin's stream runs its iterator on a thread of its own while open, so each
kind of stream has a bound. SetConfig and Reserve run on a pool of
`unary_workers` threads that no stream can take: however many streams are
open, a unary call is answered.
"""

from __future__ import annotations

from dataclasses import dataclass

# Stream kinds, as named in the RESOURCE_EXHAUSTED message.
FINGERPRINT = "Fingerprint"
STATS = "Stats"
STDIO = "StreamStdio"
BROKER = "GRPCBroker.StartStream"


@dataclass(frozen=True)
class Limits:
    # Nomad's client keeps one Fingerprint and one Stats stream open per
    # plugin (and briefly two while it reopens one): the bounds leave room
    # for that, for tools beside it, and for nothing like a runaway client.
    fingerprint_streams: int = 16
    stats_streams: int = 16
    # go-plugin's host opens one stdio and one broker stream per connection.
    stdio_streams: int = 4
    broker_streams: int = 4
    # Threads for SetConfig and Reserve (idle ones exit); no stream can take them.
    unary_workers: int = 8
    # Largest request grpcio accepts (its default is 4 MiB): room for a
    # Reserve of 100,000 GPU UUIDs; larger ones get RESOURCE_EXHAUSTED from grpcio.
    max_request_bytes: int = 16 << 20
    # RPCs beyond this many in flight (running or queued) are refused by
    # grpcio with RESOURCE_EXHAUSTED, so a flood cannot queue without bound.
    max_concurrent_rpcs: int = 256
    # StatsRequest.collection_interval is clamped to this range (seconds);
    # an unset (zero) interval means default_stats_interval.
    min_stats_interval: float = 0.1
    max_stats_interval: float = 3600.0
    default_stats_interval: float = 1.0
    # The AutoMTLS relay: connections at a time, and how long a client may
    # take to finish its TLS handshake before it is dropped.
    tls_connections: int = 16
    tls_handshake_timeout: float = 10.0
    # Longest error message sent in a gRPC status (and logged with it).
    error_chars: int = 1024
    # How long after a stop request (signal, Shutdown, parent death) the
    # process exits, finished or not.
    exit_deadline: float = 1.5
    # What server.stop gives running RPCs to finish (within exit_deadline).
    shutdown_grace: float = 1.0

    def stream_bound(self, kind: str) -> int:
        return {FINGERPRINT: self.fingerprint_streams, STATS: self.stats_streams,
                STDIO: self.stdio_streams, BROKER: self.broker_streams}[kind]


DEFAULT_LIMITS = Limits()


def bounded(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    longest_tail = f"... ({len(text)} more characters)"  # the count has at most this many digits
    keep = max(0, limit - len(longest_tail))
    return text[:keep] + f"... ({len(text) - keep} more characters)"
