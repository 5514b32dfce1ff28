"""Conformance: the plugins driven by Nomad's own client code (the Go harness, Nomad's
plugin loader and device manager, Nomad's launcher), asserting on what that code sees.

Subjects:
- file-devices: examples/file_devices, the SDK's example plugin;
- nvidia-sim: our plugin on the simulated NVML (build/sim, scenarios/);
- go-example: Nomad's own example device plugin (Go), run through the same checks
  where they apply, to show the harness itself reads a known-good plugin right.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from conftest import REPO_ROOT, HarnessRun

RunHarness = Callable[..., HarnessRun]

FILE_IDS = ("dev0", "dev1", "dev2")
SCENARIO = REPO_ROOT / "scenarios" / "8xh100-mig.toml"
SIM_LIB = REPO_ROOT / "build" / "sim" / "libnvidia-ml.so.1"
HCL_LEVELS = {"trace", "debug", "info", "warn", "error"}


@dataclass(frozen=True)
class Subject:
    key: str
    plugin: Path
    name: str  # PluginInfo name
    vendor: str
    type: str
    settings: dict[str, Any]  # the config block's attributes for a working plugin
    ids: tuple[str, ...] | None  # exact device IDs, where the test knows them
    period_key: str
    dir: Path

    def config_file(self, **overrides: Any) -> Path:
        """A config file in the launcher's form (`config { ... }`), which the harness also reads."""
        values = {**self.settings, **overrides}
        body = "\n".join(f"  {k} = {json.dumps(v)}" for k, v in values.items())
        path = self.dir / f"config-{len(list(self.dir.glob('config-*.hcl')))}.hcl"
        path.write_text(f"config {{\n{body}\n}}\n")
        return path


def _subject(key: str, tmp_path: Path, plugin_bin: Path, go_example: Path) -> Subject:
    devices = tmp_path / "devices"
    devices.mkdir()
    for name in FILE_IDS:
        (devices / name).write_text(name)
    files = {"dir": str(devices), "list_period": "200ms"}
    if key == "file-devices":
        return Subject(key, REPO_ROOT / "examples" / "file_devices" / "run.sh", "file-devices", "nomad", "file",
                       files, FILE_IDS, "list_period", tmp_path)
    if key == "go-example":
        return Subject(key, go_example, "example-fs-device", "nomad", "file", files, FILE_IDS, "list_period",
                       tmp_path)
    for needed, how in ((SIM_LIB, "make sim"), (SCENARIO, "the scenarios/ files")):
        if not needed.exists():
            pytest.fail(f"{needed} is missing ({how})")
    return Subject(key, plugin_bin, "nvidia-gpu", "nvidia", "gpu",
                   {"simulate": str(SCENARIO), "nvml_library": str(SIM_LIB), "fingerprint_period": "1s"},
                   None, "fingerprint_period", tmp_path)


ALL = ["file-devices", "nvidia-sim", "go-example"]
OURS = ["file-devices", "nvidia-sim"]


@pytest.fixture
def subject(request: pytest.FixtureRequest, tmp_path: Path, plugin_bin: Path,
            nomad_example_device_bin: Path) -> Subject:
    return _subject(request.param, tmp_path, plugin_bin, nomad_example_device_bin)


