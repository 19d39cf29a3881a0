"""Generate attestation/v1/*_pb2*.py from proto/gpuaudit/v1/*.proto, and
agent/sources/podresources/*_pb2*.py from proto/k8s/podresources/v1/*.proto.

    python tools/genproto.py            # write into attestation/v1/
    python tools/genproto.py --out DIR  # write elsewhere (the staleness test compares)

grpc_tools writes absolute imports (``from gpuaudit.v1 import collector_pb2``); they are
rewritten to relative ones so the modules live inside the ``attestation`` package.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = "gpuaudit/v1"
# Second target: the kubelet pod-resources API (vendored subset), for the agent's client.
PODRESOURCES_DIR = "k8s/podresources/v1"
PODRESOURCES_OUT = ROOT / "agent" / "sources" / "podresources"


def generate(out: Path, package_dir: str = PACKAGE_DIR) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # dev dependency only

    includes = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted((PROTO_ROOT / package_dir).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{includes}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(s.relative_to(PROTO_ROOT)) for s in sources],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        module = re.escape(package_dir.replace("/", "."))
        for f in sorted((Path(tmp) / package_dir).iterdir()):
            text = f.read_text()
            text = re.sub(rf"^from {module} import (\w+)", r"from . import \1", text, flags=re.M)
            dest = out / f.name
            dest.write_text(text)
            written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "attestation" / "v1")
    ap.add_argument("--podresources-out", type=Path, default=PODRESOURCES_OUT)
    ns = ap.parse_args(argv)
    for p in [*generate(ns.out), *generate(ns.podresources_out, PODRESOURCES_DIR)]:
        print(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
