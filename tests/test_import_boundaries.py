"""The package's layers, read from every module's imports (ast, nothing imported).

The arrows point one way, down:

    cli (cli, probe, bench)  ->  nvidia (the NVIDIA plugin)  ->  sdk (transport, Nomad's services, models)
                                       \\->  native (_native, the package root: the Rust extension)

- `sdk` is a Nomad device plugin SDK a stranger could lift out: it imports only
  itself and the generated protobuf modules (`_proto`), never NVIDIA code, the
  extension or the CLI.
- `_proto` is the SDK's private part: outside `sdk` only the stats encoders
  (`STATS_ENCODERS`, which build StatsResponse messages themselves for speed)
  import it. Code that reads what a plugin sends as its client (tests/, benches/,
  scripts/) may decode the wire with it and is not checked here.
- examples/ are plugins written by someone else: they import only the names
  `nomad_device_nvidia.sdk` exports (its `__all__`).

Inside `nvidia`, the parts have their own order (`nvidia_part`): `nvml/` (the
library, session and executor) knows nothing of devices; `fingerprint` reads
devices over it; `health/` judges them; the device watch runs the lifecycle,
scans, probes and events; `stats/` reads and encodes. Each imports only the parts
before it; the device watch and grouping take only the stats contract.

Every import counts, also those inside functions and under TYPE_CHECKING: a
type a module names is a dependency too.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "nomad_device_nvidia"

# What each layer may import from the package; every other edge is a violation.
MAY_IMPORT = {
    "sdk": {"sdk", "proto"},
    "native": {"native"},
    "nvidia": {"nvidia", "sdk", "native"},
    "cli": {"cli", "nvidia", "sdk", "native"},
}
# Modules outside sdk/ that encode Nomad's stats messages themselves and so may import _proto.
STATS_ENCODERS = {f"{PKG}.nvidia.stats.python"}
CLI_MODULES = {f"{PKG}.cli", f"{PKG}.probe", f"{PKG}.bench"}


def layer(module: str) -> str | None:
    """The layer of a module of the package; None when it has none (a new top-level module)."""
    parts = module.split(".")
    if parts[0] != PKG:
        return "outside"
    if len(parts) == 1 or parts[1] == "_native":
        return "native"
    if parts[1] in ("sdk", "nvidia"):
        return parts[1]
    if parts[1] == "_proto":
        return "proto"
    if ".".join(parts[:2]) in CLI_MODULES:
        return "cli"
    return None


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # the module imported, absolute
    names: tuple[str, ...] = ()  # the names taken from it by `from target import a, b`


def module_name(path: Path, python_root: Path) -> str:
    rel = path.relative_to(python_root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str, python_root: Path) -> bool:
    base = python_root.joinpath(*name.split("."))
    return any(p.is_file() for p in (base.with_suffix(".py"), base.with_suffix(".pyi"), base / "__init__.py"))


# nvidia's parts, and which parts each may import (its own included).
NVIDIA_MAY_IMPORT = {
    "config": {"config"},
    "nvml": {"nvml", "config"},
    "fingerprint": {"fingerprint", "nvml", "config"},
    "health": {"health", "fingerprint", "nvml", "config"},
    "watch": {"watch", "health", "fingerprint", "nvml", "config", "stats.contract"},
    "stats": {"stats", "stats.contract", "watch", "health", "fingerprint", "nvml", "config"},
}


def nvidia_part(module: str) -> str | None:
    """The part of `nvidia` a module is in; None for the modules above the parts (plugin, grouping, reserve...)."""
    parts = module.split(".")
    if parts[:2] != [PKG, "nvidia"] or len(parts) < 3:
        return None
    if parts[2] == "stats":
        return "stats.contract" if parts[3:] == ["contract"] else "stats"
    return {"nvml": "nvml", "health": "health", "fingerprint": "fingerprint", "config": "config",
            "device_watch": "watch"}.get(parts[2])


def imports(path: Path, module: str, python_root: Path) -> Iterator[Import]:
    """The modules `path` (module `module`) imports, absolute; `from pkg import sub` counts as pkg.sub."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = []
            for alias in node.names:
                if is_module(f"{base}.{alias.name}", python_root):
                    yield Import(node.lineno, f"{base}.{alias.name}")
                else:
                    names.append(alias.name)
            if names:
                yield Import(node.lineno, base, tuple(names))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield Import(node.lineno, node.args[0].value)


