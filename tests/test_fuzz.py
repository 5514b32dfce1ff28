"""Fuzzing the real plugin binary on a simulated node, over plain gRPC.

SetConfig gets arbitrary msgpack (wrong types, nesting, sizes, invalid UTF-8,
huge integers, NaN, extension types) and configs derived from the plugin's own
ConfigSchema, then mutated; Reserve gets duplicates, empty strings, huge and
non-UTF-8 strings; Stats gets any duration. Every input is answered with
success or INVALID_ARGUMENT naming the problem, the plugin keeps serving with
its last good config, and its threads, memory and fds do not grow over the run.

The run is derandomized (the same inputs every time, so `make test` is
reproducible); FUZZ_RANDOM=1 draws new ones and FUZZ_SCALE=N runs N times as many.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO_ROOT
from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2, hclspec_pb2
from nomad_device_nvidia.sdk.limits import DEFAULT_LIMITS
from plugin_proc import BASE, DEVICE, Plugin, next_within, plugin_env

SIM_LIB = REPO_ROOT / "build" / "sim" / "libnvidia-ml.so.1"
SCENARIO = REPO_ROOT / "scenarios" / "8xh100-mig.toml"
SCALE = int(os.environ.get("FUZZ_SCALE") or 1)
ERROR_CHARS = DEFAULT_LIMITS.error_chars


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, database=None,
                    derandomize=not os.environ.get("FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


@dataclass
class Run:
    """The plugin under test and what the run has done to it."""

    plugin: Plugin
    good: bytes  # the last good config, as the agent would send it
    ids: list[str]
    gpu: str
    schema: hclspec_pb2.Spec
    baseline: dict[str, int]
    fingerprints: list[bytes] = field(default_factory=list)
    fingerprint_error: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    began: float = field(default_factory=time.monotonic)

    def __repr__(self) -> str:  # hypothesis prints the fixture with every failing example
        return f"Run(plugin pid {self.plugin.pid})"


def _defaults(spec: hclspec_pb2.Spec) -> Any:
    """The value the agent sends for an empty config block: every default, absent blocks null."""
    kind = spec.WhichOneof("block")
    if kind == "object":
        return {name: _defaults(s) for name, s in spec.object.attributes.items()}
    if kind == "default":
        return json.loads(spec.default.default.literal.value)
    if kind == "block_value":
        return None
    return None


def _read_fingerprints(run: Run, call: Any) -> None:
    try:
        for resp in call:
            run.fingerprints.append(resp)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            run.fingerprint_error.append(f"{exc.code()}: {exc.details()}")


@pytest.fixture(scope="module")
def run(plugin_bin: Path) -> Iterator[Run]:
    for needed in (SIM_LIB, SCENARIO):
        if not needed.exists():
            pytest.fail(f"{needed} is missing (make sim)")
    # The simulated driver comes from the command line, so a config without
    # nvml_library/simulate (any fuzzed one) keeps using it. One malloc arena,
    # and large blocks always mmapped (returned to the system when freed): with
    # glibc's defaults (an arena per thread, up to 8 per core, and a mmap
    # threshold that rises to the largest block freed) RSS follows where each
    # of ~50 threads last held a large request, not what is alive.
    plugin = Plugin([plugin_bin, "--simulate", SCENARIO, "--nvml-library", SIM_LIB],
                    env=plugin_env(MALLOC_ARENA_MAX="1", MALLOC_MMAP_THRESHOLD_="131072"))
    schema = base_pb2.ConfigSchemaResponse.FromString(
        plugin.unary(BASE + "ConfigSchema", base_pb2.ConfigSchemaRequest().SerializeToString())).spec
    good = msgpack.packb(_defaults(schema))
    plugin.set_config(good)
    ids = plugin.first_ids()
    gpu = next(i for i in ids if "MIG" not in i)
    call = plugin.fingerprint()
    r = Run(plugin, good, ids, gpu, schema, {})
    reader = threading.Thread(target=_read_fingerprints, args=(r, call), daemon=True)
    reader.start()
    # Warm up with the largest inputs, so the baseline holds buffers of their size.
    for payload in (msgpack.packb({"ignored_gpu_ids": ["x" * 1000] * 3000}), msgpack.packb({"k" * (3 << 20): 1})):
        _set_config(r, payload)
    _reserve(r, [f"GPU-{i}" for i in range(100_000)])
    _reserve(r, [ids[0]] * 100_000)
    _stats(r, 0, 1)
    _stats(r, 1, 0)
    r.outcomes.clear()
    r.baseline = _settled(plugin)
    try:
        yield r
    finally:
        call.cancel()
        reader.join(10)
        assert plugin.stop() == 0


def _settled(plugin: Plugin, timeout: float = 10.0) -> dict[str, int]:
    """/proc figures once the thread count holds still (threads of cancelled streams end on their own time)."""
    deadline = time.monotonic() + timeout
    seen = [plugin.status()]
    while time.monotonic() < deadline and not (len(seen) >= 5 and len({s["Threads"] for s in seen[-5:]}) == 1):
        time.sleep(0.1)
        seen.append(plugin.status())
    return seen[-1]


def _code(exc: grpc.RpcError) -> str:
    return exc.code().name  # type: ignore[no-any-return]


def _serving_last_good(r: Run) -> None:
    """The last good config is in force: the GPU is offered, alone, unshared, and the plugin answers."""
    resp = device_pb2.ReserveResponse.FromString(
        r.plugin.unary(DEVICE + "Reserve", device_pb2.ReserveRequest(device_ids=[r.gpu]).SerializeToString()))
    assert resp.container_res.envs["NVIDIA_VISIBLE_DEVICES"] == r.gpu


def _set_config(r: Run, payload: bytes) -> str:
    """SetConfig with these msgpack bytes; success restores the good config. Returns the outcome."""
    request = base_pb2.SetConfigRequest(msgpack_config=payload).SerializeToString()
    try:
        r.plugin.unary(BASE + "SetConfig", request, timeout=30)
    except grpc.RpcError as exc:
        details = exc.details() or ""
        if len(request) > DEFAULT_LIMITS.max_request_bytes:  # grpcio's own bound, before the plugin
            assert _code(exc) == "RESOURCE_EXHAUSTED" and "larger than max" in details, details
            r.outcomes["SetConfig over the size bound"] += 1
            return "too big"
        assert _code(exc) == "INVALID_ARGUMENT", (_code(exc), details[:2000], payload[:200])
        assert details.startswith("config") and len(details) <= ERROR_CHARS, details[:2000]
        r.outcomes["SetConfig refused"] += 1
        return "refused"
    r.outcomes["SetConfig accepted"] += 1
    r.plugin.set_config(r.good)
    return "accepted"


def _reserve(r: Run, ids: list[str] | None = None, raw: bytes | None = None) -> str:
    request = raw if raw is not None else device_pb2.ReserveRequest(device_ids=ids).SerializeToString()
    try:
        resp = device_pb2.ReserveResponse.FromString(r.plugin.unary(DEVICE + "Reserve", request, timeout=30))
    except grpc.RpcError as exc:
        details = exc.details() or ""
        assert _code(exc) == "INVALID_ARGUMENT", (_code(exc), details[:2000])
        assert len(details) <= ERROR_CHARS, len(details)
        assert details.startswith(("unknown device IDs: ", "the request is not a valid protobuf message")), details
        r.outcomes["Reserve refused"] += 1
        return "refused"
    if ids is not None:
        asked = list(dict.fromkeys(ids))
        visible = resp.container_res.envs.get("NVIDIA_VISIBLE_DEVICES", "")
        assert visible.split(",") == asked if asked else not resp.container_res.envs
    r.outcomes["Reserve accepted"] += 1
    return "accepted"


def _stats(r: Run, seconds: int, nanos: int, raw: bytes | None = None) -> str:
    req = device_pb2.StatsRequest()
    req.collection_interval.seconds, req.collection_interval.nanos = seconds, nanos
    call = r.plugin.stream(DEVICE + "Stats", raw if raw is not None else req.SerializeToString())
    try:
        device_pb2.StatsResponse.FromString(next_within(call, 20.0))
    except grpc.RpcError as exc:
        assert _code(exc) == "INVALID_ARGUMENT", (_code(exc), exc.details())
        assert (exc.details() or "").startswith("the request is not a valid protobuf message")
        r.outcomes["Stats refused"] += 1
        return "refused"
    finally:
        call.cancel()
    r.outcomes["Stats answered"] += 1
    return "answered"


# --- SetConfig: arbitrary msgpack ---

# Big inputs print short: hypothesis shows every draw of a failing example.
class Big(str):
    def __repr__(self) -> str:
        return f"Big({self[:1]!r} * {len(self)})"


class BigList(list[Any]):
    def __repr__(self) -> str:
        return f"BigList({self[:1]!r} * {len(self)})"


class Blob(bytes):
    def __repr__(self) -> str:
        return f"Blob({bytes(self[:40])!r}... {len(self)} bytes)" if len(self) > 200 else f"Blob({bytes(self)!r})"


def _big_text() -> st.SearchStrategy[str]:
    return st.builds(lambda n, c: Big(c * n), st.sampled_from([10_000, 300_000, 1_000_000]),
                     st.sampled_from("x\u00e9\U0001f600"))


_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.binary(max_size=40), _big_text(),
    # cty's number strings (too big for int64/float64) and look-alikes.
    st.sampled_from(["1" * 400, "-1" * 200, "1e30", "1e1000000", "1.5", "NaN", "Infinity", "-0", "0x10", " 7 ", "", "1e-400"]),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999)),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6),
    st.dictionaries(st.one_of(st.text(max_size=20), st.integers(-5, 5)), inner, max_size=6)), max_leaves=30)


def _deep(key: str, depth: int, map_every: int) -> bytes:
    """{key: [[...{"k": [... nil]}...]]} nested `depth` deep, written directly (msgpack's packer stops at 512)."""
    levels = b"".join(b"\x81\xa1k" if map_every and i % map_every == 0 else b"\x91" for i in range(depth))
    return b"\x81" + msgpack.packb(key) + levels + b"\xc0"


_CONFIG_KEYS = ["enabled", "ignored_gpu_ids", "fingerprint_period", "nvml_library", "simulate", "stats_engine",
                "extended_stats", "group_by", "health", "reserve", "sharing"]


def _invalid_utf8(key: str) -> bytes:
    # A one-entry map whose string value is not UTF-8 (msgpack str8 header, then the bytes).
    bad = b"\xff\xfe\xc3("
    return b"\x81" + msgpack.packb(key) + b"\xd9" + bytes([len(bad)]) + bad


def _raw_ext(key: str, code: int, data: bytes) -> bytes:
    # {key: ext} as ext 8, for any type code (msgpack's ExtType takes 0..127 only; -1 is the timestamp).
    return b"\x81" + msgpack.packb(key) + b"\xc7" + bytes([len(data), code & 0xFF]) + data


_payloads = st.one_of(
    st.builds(msgpack.packb, st.dictionaries(st.one_of(st.sampled_from(_CONFIG_KEYS), st.text(max_size=10)),
                                             _values, max_size=6)),
    st.builds(msgpack.packb, _values),
    # Nesting around Python's recursion limit (a validation that recurses) and msgpack's (1024).
    st.builds(_deep, st.sampled_from(_CONFIG_KEYS), st.one_of(st.integers(1, 3000), st.integers(900, 1100)),
              st.integers(0, 3)),
    st.builds(_invalid_utf8, st.sampled_from(_CONFIG_KEYS)),
    st.builds(_raw_ext, st.sampled_from(_CONFIG_KEYS), st.integers(-128, 127), st.binary(max_size=20)),
    st.binary(max_size=200),
).map(Blob)


@fuzz_settings(300)
@given(payload=_payloads)
def test_set_config_arbitrary_msgpack(run: Run, payload: bytes) -> None:
    _set_config(run, payload)
    _serving_last_good(run)


# --- SetConfig: configs derived from the schema, then mutated ---

def _attr_values(name: str, type_: str) -> st.SearchStrategy[Any]:
    durations = st.one_of(
        st.sampled_from(["1s", "100ms", "1m", "5s", "3s", "1h30m", "2562047h47m16s", "2562047h47m17s", "0", "-1s",
                         "1ns", "99ms", "1.5s", ".5s", "1x", "s", "", " 1s", "1" * 400 + "h"]),
        st.from_regex(r"\A[0-9]{1,4}(\.[0-9]{1,3})?(ns|us|ms|s|m|h)\Z"))
    if type_ == "bool":
        return st.booleans()
    if type_ == "number":
        return st.one_of(st.integers(-5, 100), st.sampled_from([64, 65, 2**63 - 1]))
    if type_ == "list(number)":
        return st.lists(st.one_of(st.integers(-5, 2**33), st.floats(allow_nan=True)), max_size=8)
    if type_ == "list(string)":
        return st.lists(st.one_of(st.sampled_from(["numa_node", "parent_uuid", "GPU-x"]), st.text(max_size=12)),
                        max_size=6)
    if name in ("fingerprint_period", "probe_interval", "call_timeout"):
        return durations
    if name in ("nvml_library", "simulate"):
        # "" keeps the simulated driver of the command line; the others must be refused.
        return st.sampled_from(["", "", "", "relative/lib.so", "/no/such/file", "/"])
    if name == "stats_engine":
        return st.one_of(st.sampled_from(["native", "python"]), st.text(max_size=8))
    return st.one_of(st.sampled_from(["/dev", "/", "/tmp/x/"]), st.text(max_size=12))


def _config_strategy(spec: hclspec_pb2.Spec) -> st.SearchStrategy[Any]:
    kind = spec.WhichOneof("block")
    if kind == "object":
        return st.fixed_dictionaries({name: _config_strategy(s) for name, s in spec.object.attributes.items()})
    if kind == "default":
        return _attr_values(spec.default.primary.Attr.name, spec.default.primary.Attr.type)
    if kind == "block_value":
        return st.one_of(st.none(), _config_strategy(spec.block_value.nested))
    return st.none()


def _mutate(config: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    for _ in range(data.draw(st.integers(0, 3))):
        op = data.draw(st.sampled_from(["drop", "unknown", "retype", "huge", "block"]))
        keys = sorted(config, key=repr)
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if op == "drop":
            del config[key]
        elif op == "unknown":
            config[data.draw(st.text(min_size=1, max_size=20))] = data.draw(_scalars)
        elif op == "retype":
            config[key] = data.draw(_values)
        elif op == "huge":
            config[key] = data.draw(st.sampled_from([Big("x" * 2_000_000), BigList(["GPU-" + "y" * 100] * 10_000),
                                                     {Big("k" * 1000): 1}]))
        elif isinstance(config[key], dict):
            nested = config[key]
            if nested:
                inner = data.draw(st.sampled_from(sorted(nested, key=repr)))
                nested[inner] = data.draw(_values)
        else:
            config[key] = data.draw(st.sampled_from([{}, [], {"enabled": True}, [{}]]))
    return config


@fuzz_settings(300)
@given(data=st.data())
def test_set_config_derived_from_the_schema_then_mutated(run: Run, data: st.DataObject) -> None:
    config = data.draw(_config_strategy(run.schema))
    _set_config(run, Blob(msgpack.packb(_mutate(config, data))))
    _serving_last_good(run)


# --- Reserve ---

@fuzz_settings(200)
@given(data=st.data())
def test_reserve(run: Run, data: st.DataObject) -> None:
    one = st.one_of(st.sampled_from(run.ids), st.sampled_from(run.ids), st.just(""), st.text(max_size=30),
                    _big_text(), st.sampled_from([i + "\n" for i in run.ids] + [" " + run.ids[0]]))
    ids = data.draw(st.lists(one, max_size=30))
    if data.draw(st.booleans()):
        times = data.draw(st.sampled_from([2, 100, 3000]))  # duplicates, and many of them
        size = sum(len(i) for i in ids)
        ids = ids * max(1, min(times, (8 << 20) // max(1, size * 4)))  # within the 16 MiB request bound
    _reserve(run, ids)


def _reserve_request(items: list[bytes]) -> bytes:
    # device_ids is field 1, length-delimited; the bytes are written as they are, UTF-8 or not.
    out = b""
    for item in items:
        n, size = len(item), b""
        while True:
            size += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                break
        out += b"\x0a" + size + item
    return out


@fuzz_settings(150)
@given(items=st.lists(st.one_of(st.binary(max_size=20), st.sampled_from([b"\xff", b"\xc3(", b"GPU-\xed\xa0\x80"])),
                      max_size=5))
def test_reserve_non_utf8(run: Run, items: list[bytes]) -> None:
    outcome = _reserve(run, raw=_reserve_request(items))
    valid = all(_is_utf8(i) for i in items)
    if not valid:
        assert outcome == "refused"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_reserve_100000_ids(run: Run) -> None:
    assert _reserve(run, [run.gpu] * 100_000) == "accepted"
    assert _reserve(run, [*run.ids, *(f"GPU-{i}" for i in range(100_000))]) == "refused"


# --- Stats durations ---

@fuzz_settings(30)
@given(seconds=st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-2, 2)),
       nanos=st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 2)))
