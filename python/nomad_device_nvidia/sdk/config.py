"""Decoding what SetConfig carries: cty msgpack values and Go durations."""

from __future__ import annotations

import re
import threading
from typing import Any

import msgpack

# cty's msgpack encoding marks values that are not known yet with extension
# type 0; a plugin config must be fully known, so that is an error.
_CTY_UNKNOWN_EXT = 0
# Objects, lists and maps within each other; an HCL plugin config is a few levels deep.
MAX_DEPTH = 64


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
    except UnicodeDecodeError as exc:
        raise ConfigDecodeError(f"config holds a string that is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except msgpack.StackError:
        raise ConfigDecodeError(f"config is nested too deeply (more than {MAX_DEPTH} levels)") from None
    except msgpack.ExtraData:
        raise ConfigDecodeError("config is not valid msgpack: extra bytes after the config object") from None
    except Exception as exc:  # msgpack raises several unrelated types
        raise ConfigDecodeError(f"config is not valid msgpack: {exc or type(exc).__name__}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigDecodeError(f"config must be an object, got {type(value).__name__}")
    _check_values(value)
    return value


def _check_values(value: Any) -> None:
    """Refuse what no cty config holds: timestamps (msgpack ext -1, decoded without the ext_hook)
    and nesting deeper than MAX_DEPTH (a plugin's validation may recurse into it)."""
    stack = [(value, 1)]
    while stack:  # not recursive, so any depth msgpack allows is checked safely
        item, depth = stack.pop()
        if isinstance(item, msgpack.Timestamp):
            raise ConfigDecodeError("config holds an unexpected msgpack extension type -1 (timestamp)")
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise ConfigDecodeError(f"config is nested too deeply (more than {MAX_DEPTH} levels)")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


# Go's time.Duration is int64 nanoseconds (ParseDuration refuses anything
# longer); a whole second less, so any duration is also a valid wait timeout
# in Python (threading.TIMEOUT_MAX).
MAX_DURATION_SECONDS = min((2**63 - 1) // 10**9, threading.TIMEOUT_MAX)
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
    if total > MAX_DURATION_SECONDS:  # also inf, from a number too long for a float
        raise ValueError(f'invalid duration "{text}": out of range (at most 2562047h47m16s)')
    return sign * total
