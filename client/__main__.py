"""`mediajobs` console script (and `python -m mediajobs.client`)."""
from __future__ import annotations

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
