"""nvml_sys against NVIDIA's real nvml.h (PyPI's nvidia-nvml-dev, fetched by scripts/nvidia_files.py).

Read from the Rust source, so a struct, constant or function type added there is checked
without editing this file:
- every `#[repr(C)]` struct and union: its size, alignment, and each field's offset and
  size, printed by a Rust program built on nvml_sys and by a C program built on nvml.h;
- every integer constant: its value on both sides (our own constants with no C name
  are listed in OWN_CONSTANTS with the C expression they must equal);
- every function the stats poller resolves (stats_core/src/nvml.rs) and every `nvmlX_fn`
  type named after a header function: a C file that assigns the real function to a
  pointer of the type transcribed from the Rust declaration (enums and aliases reduced to
  the Rust primitive), compiled with -Werror, so an argument of the wrong type, a
  missing `const` or a wrong return type fails to compile.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nvidia_real import manifest

ROOT = Path(__file__).resolve().parent.parent
SYS_SRC = ROOT / "src_rust" / "nvml_sys" / "src"
POLLER = ROOT / "src_rust" / "stats_core" / "src" / "nvml.rs"

# Constants of ours that nvml.h has no name for, with the C expression each must equal.
OWN_CONSTANTS = {
    "NVML_GPM_METRICS_GET_HEADER": "offsetof(nvmlGpmMetricsGet_t, metrics)",
}

# Rust names for types the header leaves anonymous, with the C type each stands for.
ANONYMOUS = {
    "nvmlGpmMetricInfo_t": "__typeof__(((nvmlGpmMetric_t *)0)->metricInfo)",
}

RUST_TO_C = {
    "c_char": "char",
    "c_int": "int",
    "c_uint": "unsigned int",
    "c_ulong": "unsigned long",
    "c_ulonglong": "unsigned long long",
    "u8": "unsigned char",
    "u16": "unsigned short",
    "u32": "unsigned int",
    "u64": "unsigned long long",
    "i32": "int",
    "i64": "long long",
    "f64": "double",
    "usize": "size_t",
}


@dataclass
class RustAbi:
    structs: dict[str, list[str]] = field(default_factory=dict)  # name -> field names (C-visible ones)
    unions: set[str] = field(default_factory=set)
    constants: dict[str, str] = field(default_factory=dict)  # name -> Rust type
    aliases: dict[str, str] = field(default_factory=dict)  # type alias -> its Rust definition
    fn_types: dict[str, tuple[list[str], str]] = field(default_factory=dict)  # name -> (arg types, return)


def _source() -> str:
    # Only the crate's own items, not its unit tests (the test modules close each file).
    return "\n".join(p.read_text().split("#[cfg(test)]", 1)[0] for p in sorted(SYS_SRC.glob("*.rs")))


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def parse_rust() -> RustAbi:
    text = _strip_comments(_source())
    abi = RustAbi()
    for m in re.finditer(r"#\[repr\(C\)\]\s*(?:#\[[^\]]*\]\s*)*pub (struct|union) (\w+)\s*\{(.*?)\n\}", text, re.S):
        kind, name, body = m.groups()
        fields = re.findall(r"pub (\w+)\s*:", body)
        private = re.findall(r"^\s*(_\w+)\s*:", body, re.M)
        if not fields and private == ["_private"]:
            continue  # opaque handle target: an incomplete type in C
        abi.structs[name] = [f for f in fields if not f.startswith("_")]
        if kind == "union":
            abi.unions.add(name)
    for m in re.finditer(r"pub const (\w+)\s*:\s*([\w:]+)\s*=", text):
        name, ty = m.groups()
        if ty.startswith("&"):
            continue
        abi.constants[name] = ty
    for m in re.finditer(r"pub type (\w+)\s*=\s*([^;]+);", text, re.S):
        name, definition = m.group(1), " ".join(m.group(2).split())
        fm = re.fullmatch(r"unsafe extern \"C\" fn\((.*)\)\s*->\s*(.+)", definition)
        if fm:
            args = [a.strip() for a in fm.group(1).split(",") if a.strip()]
            abi.fn_types[name] = (args, fm.group(2).strip())
        else:
            abi.aliases[name] = definition
    return abi


def c_type(rust: str, abi: RustAbi) -> str:
    """A Rust type as C: aliases of primitives (nvmlReturn_t = c_uint) reduced to the primitive."""
    rust = rust.strip()
    for prefix, c_prefix in (("*mut ", ""), ("*const ", "const ")):
        if rust.startswith(prefix):
            inner = c_type(rust[len(prefix) :], abi)
            return f"{c_prefix}{inner} *"
    if rust in RUST_TO_C:
        return RUST_TO_C[rust]
    definition = abi.aliases.get(rust)
    if definition is not None and not definition.startswith("*"):
        return c_type(definition, abi)
    return rust  # a struct or handle type: the header's own typedef of the same name


def poller_functions(abi: RustAbi) -> dict[str, str]:
    """nvmlX -> the Rust fn type stats_core/src/nvml.rs reads it as."""
    text = _strip_comments(POLLER.read_text())
    field_types = dict(re.findall(r"^\s*(?:pub(?:\(crate\))?\s+)?(\w+)\s*:\s*(?:Option<)?(\w+_fn)>?,", text, re.M))
    resolved: dict[str, str] = {}
    for m in re.finditer(r"(?:let\s+\w+\s*:\s*(\w+_fn)\s*=\s*|(\w+)\s*:\s*)?(?:required|optional)\(&lib, b\"(nvml\w+)\\0\"\)", text):
        let_type, field_name, func = m.groups()
        ty = let_type or field_types.get(field_name or "")
        if ty is None:
            # A fallback chained onto the field before it (`.or_else(|| optional(...))`).
            before = text[: m.start()]
            prev = re.findall(r"(\w+)\s*:\s*(?:required|optional)\(", before)
            ty = field_types.get(prev[-1]) if prev else None
        assert ty is not None, f"stats_core/src/nvml.rs resolves {func} with no type this test can find"
        assert ty in abi.fn_types, f"{func} is read as {ty}, which nvml_sys does not declare"
        resolved[func] = ty
    assert resolved, "found no symbol resolution in stats_core/src/nvml.rs: has the loader moved?"
    return resolved


def header_functions(header: str) -> set[str]:
    text = Path(header).read_text()
    return set(re.findall(r"\bDECLDIR\b[^;(]*?\b(nvml\w+)\s*\(", text))


def _compile_c(tmp: Path, source: str, header: str, name: str, link: bool) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    argv = ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations", "-I", str(Path(header).parent)]
    argv += [str(src), "-o", str(out)] if link else ["-c", str(src), "-o", str(out) + ".o"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, f"gcc {name}.c against NVIDIA's nvml.h failed:\n{proc.stderr[-6000:]}"
    return out


# What both dumps print, one line each: "<probe> <value>". The expressions of the five
# probes, size, align, offset, fieldsize and const (t: the type or constant, f: the field),
# in C and in Rust.
C_PROBES = ("sizeof({t})", "_Alignof({t})", "offsetof({t}, {f})", "sizeof((({t} *)0)->{f})", "(long long)({t})")
RUST_PROBES = ("size_of::<{t}>()", "align_of::<{t}>()", "offset_of!({t}, {f})",
               "field_size(|s: &{t}| unsafe {{ &s.{f} }})", "{t} as i128")


def _probes(abi: RustAbi, exprs: tuple[str, ...], c_names: bool) -> list[tuple[str, str]]:
    """(line label, expression) for every line of a dump; `c_names`: name types and
    constants as nvml.h does."""
    size, align, offset, fieldsize, const = exprs
    out: list[tuple[str, str]] = []
    for name, fields in abi.structs.items():
        t = ANONYMOUS.get(name, name) if c_names else name
        out += [(f"size {name}", size.format(t=t)), (f"align {name}", align.format(t=t))]
        for f in fields:
            out += [(f"offset {name}.{f}", offset.format(t=t, f=f)),
                    (f"fieldsize {name}.{f}", fieldsize.format(t=t, f=f))]
    for name in abi.constants:
        out.append((f"const {name}", const.format(t=OWN_CONSTANTS.get(name, name) if c_names else name)))
    return out


def _rust_dump(tmp: Path, abi: RustAbi) -> str:
    lines = [
        "#![allow(unused_unsafe, non_snake_case)]",
        "use nvml_sys::*;",
        "use std::mem::{align_of, offset_of, size_of};",
        "fn field_size<T, F>(_: fn(&T) -> &F) -> usize { size_of::<F>() }",
        "fn main() {",
    ]
    for label, expr in _probes(abi, RUST_PROBES, c_names=False):
        lines.append(f'    println!("{label} {{}}", {expr});')
    lines.append("}")
    (tmp / "dump.rs").write_text("\n".join(lines) + "\n")
    rlib = tmp / "libnvml_sys.rlib"
    for argv in (
        ["rustc", "--edition", "2021", "--crate-type", "rlib", "--crate-name", "nvml_sys", str(SYS_SRC / "lib.rs"), "-o", str(rlib)],
        ["rustc", "--edition", "2021", "--extern", f"nvml_sys={rlib}", str(tmp / "dump.rs"), "-o", str(tmp / "dump_rs")],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(argv[:6])} failed:\n{proc.stderr[-6000:]}"
    return subprocess.run([str(tmp / "dump_rs")], capture_output=True, text=True, check=True).stdout


def _c_dump(tmp: Path, abi: RustAbi, header: str) -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <nvml.h>", "int main(void) {"]
    for label, expr in _probes(abi, C_PROBES, c_names=True):
        lines.append(f'    printf("{label} %{"lld" if label.startswith("const ") else "zu"}\\n", {expr});')
    lines += ["    return 0;", "}"]
    exe = _compile_c(tmp, "\n".join(lines) + "\n", header, "dump_c", link=True)
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def header() -> str:
    return str(manifest().header)


def test_the_parser_sees_the_crate() -> None:
    """A guard on the test itself: a parser that found nothing would pass everything."""
    abi = parse_rust()
    assert {"nvmlPciInfo_t", "nvmlFieldValue_t", "nvmlGpmMetricsGet_t", "nvmlValue_t"} <= abi.structs.keys()
    assert "nvmlValue_t" in abi.unions
    assert len(abi.structs) >= 29
    assert {"NVML_FI_MAX", "NVML_ERROR_GPU_IS_LOST", "NVML_GPM_METRIC_MAX", "nvmlEventTypeXidCriticalError"} <= abi.constants.keys()
    assert len(abi.constants) >= 500
    assert abi.fn_types["nvmlDeviceGetFieldValues_fn"] == (["nvmlDevice_t", "c_int", "*mut nvmlFieldValue_t"], "nvmlReturn_t")
    assert c_type("*mut nvmlTemperatureSensors_t", abi) == "unsigned int *"
    assert c_type("*const c_char", abi) == "const char *"
    assert poller_functions(abi)["nvmlDeviceGetCurrentClocksThrottleReasons"] == "nvmlDeviceGetUlonglong_fn"


def test_layouts_and_constants_match_the_header(tmp_path: Path, header: str) -> None:
    abi = parse_rust()
    rust = dict(line.rsplit(" ", 1) for line in _rust_dump(tmp_path, abi).splitlines())
    c = dict(line.rsplit(" ", 1) for line in _c_dump(tmp_path, abi, header).splitlines())
    assert rust.keys() == c.keys()
    differ = [f"{key}: nvml_sys {rust[key]}, nvml.h {c[key]}" for key in rust if rust[key] != c[key]]
    assert not differ, f"{len(differ)} differences from NVIDIA's nvml.h:\n" + "\n".join(differ)


def test_function_types_match_the_header(tmp_path: Path, header: str) -> None:
    abi = parse_rust()
    declared = header_functions(header)
    pairs = dict(poller_functions(abi))
    for ty in abi.fn_types:
        func = ty[: -len("_fn")]
        if func in declared:
            pairs.setdefault(func, ty)
    # Every fn type is checked through some function: a type no header function and no
    # loader call uses would go unchecked.
    unchecked = set(abi.fn_types) - set(pairs.values())
    assert not unchecked, f"nvml_sys fn types no header function or stats_core call checks: {sorted(unchecked)}"
    missing = sorted(func for func in pairs if func not in declared)
    assert not missing, f"resolved by name but not declared in nvml.h: {missing}"
    lines = ["#include <nvml.h>"]
    for func, ty in sorted(pairs.items()):
        args, ret = abi.fn_types[ty]
        c_args = ", ".join(c_type(a, abi) for a in args) or "void"
        lines.append(f"{c_type(ret, abi)} (*const check_{func})({c_args}) = {func};  /* {ty} */")
    _compile_c(tmp_path, "\n".join(lines) + "\n", header, "fn_types", link=False)
    assert len(pairs) >= 40