def test_stats_any_duration(run: Run, seconds: int, nanos: int) -> None:
    _stats(run, seconds, nanos)


@fuzz_settings(30)
@given(raw=st.binary(max_size=30))
def test_stats_any_request_bytes(run: Run, raw: bytes) -> None:
    _stats(run, 0, 0, raw=raw)


# --- and after all of it ---

def test_after_the_run_still_serving_and_nothing_grew(run: Run) -> None:
    _serving_last_good(run)
    assert run.plugin.info().name == "nvidia-gpu"
    assert run.fingerprint_error == [], run.fingerprint_error
    assert run.fingerprints, "the Fingerprint stream kept open through the run never answered"
    took = time.monotonic() - run.began
    after = _settled(run.plugin)
    print(f"\nfuzz: {sum(run.outcomes.values())} inputs {dict(run.outcomes)} in {took:.1f} s; plugin after the "
          f"warm-up {run.baseline}, after the run {after}")
    # Unary-call threads start as calls first overlap (at most Limits.unary_workers); a thread per input would be +1,000.
    assert after["Threads"] <= run.baseline["Threads"] + 4, (run.baseline, after)
    assert after["fds"] <= run.baseline["fds"] + 2, (run.baseline, after)
    # The warm-up held the largest requests already. What moves after it is
    # pymalloc's and grpcio's partly used pools (measured: 3 to 26 MiB, with no
    # trend over six repeats of the same inputs); a leak of 32 KiB per input fails.
    assert after["VmRSS"] <= run.baseline["VmRSS"] + 32 * 1024, (run.baseline, after)
    errors = [line for line in run.plugin.log if '"@level": "error"' in line]
    assert not errors, errors[:3]
