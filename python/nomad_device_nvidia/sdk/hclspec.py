"""Builders for the HCL schema a plugin returns from ConfigSchema.

`Spec` is the type `DevicePlugin.config_spec` returns (Nomad's hclspec Spec
message); build it with `obj`, `attr` and `block` rather than by hand.
Every attribute built with a default becomes `Default { Attr, Literal }`, so the
agent fills in the default and the plugin always receives every key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nomad_device_nvidia._proto.nomad import hclspec_pb2

# The public name of the message, so a plugin never imports the generated modules.
Spec = hclspec_pb2.Spec


def hcl_literal(value: Any) -> str:
    """An HCL expression for a Python value (JSON is valid HCL expression syntax)."""
    if value is None:
        return "null"
    return json.dumps(value)


def attr(name: str, type_: str, default: Any = None, *, required: bool = False) -> Spec:
    """An attribute of HCL type `type_` ("string", "bool", "number", "list(string)", ...)."""
    spec = Spec(Attr=hclspec_pb2.Attr(name=name, type=type_, required=required))
    if default is None:
        return spec
    return Spec(default=hclspec_pb2.Default(primary=spec, default=Spec(literal=hclspec_pb2.Literal(value=hcl_literal(default)))))


def block(name: str, nested: Spec, *, required: bool = False) -> Spec:
    """Zero or one nested block; absent, it decodes to null."""
    return Spec(block_value=hclspec_pb2.Block(name=name, required=required, nested=nested))


def block_list(name: str, nested: Spec, *, min_items: int = 0, max_items: int = 0) -> Spec:
    """Any number of nested blocks of one kind (max_items 0: no limit); absent, an empty list."""
    return Spec(block_list=hclspec_pb2.BlockList(name=name, min_items=min_items, max_items=max_items, nested=nested))


def obj(attributes: Mapping[str, Spec]) -> Spec:
    """An object whose properties are the given specs, by name."""
    return Spec(object=hclspec_pb2.Object(attributes=dict(attributes)))
