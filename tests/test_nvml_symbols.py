"""docs/nvml-functions.toml against the code and NVIDIA's real libraries.

- The list is exactly what the code calls: every C name the Rust loader resolves
  (stats_core/src/nvml.rs) and every C name behind each pynvml function the Python
  package uses (read from pynvml's own source: the names its wrappers pass to
  `_nvmlGetFunctionPointer`, following the wrappers they call).
- Every required function is exported by every libnvidia-ml.so.1 scripts/nvidia_files.py
  fetched (read with nm, never loaded); the optional ones a branch lacks are the ones the
  list says it lacks.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pynvml
import pytest

from nvidia_real import manifest, script

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "docs" / "nvml-functions.toml"
PACKAGE = ROOT / "python" / "nomad_device_nvidia"
POLLER = ROOT / "src_rust" / "stats_core" / "src" / "nvml.rs"


def listed() -> tuple[dict[str, str], dict[str, str]]:
    data = tomllib.loads(LIST.read_text())
    assert set(data) == {"required", "optional"}, f"{LIST.name}: tables are [required] and [optional]"
    both = set(data["required"]) & set(data["optional"])
    assert not both, f"{LIST.name}: both required and optional: {sorted(both)}"
    for table in data.values():
        for name, why in table.items():
            assert isinstance(why, str) and why.strip(), f"{LIST.name}: {name} says nothing"
    return data["required"], data["optional"]


def rust_calls() -> set[str]:
    return set(re.findall(r'(?:required|optional)\(&lib, b"(nvml\w+)\\0"\)', POLLER.read_text()))


def _pynvml_wrappers() -> dict[str, tuple[set[str], set[str]]]:
    """pynvml function -> (C names it resolves itself, pynvml functions it calls)."""
    tree = ast.parse(Path(pynvml.__file__).read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    out: dict[str, tuple[set[str], set[str]]] = {}
    for name, fn in funcs.items():
        symbols: set[str] = set()
        calls: set[str] = set()
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id == "_nvmlGetFunctionPointer":
                symbols |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
            elif node.func.id in funcs:
                calls.add(node.func.id)
        out[name] = (symbols, calls)
    return out


def _closure(wrappers: dict[str, tuple[set[str], set[str]]], roots: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    symbols: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in wrappers:
            continue
        seen.add(name)
        own, calls = wrappers[name]
        symbols |= own
        todo += calls
    return symbols


def python_calls() -> set[str]:
    wrappers = _pynvml_wrappers()
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    used = set(re.findall(r"\b(nvml[A-Z]\w*)\b", source)) & wrappers.keys()
    # Direct lookups (`pynvml._nvmlGetFunctionPointer("nvmlX")`) and the error text every
    # NVMLError formats with.
    direct = set(re.findall(r"_nvmlGetFunctionPointer\(\s*\"(nvml\w+)\"", source))
    return _closure(wrappers, used | {"nvmlErrorString"}) | direct


def test_the_list_is_what_the_code_calls() -> None:
    required, optional = listed()
    rust, python = rust_calls(), python_calls()
    # Guards on the readers themselves: a reader that found nothing would pass.
    assert {"nvmlInit_v2", "nvmlDeviceGetHandleByUUID", "nvmlGpmMetricsGet"} <= rust
    assert {"nvmlInitWithFlags", "nvmlDeviceGetNumaNodeId", "nvmlDeviceGetCount_v2"} <= python
    called = rust | python
    names = set(required) | set(optional)
    assert not called - names, f"called but not in {LIST.name}: {sorted(called - names)}"
    assert not names - called, f"in {LIST.name} but no code calls it: {sorted(names - called)}"


def test_rust_required_symbols_are_listed_required() -> None:
    """What the Rust loader refuses to start without is required in the list too."""
    required, _ = listed()
    hard = set(re.findall(r'required\(&lib, b"(nvml\w+)\\0"\)', POLLER.read_text()))
    assert hard and hard <= set(required), sorted(hard - set(required))


@pytest.fixture(scope="module")
def exports() -> dict[int, set[str]]:
    return {lib.branch: set(script().exported_nvml_symbols(lib.path)) for lib in manifest().libraries}


def test_every_real_library_exports_every_required_function(exports: dict[int, set[str]]) -> None:
    required, _ = listed()
    assert 535 in exports, f"branch 535 (the oldest supported) was not fetched: {sorted(exports)}"
    missing = {branch: sorted(set(required) - have) for branch, have in exports.items() if set(required) - have}
    assert not missing, f"required NVML functions a real driver lacks: {missing}"


def test_optional_functions_a_branch_lacks_are_said(exports: dict[int, set[str]]) -> None:
    """An optional function some real branch lacks says so (by branch) in its entry."""
    _, optional = listed()
    unsaid = []
    for name, why in optional.items():
        for branch, have in sorted(exports.items()):
            if name not in have and str(branch) not in why:
                unsaid.append(f"{name}: absent from {branch}, which its entry does not say")
    assert not unsaid, "\n".join(unsaid)


def test_the_committed_symbol_lists_are_the_real_libraries() -> None:
    """src_rust/nvml_sim/branches/<branch>.txt is what `nvidia_files.py symbols` writes today."""
    nf = script()
    committed_branches = sorted(int(p.stem) for p in nf.BRANCHES_DIR.glob("*.txt"))
    fetched = sorted(lib.branch for lib in manifest().libraries)
    assert committed_branches == fetched, "run python scripts/nvidia_files.py symbols (and remove stale lists)"
    for lib in manifest().libraries:
        committed = nf.BRANCHES_DIR / f"{lib.branch}.txt"
        assert committed.is_file(), f"{committed} missing: run python scripts/nvidia_files.py symbols"
        assert committed.read_text() == nf.symbol_list_text(lib), f"{committed.name} differs from {lib.path}"
