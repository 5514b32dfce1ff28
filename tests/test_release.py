"""Release plumbing: one version everywhere, the changelog the release notes come
from, and the preload that keeps a running plugin on its own files when its
package is upgraded under it (the upgrade itself: tests/test_upgrade.py)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from e2e.wheel import REPO, project_version

CHECK = REPO / "scripts" / "check_version.py"
NOTES = REPO / "scripts" / "release_notes.py"
CHANGELOG = REPO / "CHANGELOG.md"
PACKAGE = REPO / "python" / "nomad_device_nvidia"
PLUGIN = Path(sys.prefix) / "bin" / "nomad-device-nvidia"  # .venv's, the extension built editable
HARNESS = REPO / "build" / "bin" / "harness"

sys.path.insert(0, str(REPO / "scripts"))
import release_notes  # noqa: E402


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=60)


# --- one version ---------------------------------------------------------------------------------------------------

def test_the_version_checker_agrees_with_the_built_extension_and_the_tag() -> None:
    version = project_version()
    res = run(CHECK, "--tag", f"v{version}", "--binary", PLUGIN)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"{version}\n", "")
    assert run(CHECK, "--tag", f"refs/tags/v{version}").returncode == 0  # as GITHUB_REF carries it


@pytest.mark.parametrize("tag", ["v9.9.9", "0.1.0-no-v", "v0.1"])
def test_a_tag_naming_another_version_is_refused(tag: str) -> None:
    res = run(CHECK, "--tag", tag)
    assert res.returncode == 1
    assert f"tag {tag!r} does not name version {project_version()}" in res.stderr


def _copy_manifests(dst: Path) -> None:
    for rel in ["Cargo.toml", "Cargo.lock", "CHANGELOG.md",
                *(str(p.relative_to(REPO)) for p in REPO.glob("src_rust/*/Cargo.toml"))]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, dst / rel)


def test_a_version_bump_without_the_lock_file_is_refused(tmp_path: Path) -> None:
    _copy_manifests(tmp_path)
    cargo = tmp_path / "Cargo.toml"
    cargo.write_text(cargo.read_text().replace(f'version = "{project_version()}"', 'version = "7.0.0"', 1))
    res = run(CHECK, "--repo", tmp_path)
    assert res.returncode == 1
    assert "Cargo.lock has nomad-device-nvidia-native" in res.stderr and "Cargo.toml says 7.0.0" in res.stderr
    # ...and a tag of the new version wants the changelog section too.
    res = run(CHECK, "--repo", tmp_path, "--tag", "v7.0.0")
    assert "CHANGELOG.md has no section for version 7.0.0" in res.stderr


def _wheel(path: Path, version: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"nomad_device_nvidia-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.4\nName: nomad-device-nvidia\nVersion: {version}\n")
    return path


def test_built_artifacts_of_another_version_are_refused(tmp_path: Path) -> None:
    version = project_version()
    good = _wheel(tmp_path / f"nomad_device_nvidia-{version}-cp310-abi3-manylinux_2_17_x86_64.whl", version)
    assert run(CHECK, "--dist", tmp_path).returncode == 0
    # A wheel renamed by hand: the file name and the metadata disagree.
    _wheel(tmp_path / f"nomad_device_nvidia-{version}-cp310-abi3-manylinux_2_17_aarch64.whl", "0.0.1")
    res = run(CHECK, "--dist", tmp_path)
    assert res.returncode == 1 and "metadata says 0.0.1" in res.stderr and good.name not in res.stderr


def test_plugin_info_reports_the_cargo_version() -> None:
    assert HARNESS.is_file(), f"no Go harness at {HARNESS}: run `make harness`"
    res = subprocess.run([str(HARNESS), "info", "--plugin", str(PLUGIN)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    events = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    info = next(e for e in events if e["event"] == "info")
    assert (info["name"], info["plugin_version"]) == ("nvidia-gpu", project_version()), info


# --- the changelog and the release notes ---------------------------------------------------------------------------

def test_changelog_is_keep_a_changelog_with_this_versions_notes() -> None:
    text = CHANGELOG.read_text()
    headings = re.findall(r"^## (.*)$", text, re.M)
    assert headings[0] == "[Unreleased]", headings
    versions = []
    for h in headings[1:]:
        m = re.fullmatch(r"\[(\d+)\.(\d+)\.(\d+)\] - \d{4}-\d{2}-\d{2}", h)
        assert m, f"not a `## [X.Y.Z] - YYYY-MM-DD` heading: {h!r}"
        versions.append(tuple(int(x) for x in m.groups()))
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions), "newest first, once each"
    for sub in re.findall(r"^### (.*)$", text, re.M):
        assert sub in ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"), sub
    res = run(NOTES, f"v{project_version()}")
    assert res.returncode == 0, res.stderr
    assert "### Added" in res.stdout and "## " not in res.stdout.replace("### ", "")


SAMPLE = """# Changelog

## [Unreleased]

### Fixed

- not released yet

## [1.2.0] - 2027-01-02

### Added

- the new thing

