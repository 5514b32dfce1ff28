"""docs/install.md as a new user follows it, on this Debian 12 builder.

The blocks marked `<!-- test: install -->`, `client.hcl` and `probe` run as one
script, with a temporary directory for /opt and /etc/nomad.d, the wheel of this
tree (tests/e2e/wheel.py's, built once) for the package name, and no sudo (the
tests run as the user they run as). For the Python versions of the other
distributions the doc covers, the same script runs with that version of Python
for `python3`: the versions, not the distributions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from e2e.wheel import REPO, SCENARIOS, SIM_LIB, clean_path, ensure_wheel, project_version
from test_wheel import _find_python

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOC = REPO / "docs" / "install.md"
SCENARIO = SCENARIOS / "8xh100-mig.toml"


def marked_blocks(text: str) -> dict[str, str]:
    """Each `<!-- test: NAME -->` and the fenced block right after it."""
    found = {m["name"]: m["body"] for m in re.finditer(
        r"^<!-- test: (?P<name>\S+) -->\n```\w*\n(?P<body>.*?)^```$", text, re.M | re.S)}
    assert set(found) == {"install", "client.hcl", "probe"}, sorted(found)
    return found


def script(blocks: dict[str, str], root: Path, wheel: Path, python: str) -> str:
    """The doc's commands, pointed at `root`, with the wheel for the package name."""
    def local(text: str) -> str:
        for path in ("/opt/nomad-device-nvidia", "/opt/nomad/plugins", "/etc/nomad.d"):
            text = text.replace(path, f"{root}{path}")
        return text

    lines = []
    for line in local(blocks["install"] + blocks["probe"]).splitlines():
        line = re.sub(r"^sudo ", "", line)
        line = re.sub(r"^python3 ", f"{python} ", line)
        line = re.sub(r"pip install nomad-device-nvidia$", f"pip install -q --only-binary=:all: {wheel}", line)
        lines.append(line)
    # The probe needs GPUs: the simulated driver's, added to the doc's config block.
    hcl = local(blocks["client.hcl"]).replace(
        "config {\n", f"config {{\n    simulate = {json.dumps(str(SCENARIO))}\n"
                      f"    nvml_library = {json.dumps(str(SIM_LIB))}\n", 1)
    assert "simulate" in hcl, "the doc's plugin block has no config block"
    return "\n".join(["set -euxo pipefail", f"mkdir -p {root}/etc/nomad.d",
                      f"cat > {root}/etc/nomad.d/client.hcl <<'EOF'\n{hcl}EOF", *lines, ""])


# Distribution: the Python its doc section uses, as found on this machine (pyenv or PATH).
PYTHONS = {"debian12": "/usr/bin/python3", "ubuntu2204": "3.10", "ubuntu2404": "3.12", "rhel9": "3.11"}


@pytest.mark.parametrize("distro", sorted(PYTHONS))
def test_install_doc_commands(distro: str, tmp_path: Path) -> None:
    python = PYTHONS[distro]
    found = python if python.startswith("/") else _find_python(python)
    assert found and Path(found).exists(), f"no {python} on this machine"
    assert SIM_LIB.is_file(), f"no simulated NVML at {SIM_LIB}: run `make sim`"
    blocks = marked_blocks(DOC.read_text())
    text = script(blocks, tmp_path, ensure_wheel(), found)
    # The machine's environment (its pip cache among it) without a venv or a toolchain.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = clean_path()
    res = subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert res.returncode == 0, f"{text}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
    # --version from the link, then probe's table of the simulated node.
    assert f"nomad-device-nvidia {project_version()}\n" in res.stdout
    assert "H100" in res.stdout, res.stdout[-2000:]
    venv_python = tmp_path / "opt" / "nomad-device-nvidia" / "bin" / "python"
    ver = subprocess.run([str(venv_python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    want = subprocess.run([found, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert ver == want
    link = tmp_path / "opt" / "nomad" / "plugins" / "nomad-device-nvidia"
    assert link.is_symlink() and link.resolve() == (tmp_path / "opt" / "nomad-device-nvidia" / "bin"
                                                     / "nomad-device-nvidia").resolve()
