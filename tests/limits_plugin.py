"""The SDK's example plugin (examples/file_devices) served with the limits given on the command line.

    limits_plugin.py KEY=VALUE ...   e.g. tls_connections=3 tls_handshake_timeout=0.5

For tests of bounds whose defaults would take long to reach (a 10 s TLS handshake timeout).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "file_devices"))

from plugin import FileDevices  # noqa: E402

from nomad_device_nvidia.sdk import Limits, logs, serve  # noqa: E402


def main(argv: list[str]) -> int:
    types = {f.name: f.type for f in dataclasses.fields(Limits)}
    values: dict[str, object] = {}
    for arg in argv:
        key, _, text = arg.partition("=")
        values[key] = float(text) if types[key] in ("float", float) else int(text)
    logs.configure()
    return serve(FileDevices(), limits=Limits(**values))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
