#!/usr/bin/env python3
"""Generate the Python stubs (+ .pyi types) from protos/ into mediajobs/v1/.

The only way generated code is made; never edit the output by hand.
`--check` regenerates into a temporary folder and fails if the committed
files differ (drift between protos/ and the generated code).
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT_DIR = ROOT / "mediajobs" / "v1"
EXPECTED_TOOLS = "1.85.1"


def generate(out_root: Path) -> None:
    import google.rpc.status_pb2
    import grpc_tools

    from importlib.metadata import version

    got = version("grpcio-tools")
    if got != EXPECTED_TOOLS:
        sys.exit(f"gen_protos: grpcio-tools {got} installed, {EXPECTED_TOOLS} pinned; run scripts/setup")
    gapi = Path(google.rpc.status_pb2.__file__).parents[2]
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "mediajobs" / "v1").glob("*.proto"))
    bindir = Path(sys.executable).parent  # the venv's plugins, also when it is not activated
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}", f"-I{gapi}",
        f"--python_out={out_root}", f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}", f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
    del grpc_tools


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if mediajobs/v1 differs from a fresh generation")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        generate(tmp_root)
        fresh = tmp_root / "mediajobs" / "v1"
        fresh_files = {p.name for p in fresh.iterdir() if p.is_file()}
        if args.check:
            current = {p.name for p in OUT_DIR.glob("*_pb2*.py*")}
            diff = sorted(fresh_files ^ current)
            diff += sorted(n for n in fresh_files & current if not filecmp.cmp(fresh / n, OUT_DIR / n, shallow=False))
            if diff:
                print("gen_protos: generated code is out of date with protos/: " + ", ".join(diff), file=sys.stderr)
                print("run: python scripts/gen_protos.py", file=sys.stderr)
                return 1
            print("gen_protos: generated code matches protos/")
            return 0
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for old in OUT_DIR.glob("*_pb2*.py*"):
            old.unlink()
        for name in sorted(fresh_files):
            shutil.copyfile(fresh / name, OUT_DIR / name)
        print(f"gen_protos: wrote {len(fresh_files)} files to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