## [1.1.0]

- undated

## [1.0.0] - 2026-01-01

## [0.9.0] - 2025-01-01

- the old thing

[1.2.0]: https://example.invalid/compare/v1.0.0...v1.2.0
"""


def test_release_notes_cut_one_section() -> None:
    assert release_notes.notes(SAMPLE, "refs/tags/v1.2.0") == "### Added\n\n- the new thing\n"
    assert release_notes.notes(SAMPLE, "0.9.0") == "- the old thing\n"  # the link definitions are not notes


@pytest.mark.parametrize(("version", "why"), [("1.1.0", "has no date"), ("1.0.0", "is empty"),
                                              ("3.0.0", "no section for version 3.0.0")])
def test_release_notes_refuse_a_missing_undated_or_empty_section(version: str, why: str, tmp_path: Path) -> None:
    path = tmp_path / "CHANGELOG.md"
    path.write_text(SAMPLE)
    res = run(NOTES, version, "--changelog", path)
    assert res.returncode == 1 and res.stdout == ""
    assert why in res.stderr and version in res.stderr


# --- the preload: a running plugin never imports a newer version's file --------------------------------------------

def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _lazy_imports(path: Path) -> set[str]:
    """Modules a file imports inside functions (not at module level, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    here = _module_name(path)

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if in_function and isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif in_function and isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here.split(".")[: len(here.split(".")) - node.level + (path.name == "__init__.py")]
                                + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # submodules; names that are not are dropped below
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def test_preload_loads_everything_a_serving_plugin_imports_late() -> None:
    # As the serving process runs without AutoMTLS: ssl kept out (sdk.serve).
    code = ("import json, sys; sys.modules['ssl'] = None; from nomad_device_nvidia import cli\n"
            "before = set(sys.modules); cli.preload()\n"
            "loaded = sorted(k for k, v in sys.modules.items() if v is not None)\n"
            "print(json.dumps({'loaded': loaded, 'skip': cli.PRELOAD_SKIP, 'new': sorted(set(loaded) - before)}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    loaded, skip = set(out["loaded"]), set(out["skip"])
    assert "nomad_device_nvidia.nvidia.stats.python" in out["new"], "preload loaded nothing the CLI had not"
    # What the serving process can reach: every file but the operator commands and AutoMTLS.
    lazy: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name in skip or name == "nomad_device_nvidia.cli" or "._proto" in name:
            continue
        assert name in loaded, f"{name} is not preloaded"
        for mod in _lazy_imports(path):
            lazy.setdefault(mod, name)
    # `from X import Y` where Y is a name, not a module, shows as X.Y: only real modules count.
    probe = ("import importlib.util, json, sys\n"
             "def real(n):\n"
             "    try: return importlib.util.find_spec(n) is not None\n"
             "    except (ImportError, ValueError): return False\n"
             "print(json.dumps([n for n in json.loads(sys.argv[1]) if real(n)]))")
    res = subprocess.run([sys.executable, "-c", probe, json.dumps(sorted(lazy))], capture_output=True, text=True,
                         timeout=60, cwd="/")
    modules = set(json.loads(res.stdout))
    assert {"decimal", "shutil", "json", "nomad_device_nvidia.nvidia.stats.native",
            "nomad_device_nvidia.nvidia.stats.python"} <= modules, "the import scan found too little"
    # Imported late, but only on the way to the handshake line, never once serving.
    before_serving = {"grp": "the socket directory's group (handshake.private_dir)"} | {m: "skipped" for m in skip}
    missing = {m: f"imported late by {lazy[m]}" for m in sorted(modules) if m not in loaded and m not in before_serving}
    assert missing == {}
    # ...and nothing the serving process never needs.
    assert not [m for m in skip | {"ssl", "cryptography", "hcl", "argparse"} if m in loaded]


# --- the workflows -------------------------------------------------------------------------------------------------

WORKFLOWS = REPO / ".github" / "workflows"


def test_every_action_is_pinned_by_commit_with_its_release_named() -> None:
    # actionlint (make lint) checks the workflows' syntax and expressions; this, the pins.
    uses = [(wf.name, m["ref"], m["rest"]) for wf in sorted(WORKFLOWS.glob("*.yml"))
            for m in re.finditer(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$", wf.read_text(), re.M)]
    assert {name for name, _, _ in uses} == {"ci.yml", "release.yml"}
    bad = [(name, ref, rest) for name, ref, rest in uses
           if not re.fullmatch(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}", ref)
           or not re.fullmatch(r"\s+# v\d+(\.\d+)*", rest)]
    assert bad == [], "pin each action by its full commit SHA, with `# vX.Y.Z` after it"


def test_the_release_workflow_runs_the_checked_scripts() -> None:
    text = (WORKFLOWS / "release.yml").read_text()
    assert 'scripts/check_version.py --tag "$GITHUB_REF_NAME"' in text
    assert 'scripts/release_notes.py "$GITHUB_REF_NAME"' in text
    assert "id-token: write" in text and "pypa/gh-action-pypi-publish@" in text
