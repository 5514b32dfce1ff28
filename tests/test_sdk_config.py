"""Config decoding: cty msgpack values and Go durations, as SetConfig receives them."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomad_device_nvidia.sdk import hclspec
from nomad_device_nvidia.sdk.config import ConfigDecodeError, decode_config, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("1s", 1.0), ("1m", 60.0), ("1m30s", 90.0), ("1h2m3s", 3723.0), ("250ms", 0.25),
    ("1.5h", 5400.0), ("10us", 1e-5), ("10µs", 1e-5), ("7ns", 7e-9), ("-2s", -2.0), ("+3s", 3.0), (".5s", 0.5),
])
def test_parse_duration_accepts_go_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "5 m", "1d", "m", "1m30", "abc", "--1s", "1s2"])
def test_parse_duration_rejects_what_go_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_duration(60)  # type: ignore[arg-type]


@given(st.integers(0, 10_000), st.integers(0, 59), st.integers(0, 59))
def test_parse_duration_composes_units(h: int, m: int, s: int) -> None:
    assert parse_duration(f"{h}h{m}m{s}s") == pytest.approx(h * 3600 + m * 60 + s)


def test_decode_config_plain_object() -> None:
    payload = msgpack.packb({"enabled": True, "ignored_gpu_ids": ["GPU-1"], "fingerprint_period": "1m", "n": 3})
    assert decode_config(payload) == {"enabled": True, "ignored_gpu_ids": ["GPU-1"], "fingerprint_period": "1m", "n": 3}


def test_decode_config_empty_and_null_mean_no_keys() -> None:
    assert decode_config(b"") == {}
    assert decode_config(msgpack.packb(None)) == {}


def test_decode_config_rejects_unknown_cty_values() -> None:
    payload = msgpack.packb({"enabled": msgpack.ExtType(0, b"")})
    with pytest.raises(ConfigDecodeError, match="not known yet"):
        decode_config(payload)


def test_decode_config_rejects_non_objects_and_garbage() -> None:
    with pytest.raises(ConfigDecodeError, match="must be an object"):
        decode_config(msgpack.packb([1, 2]))
    with pytest.raises(ConfigDecodeError, match="not valid msgpack"):
        decode_config(b"\xc1")


def test_hclspec_defaults_are_hcl_literals() -> None:
    spec = hclspec.obj({
        "enabled": hclspec.attr("enabled", "bool", True),
        "ids": hclspec.attr("ids", "list(string)", []),
        "period": hclspec.attr("period", "string", "1m"),
        "plain": hclspec.attr("plain", "string"),
    })
    attrs = spec.object.attributes
    assert attrs["enabled"].default.default.literal.value == "true"
    assert attrs["ids"].default.default.literal.value == "[]"
    assert attrs["period"].default.default.literal.value == '"1m"'
    assert attrs["period"].default.primary.Attr.type == "string"
    assert attrs["plain"].WhichOneof("block") == "Attr"
