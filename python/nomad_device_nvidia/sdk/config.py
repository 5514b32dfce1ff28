"""Decoding what SetConfig carries: cty msgpack values and Go durations."""

from __future__ import annotations

import re
from typing import Any

import msgpack

# cty's msgpack encoding marks values that are not known yet with extension
# type 0; a plugin config must be fully known, so that is an error.
_CTY_UNKNOWN_EXT = 0


class ConfigDecodeError(ValueError):
    """The msgpack payload itself could not be decoded."""


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _CTY_UNKNOWN_EXT:
        raise ConfigDecodeError("config holds a value that is not known yet (cty unknown)")
    raise ConfigDecodeError(f"config holds an unexpected msgpack extension type {code}")


def decode_config(payload: bytes) -> dict[str, Any]:
    """Decode the agent's cty-msgpack config object into plain Python values.

    cty writes numbers that do not fit int64/float64 exactly as strings, and
    null as nil; both come through as such for the plugin's validation.
    """
    if not payload:
        return {}
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=False, ext_hook=_ext_hook)
    except ConfigDecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise ConfigDecodeError(f"config is not valid msgpack: {exc}") from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigDecodeError(f"config must be an object, got {type(value).__name__}")
    return value


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration ("1m30s", "250ms", "-1.5h") into seconds, as time.ParseDuration does."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string like \"1m30s\", got {type(text).__name__}")
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'invalid duration "{text}"')
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f'invalid duration "{text}": expected a number and a unit (ns, us, ms, s, m, h)')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total
