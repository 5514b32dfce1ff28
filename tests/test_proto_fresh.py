"""The checked-in generated protobuf modules match proto/ (regenerate: python scripts/gen_proto.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "python" / "nomad_device_nvidia" / "_proto"


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    gen = _load_generator()
    gen.generate(tmp_path)  # type: ignore[attr-defined]
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    current = {p.relative_to(CHECKED_IN): p.read_text() for p in CHECKED_IN.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(fresh) == sorted(current), "generated files differ in name: run scripts/gen_proto.py"
    stale = [str(name) for name, text in fresh.items() if current[name] != text]
    assert not stale, f"stale generated modules (run scripts/gen_proto.py): {stale}"


def test_wire_names_match_nomad_and_go_plugin() -> None:
    from nomad_device_nvidia._proto.goplugin import grpc_broker_pb2, grpc_controller_pb2, grpc_stdio_pb2
    from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2, hclspec_pb2, structs_pb2

    assert base_pb2.DESCRIPTOR.services_by_name["BasePlugin"].full_name == "hashicorp.nomad.plugins.base.proto.BasePlugin"
    assert device_pb2.DESCRIPTOR.services_by_name["DevicePlugin"].full_name == "hashicorp.nomad.plugins.device.DevicePlugin"
    assert grpc_controller_pb2.DESCRIPTOR.services_by_name["GRPCController"].full_name == "plugin.GRPCController"
    assert grpc_stdio_pb2.DESCRIPTOR.services_by_name["GRPCStdio"].full_name == "plugin.GRPCStdio"
    assert grpc_broker_pb2.DESCRIPTOR.services_by_name["GRPCBroker"].full_name == "plugin.GRPCBroker"
    # A few field numbers the Go side depends on.
    assert structs_pb2.StatValue.DESCRIPTOR.fields_by_name["string_val"].number == 5
    assert device_pb2.DeviceStats.DESCRIPTOR.fields_by_name["timestamp"].number == 3
    assert hclspec_pb2.Spec.DESCRIPTOR.fields_by_name["default"].number == 9
