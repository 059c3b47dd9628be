"""Who is calling, and for which project.

With `--auth keys` the auth guard sets, for the call's task, the API key the
call was authenticated with and that key's project. Without authentication
nobody is set and every call works in the home project ("default").

The store reads the project from here when a read or a write is queued
(`Store.read`, `Store.write`), so every statement of a call is scoped to the
caller's project without each servicer passing it on. Background work that
acts for a project (the bulk runner, lease recovery) wraps it in
`acting_for(project)`.

Resources record the key as their creator, whatever the request's own
creator field says.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    project: str
    role: str

    @property
    def name(self) -> str:
        return f"key:{self.key_id}"


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("mediajobs_caller", default=None)
_PROJECT: contextvars.ContextVar[str] = contextvars.ContextVar("mediajobs_project", default="")


def set_caller(caller: Caller) -> None:
    """The authenticated caller of this task (set by auth.guard)."""
    _CALLER.set(caller)
    _PROJECT.set(caller.project)


def caller() -> Caller | None:
    """The authenticated caller, or None (no authentication, or the server's
    own work)."""
    return _CALLER.get()


def current_project() -> str:
    """The project this task acts for; "" means the store's home project."""
    return _PROJECT.get()


@contextlib.contextmanager
def acting_for(project: str) -> Iterator[None]:
    """Run the block's store calls in `project` (background work)."""
    token = _PROJECT.set(project)
    try:
        yield
    finally:
        _PROJECT.reset(token)


def creator(given: str) -> str:
    """The authenticated principal, or (no authentication) what the request
    said."""
    c = _CALLER.get()
    return c.name if c is not None else given