def check(python_root: Path, examples: Path | None = None) -> list[str]:
    """Every import that breaks the layering, as `file:line: text`, for the package under `python_root`."""
    problems: list[str] = []
    pkg_dir = python_root / PKG
    for path in sorted(pkg_dir.rglob("*.py")):
        if "_proto" in path.relative_to(pkg_dir).parts:
            continue  # generated, and below everything
        module = module_name(path, python_root)
        where = f"{path.relative_to(python_root)}"
        own = layer(module)
        if own is None:
            problems.append(f"{where}: {module} is in no layer (add it to the test's layers)")
            continue
        for imp in imports(path, module, python_root):
            theirs = layer(imp.target)
            if theirs in (None, "outside"):
                continue  # stdlib, third party, or a module the loop reports as in no layer
            if theirs == "proto":
                if own != "sdk" and module not in STATS_ENCODERS:
                    problems.append(f"{where}:{imp.line}: {module} imports {imp.target}: "
                                    "the generated protobuf modules are the SDK's; use the sdk's names")
            elif theirs not in MAY_IMPORT[own]:
                problems.append(f"{where}:{imp.line}: {module} ({own}) imports {imp.target} ({theirs}): "
                                "layers import only the layers below them")
            elif own == theirs == "nvidia":
                mine, other = nvidia_part(module), nvidia_part(imp.target)
                if mine == "stats.contract":
                    mine = "stats"
                if mine is not None and (other is None or other not in NVIDIA_MAY_IMPORT[mine]):
                    problems.append(f"{where}:{imp.line}: {module} ({mine}) imports {imp.target} "
                                    f"({other or 'above the parts'}): nvidia's parts import only those before them")
    if examples is not None:
        public = sdk_public_names(pkg_dir / "sdk" / "__init__.py")
        for path in sorted(examples.rglob("*.py")):
            where = f"{path.relative_to(examples.parent)}"
            for imp in imports(path, path.stem, python_root):
                if layer(imp.target) == "outside":
                    continue
                sdk, _, sub = imp.target.partition(f"{PKG}.sdk.")
                if imp.target == f"{PKG}.sdk" or (not sdk and sub in public):
                    hidden = [n for n in imp.names if n not in public] if imp.target == f"{PKG}.sdk" else []
                    problems.extend(f"{where}:{imp.line}: imports {n} from {PKG}.sdk, which does not export it"
                                    for n in hidden)
                else:
                    problems.append(f"{where}:{imp.line}: imports {imp.target}: an example uses only what "
                                    f"{PKG}.sdk exports")
    return problems


def sdk_public_names(init: Path) -> set[str]:
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            assert isinstance(node.value, (ast.List, ast.Tuple))
            return {str(elt.value) for elt in node.value.elts if isinstance(elt, ast.Constant)}
    raise AssertionError(f"{init} has no __all__")


def test_the_package_keeps_its_layers() -> None:
    assert check(ROOT / "python", ROOT / "examples") == []


# --- the checker can fail ---

