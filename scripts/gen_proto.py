"""Generate the Python protobuf modules from proto/.

The generated modules are checked in (python/nomad_device_nvidia/_proto) so a
wheel build needs no grpcio-tools; tests/test_proto_fresh.py regenerates them
into a temporary directory and fails when the checked-in copy is stale.

Usage: python scripts/gen_proto.py [OUTPUT_DIR]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "python" / "nomad_device_nvidia" / "_proto"

# protoc names imports after the proto's directory ("from nomad import x_pb2");
# inside our package they must be relative.
_IMPORT = re.compile(r"^from (goplugin|nomad) import (\w+_pb2) as (\w+)$", re.M)


def generate(out: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    # Messages only: the services are registered by hand in nomad_device_nvidia.sdk
    # (Stats needs an identity serializer), so no *_pb2_grpc stubs are generated.
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for sub in ("goplugin", "nomad"):
        pkg = out / sub
        (pkg / "__init__.py").write_text("")
        for f in sorted(pkg.glob("*.py*")):
            text = _IMPORT.sub(r"from ..\1 import \2 as \3", f.read_text())
            f.write_text(text)
            written.append(f)
    (out / "__init__.py").write_text('"""Generated protobuf modules; see scripts/gen_proto.py."""\n')
    return written


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
