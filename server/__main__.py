"""`mediajobs-server`: run the gRPC server."""
from __future__ import annotations

import asyncio
import sys

from .app import StartupError, serve
from .config import parse_args


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["keys"]:  # API keys on the database directly (the first admin key)
        from .keys_cli import main as keys_main

        return keys_main(args[1:])
    cfg = parse_args(argv)  # exits 2 with one line for a bad flag or environment value
    try:
        asyncio.run(serve(cfg))
    except StartupError as e:
        print(f"mediajobs-server: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
