"""hclog-style JSON log lines on stderr, so the Nomad agent keeps their levels.

go-plugin's client reads each stderr line; a JSON object with @level,
@message, @timestamp is re-logged by the agent at that level, with the other
keys as key/value pairs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
TRACE = 5
_NAMES = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}

# The environment variables that set the level, the first set wins. The SDK's
# name is plugin-neutral, as any plugin built on it reads it; the Nomad agent
# passes its environment to the plugins it launches. The second is this
# project's name from before the SDK stood apart, kept as an alias.
LEVEL_VARIABLES = ("NOMAD_PLUGIN_LOG_LEVEL", "NOMAD_DEVICE_NVIDIA_LOG_LEVEL")

# Attributes every LogRecord has; anything else came from `extra=` and is a key/value pair.
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _timestamp(created: float) -> str:
    # hclog's layout: 2006-01-02T15:04:05.000000Z07:00
    secs = int(created)
    micros = int((created - secs) * 1_000_000)
    tm = time.localtime(secs)
    offset = tm.tm_gmtoff or 0
    sign = "+" if offset >= 0 else "-"
    zone = "Z" if offset == 0 else f"{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f".{micros:06d}{zone}"


class HclogJSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "@level": "trace" if record.levelno <= TRACE else _LEVELS.get(record.levelno, "info"),
            "@message": record.getMessage(),
            "@module": record.name,
            "@timestamp": _timestamp(record.created),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        import json  # at the first record, not before the handshake line

        return json.dumps(entry, ensure_ascii=False)


def configure(level: str | None = None, stream: IO[str] | None = None) -> None:
    """Send every log record of the process to stderr as hclog JSON.

    The level comes from `level`, else the first of `LEVEL_VARIABLES` set and
    not empty, else info.
    """
    name = (level or next((os.environ[v] for v in LEVEL_VARIABLES if os.environ.get(v)), "info")).lower()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(HclogJSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_NAMES.get(name, logging.INFO))
