#!/usr/bin/env python3
"""Print one version's section of CHANGELOG.md: the body of the GitHub release.

    scripts/release_notes.py 0.1.0            # or v0.1.0, or refs/tags/v0.1.0
    scripts/release_notes.py 0.1.0 --changelog path/CHANGELOG.md

The section is everything between its heading, `## [0.1.0] - YYYY-MM-DD`
(Keep a Changelog's form), and the next `## ` heading or the link definitions
at the end, with the surrounding blank lines stripped. Exit 1 with a message
naming the version when the section is missing, undated or empty: a release
without notes is a mistake to stop at, not to publish.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"
_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\](?P<rest>.*)$")
_LINK_DEF = re.compile(r"^\[[^\]]+\]: \S+")


class NotesError(Exception):
    pass


def notes(text: str, version: str) -> str:
    version = version.removeprefix("refs/tags/").removeprefix("v")
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        m = _HEADING.match(line)
        if m and m["version"] == version:
            if not re.fullmatch(r" - \d{4}-\d{2}-\d{2}\s*", m["rest"]):
                raise NotesError(f"CHANGELOG.md: the heading of {version} has no date: {line!r} "
                                 f"(want '## [{version}] - YYYY-MM-DD')")
            start = i + 1
            break
    if start is None:
        raise NotesError(f"CHANGELOG.md has no section for version {version} (want '## [{version}] - YYYY-MM-DD')")
    body = []
    for line in lines[start:]:
        if line.startswith("## ") or _LINK_DEF.match(line):
            break
        body.append(line)
    out = "\n".join(body).strip("\n")
    if not out.strip():
        raise NotesError(f"CHANGELOG.md: the section of {version} is empty")
    return out + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("version", help="X.Y.Z, vX.Y.Z or refs/tags/vX.Y.Z")
    p.add_argument("--changelog", type=Path, default=CHANGELOG)
    args = p.parse_args(argv)
    try:
        sys.stdout.write(notes(args.changelog.read_text(), args.version))
    except NotesError as exc:
        print(f"release_notes: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
