"""`mediajobs-server`: run the gRPC server."""
from __future__ import annotations

import asyncio
import sys

from .app import serve
from .config import parse_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        asyncio.run(serve(cfg))
    except OSError as e:
        print(f"mediajobs-server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
