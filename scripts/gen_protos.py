"""Generate Python stubs from protos/ into faregate/pb/ (run by `make proto`).

grpcio-tools writes imports that mirror the proto tree (``from faregate.auth.v1 import
auth_pb2``); our stubs live one level down under ``faregate.pb``, so the generated imports
are rewritten to ``faregate.pb.<area>.v1``. The output is never edited by hand.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "faregate" / "pb"
IMPORT = re.compile(r"^from faregate\.(\w+)\.v1 import", re.MULTILINE)


def main() -> int:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            return 1
        generated = Path(tmp) / "faregate"
        for area in sorted(p for p in generated.iterdir() if p.is_dir()):
            target = OUT / area.name
            shutil.rmtree(target, ignore_errors=True)
            for src in area.rglob("*.py*"):
                dst = target / src.relative_to(area)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(IMPORT.sub(r"from faregate.pb.\1.v1 import", src.read_text()))
            for pkg in (target, *[d for d in target.rglob("*") if d.is_dir()]):
                (pkg / "__init__.py").touch()
    print(f"generated stubs for {len(sources)} protos into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
