"""The `nomad-device-nvidia` command.

Started by Nomad (NOMAD_PLUGIN_MAGIC_COOKIE set), it serves the plugin over
go-plugin. Run by a person, it explains itself or runs an operator command.
Plugin-mode flags come from the agent's `plugin "nomad-device-nvidia" { args = [...] }`.
"""

from __future__ import annotations

import os
import sys

# Nothing else at import: main() takes the plugin's signals first thing, and
# every module loaded before that widens the window where a SIGINT is still
# Python's KeyboardInterrupt (which an import's cleanup callback can swallow).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from nomad_device_nvidia.nvidia.plugin import NvidiaDevicePlugin

PROG = "nomad-device-nvidia"
LISTEN_VARIABLE = "NOMAD_DEVICE_NVIDIA_LISTEN"


def _listen_default() -> str:
    return os.environ.get(LISTEN_VARIABLE, "unix")


class Flags:
    """The plugin-mode flags, with their defaults."""

    def __init__(self, listen: str, nvml_library: str = "", simulate: str = "",
                 log_level: str | None = None) -> None:
        self.listen = listen
        self.nvml_library = nvml_library
        self.simulate = simulate
        self.log_level = log_level


def _flags(args_in: list[str]) -> Flags:
    # argparse (and gettext with it) loads only for a command line that has flags:
    # Nomad's usual launch has none, and it would be ~3 ms before the handshake line.
    if not args_in:
        return Flags(listen=_listen_default())
    ns = _parser().parse_args(args_in)
    return Flags(ns.listen, ns.nvml_library, ns.simulate, ns.log_level)


def _version() -> str:
    from nomad_device_nvidia import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog=PROG,
        description="HashiCorp Nomad device plugin for NVIDIA GPUs. Nomad starts it from its plugin_dir; "
                    "the flags below are for the agent's plugin block `args`.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    defaults = Flags(_listen_default())
    p.add_argument("--listen", choices=("unix", "tcp"), default=defaults.listen,
                   help="transport to serve Nomad on: a private unix socket (default) or tcp on 127.0.0.1 "
                        "within PLUGIN_MIN_PORT..PLUGIN_MAX_PORT")
    p.add_argument("--nvml-library", default=defaults.nvml_library, metavar="PATH",
                   help="load this libnvidia-ml.so.1 instead of the system's (the config key nvml_library wins)")
    p.add_argument("--simulate", default=defaults.simulate, metavar="SCENARIO",
                   help="use the simulated NVML driver with this scenario file (the config key simulate wins)")
    p.add_argument("--log-level", default=defaults.log_level, choices=("trace", "debug", "info", "warn", "error"),
                   help="log level (default: $NOMAD_PLUGIN_LOG_LEVEL, else $NOMAD_DEVICE_NVIDIA_LOG_LEVEL, else info)")
    return p


# Upgrade safety: `pip install -U` (or an apt upgrade of Python) replaces files under
# a running plugin, and a module imported after that would be the new version's, beside
# the old ones already loaded. So the serving process loads everything it can ever
# import before the plugin serves its first call: every module of this package but the
# ones below, and the standard and third-party modules our code imports only where a
# path first runs. The .so is mapped at the first import of the package, long before.
# Left out: the operator commands (other processes) and AutoMTLS, set up before the
# handshake line or never. tests/test_release.py checks this list against the code.
PRELOAD_SKIP = ("nomad_device_nvidia.probe", "nomad_device_nvidia.bench", "nomad_device_nvidia.sdk.tls")
PRELOAD_EXTRA = ("decimal", "json", "shutil", "google.protobuf.empty_pb2", "yaml")
# Imported when present (tomllib is 3.11+; nvml/library.py reads scenarios without it on 3.10).
PRELOAD_OPTIONAL = ("tomllib",)


def preload() -> list[str]:
    """Import every module the serving process can need; returns their names."""
    import importlib
    import pkgutil

    import nomad_device_nvidia

    names = [m.name for m in pkgutil.walk_packages(nomad_device_nvidia.__path__, "nomad_device_nvidia.")
             if m.name not in PRELOAD_SKIP]
    names += PRELOAD_EXTRA
    for name in names:
        importlib.import_module(name)
    for name in PRELOAD_OPTIONAL:
        try:
            importlib.import_module(name)
            names.append(name)
        except ImportError:
            pass
    return names


def main(argv: Sequence[str] | None = None) -> int:
    # Before any heavy import: the agent may die while we start, and the
    # parent-death watch must compare against the process that launched us.
    parent_pid = os.getppid()
    args_in = list(sys.argv[1:] if argv is None else argv)
    from nomad_device_nvidia.sdk import handshake

    stops = None
    if handshake.cookie_ok(os.environ) and args_in[:1] not in (["probe"], ["bench"]):
        # Before the heavy imports: a SIGTERM or SIGINT from here on ends the
        # process at once until the server runs, then stops it in order;
        # never a KeyboardInterrupt raised inside an import.
        from nomad_device_nvidia.sdk.stopping import StopRequests

        stops = StopRequests(exit_early=True)
        stops.install()
    if args_in[:1] == ["probe"]:
        from nomad_device_nvidia.probe import main as probe_main

        return int(probe_main(args_in[1:]))
    if args_in[:1] == ["bench"]:
        from nomad_device_nvidia.bench import main as bench_main

        return int(bench_main(args_in[1:]))
    args = _flags(args_in)
    if not handshake.cookie_ok(os.environ):
        sys.stderr.write(handshake.NOT_A_COMMAND)
        sys.stderr.write(f"(Run `{PROG} --help` for what it can do by hand.)\n")
        return 1

    from nomad_device_nvidia.sdk import logs, serve

    logs.configure(args.log_level)

    def make() -> NvidiaDevicePlugin:
        # Imported after the handshake line: Nomad connects while this loads. Every
        # plugin call waits for make(), so no plugin code runs before preload() is done.
        from nomad_device_nvidia.nvidia.plugin import NvidiaDevicePlugin

        preload()
        return NvidiaDevicePlugin(nvml_library=args.nvml_library, simulate=args.simulate)

    return int(serve(make, network=args.listen, parent_pid=parent_pid, stops=stops))


if __name__ == "__main__":
    sys.exit(main())
