"""The typed stats models, their encoder to Nomad's StatsResponse, and the one function the Stats service calls."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomad_device_nvidia._proto.nomad import device_pb2  # the wire side, decoded here as Nomad's client would
from nomad_device_nvidia.sdk import (
    DeviceGroupStats,
    DeviceStats,
    StatObject,
    StatsResponse,
    StatValue,
    stats_from_bytes,
)
from nomad_device_nvidia.sdk.convert import stats_bytes, stats_pb

GPU_STATS = StatsResponse((DeviceGroupStats("nvidia", "gpu", "H100", {
    "GPU-0": DeviceStats(
        summary=StatValue.fraction(1024, 81559, "MiB", "UsedMemory / TotalMemory"),
        stats=StatObject(attributes={"Power usage": StatValue.of(312.5, "W", "Power usage"),
                                     "ECC errors L1 cache": StatValue.of(0, "", "ECC errors"),
                                     "Name": StatValue.of("H100"), "Throttled": StatValue.of(False)},
                         nested={"nvlink": StatObject(attributes={"link 0": StatValue.of(7)})}),
        timestamp_ns=1_700_000_000_123_456_789),
}),))


def test_encoder_fills_every_field_of_nomads_messages() -> None:
    msg = device_pb2.StatsResponse.FromString(stats_bytes(GPU_STATS))
    (group,) = msg.groups
    assert (group.vendor, group.type, group.name) == ("nvidia", "gpu", "H100")
    dev = group.instance_stats["GPU-0"]
    assert dev.summary.int_numerator_val.value == 1024 and dev.summary.int_denominator_val.value == 81559
    assert not dev.summary.HasField("float_numerator_val") and not dev.summary.HasField("string_val")
    assert (dev.summary.unit, dev.summary.desc) == ("MiB", "UsedMemory / TotalMemory")
    power = dev.stats.attributes["Power usage"]
    assert power.float_numerator_val.value == 312.5 and not power.HasField("float_denominator_val")
    assert (power.unit, power.desc) == ("W", "Power usage")
    # A zero is a value: its wrapper is set (Nomad tells 0 from "not reported" by the wrapper).
    assert dev.stats.attributes["ECC errors L1 cache"].HasField("int_numerator_val")
    assert dev.stats.attributes["Name"].string_val.value == "H100"
    throttled = dev.stats.attributes["Throttled"]
    assert throttled.HasField("bool_val") and throttled.bool_val.value is False
    assert dev.stats.nested["nvlink"].attributes["link 0"].int_numerator_val.value == 7
    assert dev.timestamp.seconds == 1_700_000_000 and dev.timestamp.nanos == 123_456_789


def test_unset_parts_stay_unset_on_the_wire() -> None:
    msg = stats_pb(StatsResponse((DeviceGroupStats("v", "t", "n", {"a": DeviceStats(timestamp_ns=5)}),)))
    dev = msg.groups[0].instance_stats["a"]
    assert not dev.HasField("summary") and not dev.HasField("stats")
    empty = stats_pb(StatsResponse((DeviceGroupStats("v", "t", "n", {"a": DeviceStats(stats=StatObject())}),)))
    assert empty.groups[0].instance_stats["a"].HasField("stats")


def test_bytes_are_the_fast_path_and_pass_untouched() -> None:
    data = stats_bytes(GPU_STATS)
    assert stats_bytes(data) is data
    # Not parsed either: the plugin that yields bytes answers for them.
    assert stats_bytes(b"\xff not protobuf") == b"\xff not protobuf"
    assert stats_bytes(b"") == b""


def test_a_protobuf_message_is_still_taken() -> None:
    assert stats_bytes(stats_pb(GPU_STATS)) == stats_bytes(GPU_STATS)


@pytest.mark.parametrize("item", [None, "text", bytearray(b""), [GPU_STATS], GPU_STATS.groups[0]])
def test_anything_else_is_a_type_error_naming_it(item: object) -> None:
    with pytest.raises(TypeError, match=type(item).__name__):
        stats_bytes(item)  # type: ignore[arg-type]


def test_default_timestamp_is_when_the_stats_were_made() -> None:
    before = time.time_ns()
    made = DeviceStats()
    assert before <= made.timestamp_ns <= time.time_ns()


def test_stat_value_builders() -> None:
    assert StatValue.of(True) == StatValue(bool_val=True)  # a bool, not the int 1
    assert StatValue.of(3, "W") == StatValue(int_numerator_val=3, unit="W")
    assert StatValue.of(2.5) == StatValue(float_numerator_val=2.5)
    assert StatValue.of("ok", desc="state") == StatValue(string_val="ok", desc="state")
    assert StatValue.fraction(1, 2) == StatValue(int_numerator_val=1, int_denominator_val=2)
    assert StatValue.fraction(1, 2.0) == StatValue(float_numerator_val=1.0, float_denominator_val=2.0)
    with pytest.raises(TypeError, match="bool, int, float or str"):
        StatValue.of(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not bools"):
        StatValue.fraction(True, 2)


def test_decoder_refuses_what_is_not_a_stats_response() -> None:
    with pytest.raises(ValueError, match="not a serialized StatsResponse"):
        stats_from_bytes(b"\xff\xff\xff")


def test_decoder_reads_unset_timestamp_as_zero() -> None:
    msg = device_pb2.StatsResponse()
    msg.groups.add(vendor="v", type="t", name="n").instance_stats["a"].summary.unit = "x"
    (dev,) = stats_from_bytes(msg.SerializeToString()).groups[0].instance_stats.values()
    assert dev == DeviceStats(summary=StatValue(unit="x"), stats=None, timestamp_ns=0)


_names = st.text(max_size=8)
_values = st.builds(
    StatValue,
    float_numerator_val=st.none() | st.floats(allow_nan=False),
    float_denominator_val=st.none() | st.floats(allow_nan=False),
    int_numerator_val=st.none() | st.integers(-(2**63), 2**63 - 1),
    int_denominator_val=st.none() | st.integers(-(2**63), 2**63 - 1),
    string_val=st.none() | st.text(max_size=8),
    bool_val=st.none() | st.booleans(),
    unit=_names, desc=_names)
_objects = st.recursive(
    st.builds(StatObject, attributes=st.dictionaries(_names, _values, max_size=3)),
    lambda inner: st.builds(StatObject, attributes=st.dictionaries(_names, _values, max_size=3),
                            nested=st.dictionaries(_names, inner, max_size=2)),
    max_leaves=6)
_devices = st.builds(DeviceStats, summary=st.none() | _values, stats=st.none() | _objects,
                     timestamp_ns=st.integers(0, 2**62))
_responses = st.builds(StatsResponse, groups=st.lists(
    st.builds(DeviceGroupStats, vendor=_names, device_type=_names, name=_names,
              instance_stats=st.dictionaries(_names, _devices, max_size=3)), max_size=3).map(tuple))


@given(_responses)
def test_encode_then_decode_gives_the_models_back(resp: StatsResponse) -> None:
    assert stats_from_bytes(stats_bytes(resp)) == resp


def test_importing_the_sdk_and_its_models_loads_no_protobuf() -> None:
    # Nomad launches a plugin twice at agent start: the SDK's names must stay cheap until served.
    code = ("import sys, nomad_device_nvidia.sdk as sdk; sdk.StatsResponse; sdk.DevicePlugin; sdk.StatValue;"
            "print(sorted(m for m in sys.modules if m.startswith(('google.protobuf', 'grpc'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys, nomad_device_nvidia.sdk as sdk; sdk.stats_from_bytes; print('google.protobuf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"  # the check above can tell
