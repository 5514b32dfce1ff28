"""The go-plugin launch contract at the process level: cookie, handshake line,
stdout discipline, socket directory, signals and parent death.

The protocol itself is exercised by Nomad's own client code in
test_conformance.py; here the "host" is only what launches the process.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nomad_device_nvidia.sdk.handshake import MAGIC_COOKIE_KEY
from plugin_proc import plugin_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = [sys.executable, str(ROOT / "examples" / "file_devices" / "plugin.py")]


def start(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(EXAMPLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"no handshake line; stderr: {proc.communicate()[1]}")
    return proc, line


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def test_without_cookie_explains_and_exits_1() -> None:
    env = {k: v for k, v in os.environ.items() if k != MAGIC_COOKIE_KEY}
    proc = subprocess.run(EXAMPLE, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "This binary is a plugin" in proc.stderr


def test_cli_without_cookie_points_to_help() -> None:
    env = {k: v for k, v in os.environ.items() if k != MAGIC_COOKIE_KEY}
    exe = Path(sys.executable).parent / "nomad-device-nvidia"
    proc = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "This binary is a plugin" in proc.stderr and "--help" in proc.stderr


def test_unsupported_protocol_version_is_refused_clearly() -> None:
    proc = subprocess.run(EXAMPLE, env=plugin_env(PLUGIN_PROTOCOL_VERSIONS="1"), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "speaks plugin protocol versions [1]" in proc.stderr


# Runs the real CLI with stdout wrapped: when the handshake line is written, the
# modules loaded so far go to stderr. Nothing is imported here that the CLI would not.
_TAP = """
import sys
class Tap:
    def __init__(self, inner):
        self.inner = inner
    def write(self, text):
        if text.startswith("1|") or text.startswith("2|"):
            loaded = [name for name, module in sys.modules.items() if module is not None]  # None: kept out
            sys.stderr.write("LOADED " + " ".join(sorted(loaded)) + "\\n")
            sys.stderr.flush()
        return self.inner.write(text)
    def __getattr__(self, name):
        return getattr(self.inner, name)
sys.stdout = Tap(sys.stdout)
from nomad_device_nvidia.cli import main
sys.exit(main(sys.argv[1:]))
"""


def loaded_at_handshake_line(env: dict[str, str], *args: str) -> set[str]:
    proc = subprocess.Popen([sys.executable, "-c", _TAP, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("1|2|unix|"), line
        for said in proc.stderr:
            if said.startswith("LOADED "):
                return set(said.split()[1:])
        pytest.fail("the tap never saw the handshake line")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # closes both pipes


def test_the_handshake_line_comes_before_what_serving_does_not_need() -> None:
    # Everything loaded before the line delays it (Nomad waits for it at every agent start).
    loaded = loaded_at_handshake_line(plugin_env())
    assert {"grpc", "asyncio", "nomad_device_nvidia.sdk.server"} <= loaded  # the tap saw the real start
    late = {
        "ssl": "asyncio's TLS, which only AutoMTLS needs",
        "argparse": "a launch without flags needs no parser",
        "json": "the log format needs it at the first record",
        "shutil": "the socket directory is removed at exit",
        "tempfile": "the socket directory is made without it",
        "nomad_device_nvidia.sdk.model": "the models load with the services",
        "google.protobuf": "the services load after the line",
        "pynvml": "the NVIDIA plugin is made after the line",
        "nomad_device_nvidia.nvidia": "the NVIDIA plugin is made after the line",
    }
    assert {name: why for name, why in late.items() if name in loaded} == {}


def test_the_nvidia_plugin_loads_no_stdlib_it_can_do_without() -> None:
    # Loaded after the line, but resident for the plugin's life: pathlib brings urllib.parse
    # and ipaddress, uuid brings platform.
    code = ("import sys, nomad_device_nvidia.nvidia.plugin, nomad_device_nvidia.nvidia.nvml.library,"
            " nomad_device_nvidia.nvidia.stats.native, nomad_device_nvidia.sdk.services;"
            "print(sorted(m for m in ('pathlib', 'uuid', 'platform', 'ipaddress', 'urllib.parse', 'decimal', 'ssl')"
            " if sys.modules.get(m) is not None))")
    out = subprocess.run([sys.executable, "-c", "import sys; sys.modules['ssl'] = None\n" + code],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_flags_still_get_the_parser() -> None:
    # (With AutoMTLS asked for, ssl stays importable: test_conformance's test_automtls serves TLS.)
    loaded = loaded_at_handshake_line(plugin_env(), "--log-level", "debug", "--listen", "unix")
    assert "argparse" in loaded


def test_one_handshake_line_private_socket_and_graceful_sigterm(tmp_path: Path) -> None:
    proc, line = start(plugin_env(PLUGIN_UNIX_SOCKET_DIR=str(tmp_path)))
    parts = line.rstrip("\n").split("|")
    assert parts[:3] == ["1", "2", "unix"] and parts[4] == "grpc" and parts[5] == ""
    sock = Path(parts[3])
    assert sock.parent.parent == tmp_path
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out == "", "nothing may follow the handshake line on stdout"
    assert not sock.parent.exists(), "the socket directory is removed on exit"
    assert '"@message": "plugin shutting down"' in err


def test_sigint_is_graceful_too() -> None:
    proc, _ = start(plugin_env())
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_multiplex_field_only_when_the_host_asks() -> None:
    proc, line = start(plugin_env(PLUGIN_MULTIPLEX_GRPC="true"))
    proc.terminate()
    proc.communicate(timeout=10)
    assert line.rstrip("\n").split("|")[6] == "false"


def test_exits_when_its_parent_is_killed() -> None:
    # A shell stands in for the Nomad agent: it starts the plugin and is then SIGKILLed.
    cmd = " ".join(f"'{a}'" for a in EXAMPLE)
    parent = subprocess.Popen(["sh", "-c", f"{cmd} & echo $!; wait"], env=plugin_env(),
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    # The shell's pid line and the plugin's handshake line share the pipe; the
    # handshake comes once the plugin serves (its parent watch is running then).
    lines = [parent.stdout.readline(), parent.stdout.readline()]
    pid = int(next(line for line in lines if "|" not in line))
    assert any(line.startswith("1|2|unix|") for line in lines), lines
    assert alive(pid)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    killed_at = time.monotonic()
    while alive(pid) and time.monotonic() - killed_at < 10:
        time.sleep(0.05)
    assert not alive(pid), "the plugin outlived its parent"
    # The budget is a second: the watch polls every 0.2 s. Reported, not asserted (timing).
    print(f"plugin exited {time.monotonic() - killed_at:.2f} s after its parent was killed")