def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checker_reports_each_kind_of_breach(tmp_path: Path) -> None:
    py = tmp_path / "python"
    # Each file of the fake package, with its source ("" for an empty module).
    files = dict.fromkeys(("__init__.py", "nvidia/__init__.py", "_proto/__init__.py", "_proto/nomad/__init__.py",
                           "_proto/nomad/device_pb2.py", "nvidia/plugin.py", "cli.py", "nvidia/stats/contract.py",
                           "newthing.py"), "")
    files |= {
        "sdk/__init__.py": '__all__ = ["DevicePlugin", "serve"]\n',
        "sdk/model.py": "import json\nfrom nomad_device_nvidia._proto.nomad import device_pb2\n",
        "sdk/bad.py": "def f():\n    from nomad_device_nvidia.nvidia.plugin import X\n",
        "sdk/relative.py": "from ..nvidia import plugin\n",
        "sdk/native.py": "from nomad_device_nvidia import _native\n",
        "sdk/dynamic.py": 'import importlib\nimportlib.import_module("nomad_device_nvidia.cli")\n',
        "nvidia/typed.py":
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nomad_device_nvidia._proto.nomad import x\n",
        "nvidia/stats/python.py": "from nomad_device_nvidia._proto.nomad import device_pb2\n",
        "nvidia/upward.py": "import nomad_device_nvidia.probe\n",
        "nvidia/nvml/executor.py": "from nomad_device_nvidia.nvidia.health import book\n",
        "nvidia/health/book.py": "from nomad_device_nvidia.nvidia.nvml import executor\n",
        "nvidia/device_watch.py":
            "from nomad_device_nvidia.nvidia.stats.contract import X\nfrom nomad_device_nvidia.nvidia.stats.hub import Y\n",
        "nvidia/stats/hub.py": "from nomad_device_nvidia.nvidia.plugin import Z\n",
        "nvidia/fine.py": "from nomad_device_nvidia.sdk import serve\nfrom nomad_device_nvidia import _native\n",
        "probe.py": "from nomad_device_nvidia._proto.nomad import device_pb2\n",
    }
    for rel, text in files.items():
        _write(tmp_path, f"python/{PKG}/{rel}", text)
    _write(tmp_path, "examples/ex/plugin.py",
           "from nomad_device_nvidia.sdk import DevicePlugin, Secret\n"
           "from nomad_device_nvidia.sdk.convert import stats_bytes\n"
           "from nomad_device_nvidia._proto.nomad import device_pb2\n")
    found = check(py, tmp_path / "examples")
    expected = [
        "nomad_device_nvidia/newthing.py: nomad_device_nvidia.newthing is in no layer",
        "nomad_device_nvidia/nvidia/typed.py:3: nomad_device_nvidia.nvidia.typed imports nomad_device_nvidia._proto",
        "nomad_device_nvidia/nvidia/upward.py:1: nomad_device_nvidia.nvidia.upward (nvidia) imports "
        "nomad_device_nvidia.probe (cli)",
        "nomad_device_nvidia/probe.py:1: nomad_device_nvidia.probe imports nomad_device_nvidia._proto",
        "nomad_device_nvidia/nvidia/nvml/executor.py:1: nomad_device_nvidia.nvidia.nvml.executor (nvml) imports "
        "nomad_device_nvidia.nvidia.health.book (health)",
        "nomad_device_nvidia/nvidia/device_watch.py:2: nomad_device_nvidia.nvidia.device_watch (watch) imports "
        "nomad_device_nvidia.nvidia.stats.hub (stats)",
        "nomad_device_nvidia/nvidia/stats/hub.py:1: nomad_device_nvidia.nvidia.stats.hub (stats) imports "
        "nomad_device_nvidia.nvidia.plugin (above the parts)",
        "nomad_device_nvidia/sdk/bad.py:2: nomad_device_nvidia.sdk.bad (sdk) imports nomad_device_nvidia.nvidia",
        "nomad_device_nvidia/sdk/dynamic.py:2: nomad_device_nvidia.sdk.dynamic (sdk) imports nomad_device_nvidia.cli",
        "nomad_device_nvidia/sdk/native.py:1: nomad_device_nvidia.sdk.native (sdk) imports nomad_device_nvidia",
        "nomad_device_nvidia/sdk/relative.py:1: nomad_device_nvidia.sdk.relative (sdk) imports nomad_device_nvidia.nvidia",
        "examples/ex/plugin.py:1: imports Secret from nomad_device_nvidia.sdk, which does not export it",
        "examples/ex/plugin.py:2: imports nomad_device_nvidia.sdk.convert: an example uses only",
        "examples/ex/plugin.py:3: imports nomad_device_nvidia._proto.nomad.device_pb2: an example uses only",
    ]
    unexplained = [f for f in found if not any(f.startswith(e) for e in expected)]
    missing = [e for e in expected if not any(f.startswith(e) for f in found)]
    assert not unexplained and not missing, (unexplained, missing)


def test_checker_finds_a_bad_import_planted_in_a_copy_of_the_real_package(tmp_path: Path) -> None:
    copy = tmp_path / "python"
    shutil.copytree(ROOT / "python" / PKG, copy / PKG, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    before = check(copy, tmp_path / "examples")
    assert before == check(ROOT / "python", ROOT / "examples")  # the copy reads as the real tree
    model = copy / PKG / "sdk" / "model.py"
    model.write_text(model.read_text() + "\nfrom nomad_device_nvidia.nvidia.grouping import tracked\n")
    (found,) = set(check(copy, tmp_path / "examples")) - set(before)
    assert found.startswith(f"{PKG}/sdk/model.py:") and "imports nomad_device_nvidia.nvidia.grouping (nvidia)" in found
