"""Who is calling: with `--auth keys` the API key the call was authenticated
with (set by auth.guard for the call's task), else nobody. Resources record
it as their creator, whatever the request's own creator field says."""
from __future__ import annotations

import contextvars

_PRINCIPAL: contextvars.ContextVar[str] = contextvars.ContextVar("mediajobs_principal", default="")


def set_principal(name: str) -> None:
    _PRINCIPAL.set(name)


def creator(given: str) -> str:
    """The authenticated principal, or (no authentication) what the request
    said."""
    return _PRINCIPAL.get() or given