def parametrize(keys: Sequence[str]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("subject", keys, indirect=True)


def all_ids(groups: list[dict[str, Any]]) -> list[str]:
    return [d["id"] for g in groups for d in g["devices"]]


def check_groups(s: Subject, groups: list[dict[str, Any]]) -> None:
    """What the device manager checks (Validate) plus what we know of the subject."""
    assert groups, "no device groups"
    for g in groups:
        assert g["validate_error"] is None, g
        assert (g["vendor"], g["type"]) == (s.vendor, s.type)
        for name, attr in g["attributes"].items():
            assert attr["validate_error"] is None, (name, attr)
            assert attr["type"] in {"int", "float", "string", "bool"}, (name, attr)
    ids = all_ids(groups)
    assert len(ids) == len(set(ids)), f"duplicate device IDs: {ids}"
    if s.ids is not None:
        assert sorted(ids) == sorted(s.ids)


def attributes_without_default(attrs: dict[str, Any], prefix: str = "") -> list[str]:
    """hclspec object attributes (blocks' nested ones too) that the agent would leave null when unset."""
    missing = []
    for name, spec in attrs.items():
        block = spec.get("blockValue") or spec.get("block")
        if "default" in spec:
            continue
        if "blockList" in spec or "block_list" in spec:
            continue  # repeated blocks: absent, the agent decodes an empty list, not null
        if block is not None and "object" in block.get("nested", {}):
            missing += attributes_without_default(block["nested"]["object"]["attributes"], f"{prefix}{name}.")
        else:
            missing.append(prefix + name)
    return missing


def check_exit(run: HarnessRun) -> None:
    """Shutdown through go-plugin's controller: a clean exit, logs Nomad can read."""
    down = run.one("shutdown")
    assert down["exited"] and down["graceful"] and down["exit_code"] == 0 and down["signal"] is None, down
    assert down["plugin_log_unparsed"] == [], "plugin stderr lines that are not hclog JSON"
    assert set(down["plugin_log_levels"]) <= HCL_LEVELS, down["plugin_log_levels"]


@parametrize(ALL)
def test_info_and_schema(run_harness: RunHarness, subject: Subject) -> None:
    run = run_harness("info", "--plugin", subject.plugin).ok()
    launch = run.one("launch")
    assert launch["protocol"] == "grpc" and launch["negotiated_version"] == 2 and launch["network"] == "unix"
    info = run.one("info")
    assert info["type"] == "device" and info["name"] == subject.name
    assert info["version_error"] is None and info["api_error"] is None
    assert info["api_version"] is not None, "no API version the agent supports"
    schema = run.one("schema")
    assert schema["convert_error"] is None
    assert schema["implied_type"][0] == "object"
    attrs = schema["spec"]["object"]["attributes"]
    assert attrs and not attributes_without_default(attrs)
    check_exit(run)


@parametrize(ALL)
def test_session_every_call(run_harness: RunHarness, subject: Subject) -> None:
    run = run_harness("session", "--plugin", subject.plugin, "--config", subject.config_file(),
                      "--stats", "2", "--interval", "200ms", "--reserve-first", "2",
                      "--reserve", "no-such-device").ok()
    assert run.one("config")["agent_error"] is None
    assert run.one("set_config")["error"] is None
    fps = [f for f in run.of("fingerprint") if not f["after_cancel"]]
    assert fps and fps[0]["error"] is None
    groups = fps[0]["groups"]
    check_groups(subject, groups)
    ids = all_ids(groups)

    stats = run.of("stats")
    assert len(stats) == 2 and all(s["error"] is None for s in stats)
    for s in stats:
        seen = [i for g in s["groups"] for i in g["ids"]]
        assert seen and set(seen) <= set(ids), "stats for devices the fingerprint did not report"
        for g in s["groups"]:
            for inst in g["instances"].values():
                assert inst["summary"] is not None and inst["timestamp_unix_nano"] > 0

    reserves = {tuple(r["ids"]): r for r in run.of("reserve")}
    good, bad = reserves[tuple(ids[:2])], reserves[("no-such-device",)]
    assert good["error"] is None and good["reservation"] is not None
    assert bad["reservation"] is None and "no-such-device" in bad["error"]
    assert "InvalidArgument" in bad["error"]
    closed = run.one("streams_closed")
    assert closed["fingerprint_closed"] and closed["stats_closed"]
    check_exit(run)


@parametrize(["file-devices", "go-example"])
def test_fingerprint_answers_at_once_then_only_on_change(harness_bin: Path, subject: Subject) -> None:
    # The harness waits for two fingerprints; the second may only come once a device appears.
    cmd = [str(harness_bin), "session", "--plugin", str(subject.plugin), "--config", str(subject.config_file()),
           "--fingerprints", "2"]
    events = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "fingerprint":
                break
        # Several list periods pass with nothing changed before the device appears.
        time.sleep(1.0)
        (subject.dir / "devices" / "dev9").write_text("new")
        events += [json.loads(line) for line in proc.stdout]
    assert proc.returncode == 0, events
    fps = [e for e in events if e["event"] == "fingerprint" and not e["after_cancel"]]
    assert [sorted(all_ids(f["groups"])) for f in fps] == [sorted(FILE_IDS), sorted((*FILE_IDS, "dev9"))]


@parametrize(OURS)
def test_disabled_plugin_answers_not_enabled(run_harness: RunHarness, subject: Subject) -> None:
    run = run_harness("configs", "--plugin", subject.plugin,
                      "--step", f"hcl:{subject.config_file(enabled=False)}", "--step", "probe").ok()
    assert run.one("set_config")["error"] is None
    probe = run.one("probe")
    assert probe["info_error"] is None
    assert probe["disabled"], probe
    check_exit(run)


@parametrize(OURS)
def test_bad_config_refused_by_the_agent(run_harness: RunHarness, subject: Subject) -> None:
    # What hcldec catches before the plugin sees anything: the agent's own message.
    wrong_type = subject.config_file(enabled="maybe")
    unknown = subject.config_file(no_such_key=1)
    run = run_harness("configs", "--plugin", subject.plugin, "--step", f"hcl:{wrong_type}",
                      "--step", f"hcl:{unknown}", "--step", "probe").ok()
    first, second = run.of("config")
    assert "enabled" in first["agent_error"] and "bool" in first["agent_error"]
    assert 'No argument or block type is named "no_such_key"' in second["agent_error"]
    assert run.of("set_config") == []
    assert run.one("probe")["info_error"] is None


def _msgpack_step(value: dict[str, Any]) -> str:
    return "msgpack:" + base64.b64encode(msgpack.packb(value)).decode()


@parametrize(OURS)
def test_bad_config_refused_by_the_plugin_keeps_previous(run_harness: RunHarness, subject: Subject) -> None:
    # The full value the agent would send, as a base for hand-made payloads hcldec would never let through.
    base = run_harness("configs", "--plugin", subject.plugin, "--step", f"hcl:{subject.config_file()}").ok()
    value = base.one("config")["value"]
    assert isinstance(value, dict) and value["enabled"] is True

    steps: list[tuple[str, str | None]] = [  # (step, key the plugin's error must name)
        (f"hcl:{subject.config_file(enabled=False)}", None),
        (f"hcl:{subject.config_file(**{subject.period_key: '1x'})}", subject.period_key),
        (f"hcl:{subject.config_file(**{subject.period_key: '-1s'})}", subject.period_key),
        (_msgpack_step({**value, "bogus_key": 1}), "bogus_key"),
        (_msgpack_step({**value, "enabled": "yes"}), "enabled"),
        (_msgpack_step({**value, subject.period_key: 5}), subject.period_key),
        (f"hcl:{subject.config_file()}", None),
    ]
    argv: list[str] = []
    for step, _ in steps:
        argv += ["--step", step, "--step", "probe"]
    run = run_harness("configs", "--plugin", subject.plugin, *argv).ok()

    answers = {e["step"]: e for e in run.of("set_config")}
    probes = run.of("probe")
    assert len(answers) == len(steps) and len(probes) == len(steps), run.describe()
    for i, (step, key) in enumerate(steps):
        answer, probe = answers[2 * i + 1], probes[i]
        assert probe["info_error"] is None, "the plugin stopped serving"
        if key is None:
            assert answer["error"] is None, (step, answer)
        else:
            assert answer["error"] and f'"{key}"' in answer["error"], (step, answer["error"])
        last = i == len(steps) - 1
        # Every refused config leaves the disabled one in force; the last good one enables it.
        assert probe["disabled"] is not last, (step, probe)
        if last:
            check_groups(subject, probe["groups"])
    check_exit(run)


# Not go-example: it answers a reopened Fingerprint stream only once its files change.
@parametrize(OURS)
def test_streams_cancel_and_reopen(run_harness: RunHarness, subject: Subject) -> None:
    run = run_harness("streams", "--plugin", subject.plugin, "--config", subject.config_file(),
                      "--cycles", "5", "--stats-per-cycle", "2", "--interval", "100ms").ok()
    cycles = run.of("cycle")
    assert [c["cycle"] for c in cycles] == [1, 2, 3, 4, 5]
    for c in cycles:
        assert c["fingerprint_error"] is None and c["stats_error"] is None, c
        assert c["fingerprint_closed"] and c["stats_closed"], c
        assert c["fingerprints"] >= 1 and c["stats"] >= 2 and not c["plugin_exited"], c
    probe = run.one("probe")
    assert probe["fingerprint_error"] is None
    check_groups(subject, probe["groups"])
    check_exit(run)


@parametrize(ALL)
def test_agent_start_with_nomads_loader_and_device_manager(run_harness: RunHarness, subject: Subject) -> None:
    run = run_harness("agent", "--plugin", subject.plugin, "--config", subject.config_file(),
                      "--stats-interval", "200ms", "--reserve-first", "2").ok()
    catalog = run.one("loader")["catalog"]
    assert [c["Name"] for c in catalog] == [subject.name]
    devices = run.of("node_devices")[0]["devices"]
    check_groups(subject, [{**d, "validate_error": None} for d in devices])
    stats = run.one("agent_stats")["groups"]
    assert stats and {i for g in stats for i in g["ids"]} <= set(all_ids(devices))
    reserve = run.one("reserve")
    assert reserve["error"] is None and reserve["reservation"] is not None
    # The loader launches the plugin for its info, kills it, launches it again to check the
    # config, kills it; the device manager launches it for good. Every exit is clean.
    launches = run.one("launches")
    assert len(launches["started"]) == 3 and len(set(launches["started"])) == 3, launches
    assert [e["error"] for e in launches["exited"]] == [None, None, None], launches
    assert launches["not_graceful"] == 0 and launches["plugin_log_unparsed"] == []


@parametrize(OURS)
def test_agent_reports_a_refused_config(run_harness: RunHarness, subject: Subject) -> None:
    bad = subject.config_file(**{subject.period_key: "soon"})
    run = run_harness("agent", "--plugin", subject.plugin, "--config", bad)
    assert run.returncode == 1
    err = run.one("loader")["error"]
    assert "failed to dispense plugin: setting config for plugin" in err, err
    assert f'"{subject.period_key}"' in err and "soon" in err, err
    launches = run.one("launches")
    assert all(e["error"] is None for e in launches["exited"]), launches


@parametrize(ALL)
def test_automtls(run_harness: RunHarness, subject: Subject) -> None:
    run = run_harness("session", "--plugin", subject.plugin, "--config", subject.config_file(), "--automtls",
                      "--stats", "1", "--interval", "200ms").ok()
    launch = run.one("launch")
    assert launch["automtls"] and launch["server_cert_loaded"], launch
    check_groups(subject, run.of("fingerprint")[0]["groups"])
    check_exit(run)


@parametrize(["nvidia-sim"])
def test_tcp_within_the_port_range(run_harness: RunHarness, subject: Subject) -> None:
    run = run_harness("session", "--plugin", subject.plugin, "--config", subject.config_file(),
                      "--env", "NOMAD_DEVICE_NVIDIA_LISTEN=tcp", "--min-port", "23100", "--max-port", "23199").ok()
    launch = run.one("launch")
    assert launch["network"] == "tcp", launch
    host, port = launch["address"].rsplit(":", 1)
    assert host == "127.0.0.1" and 23100 <= int(port) <= 23199
    check_groups(subject, run.of("fingerprint")[0]["groups"])
    check_exit(run)


@parametrize(OURS)
def test_handshake_latency_command(run_harness: RunHarness, subject: Subject) -> None:
    # The numbers are for benches/ and the README; here: it runs, and stdout carries one line.
    run = run_harness("handshake-latency", "--plugin", subject.plugin, "-n", "1").ok()
    out = run.one("handshake_latency")
    assert out["line_prefix"] == "1|2|unix" and out["line_fields"] >= 5
    assert out["stdout_after_handshake"] == []
    assert len(out["handshake"]["samples_ms"]) == 1 and len(out["first_rpc"]["samples_ms"]) == 1


class Repl:
    """Nomad's launcher REPL over pipes: send a command, wait for what it prints."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
        self.text = {"out": "", "err": ""}
        self.updates: queue.Queue[None] = queue.Queue()
        self.readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))]
        for reader in self.readers:
            reader.start()

    def _read(self, name: str, stream: Any) -> None:
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            self.text[name] += chunk.decode(errors="replace")
            self.updates.put(None)
        self.updates.put(None)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for reader in self.readers:
            reader.join()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, stream: str = "out", after: int = 0, limit: float = 60) -> re.Match[str]:
        """Wait for pattern in the stream (from offset `after`); the limit only guards against a hang."""
        deadline = time.monotonic() + limit
        while True:
            m = re.compile(pattern, re.S).search(self.text[stream], after)
            if m:
                return m
            if self.proc.poll() is not None and self.updates.empty():
                raise AssertionError(f"launcher exited {self.proc.returncode} before {pattern!r}:\n{self.text}")
            try:
                self.updates.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} from the launcher:\n{self.text}") from None


@parametrize(ALL)
def test_nomads_launcher_repl(launcher_bin: Path, subject: Subject) -> None:
    repl = Repl([str(launcher_bin), "device", str(subject.plugin), str(subject.config_file())])
    try:
        repl.expect(r"> Availabile commands are")  # sic
        repl.send("fingerprint()")
        fp = repl.expect(r"> fingerprint: &device\.FingerprintResponse\{(.*?)\n    Error: nil,\n\}")
        ids = re.findall(r'ID:\s+"([^"]+)"', fp.group(1))
        assert ids and len(ids) == len(set(ids))
        assert f'Vendor:  "{subject.vendor}"' in fp.group(1) and f'Type:    "{subject.type}"' in fp.group(1)
        if subject.ids is not None:
            assert sorted(ids) == sorted(subject.ids)
        repl.send("stats()")
        st = repl.expect(r"> stats: &device\.StatsResponse\{(.*?)\n    Error: nil,\n\}", after=fp.end())
        assert set(re.findall(r'"([^"]+)": &device\.DeviceStats\{', st.group(1))) <= set(ids)
        # The REPL reads stdin anew for each command: send the next one only once this one is answered.
        repl.send("stop_stats()")
        done = repl.expect(r"> stats: stats output closed", after=st.end())
        repl.send(f"reserve({ids[0]},{ids[1]})")
        repl.expect(rf"> reserve\({re.escape(ids[0])}, {re.escape(ids[1])}\): &device\.ContainerReservation\{{",
                    after=done.end())
        repl.send("reserve(no-such-device)")
        repl.expect(r"> reserve\(no-such-device\): rpc error: .*no-such-device", stream="err")
        repl.send("exit()")
        assert repl.proc.wait(timeout=60) == 0, repl.text
    finally:
        repl.close()


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@parametrize(OURS)
def test_plugin_exits_when_the_agent_is_killed(harness_bin: Path, subject: Subject) -> None:
    # The harness holds the plugin as the agent would; SIGKILL it, leaving the plugin orphaned.
    cmd = [str(harness_bin), "session", "--plugin", str(subject.plugin), "--config", str(subject.config_file()),
           "--fingerprint-wait", "10m"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        pid = next(json.loads(line) for line in proc.stdout if '"event":"launch"' in line)["pid"]
        for line in proc.stdout:
            if '"event":"fingerprint"' in line:
                break
        assert not _gone(pid)
        proc.kill()
    deadline = time.monotonic() + 30  # a hang guard, not a latency check
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(pid), f"plugin {pid} outlived the process that launched it"
