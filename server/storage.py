"""Paths inside the storage root, resolved without ever touching anything
outside it: `..` and absolute paths are refused before any filesystem call,
and symlinks are followed by reading the link and checking its target
lexically before looking at it."""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import grpc

from .errors import ServiceError, clip, invalid_argument

MAX_LINK_HOPS = 40
# Each project sees its own area of the storage root: the server's home
# project the root itself, any other project PROJECTS_DIR/<project>. The
# top-level PROJECTS_DIR is hidden from every area (a path into it does not
# exist), so no project can name or probe another's files.
PROJECTS_DIR = ".projects"


def project_area(project: str, home: str) -> str:
    """The project's area, relative to the storage root ("" = the root)."""
    return "" if project == home else f"{PROJECTS_DIR}/{project}"


def area_root(root: Path, project: str, home: str) -> Path:
    """The directory a project's paths are relative to."""
    area = project_area(project, home)
    return root / area if area else root


def outside_root(path: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.PERMISSION_DENIED,
        "PATH_OUTSIDE_STORAGE_ROOT",
        f"{clip(path)} leads outside the storage root through a symlink; only files inside the root can be checked",
        metadata={"path": path},
    )


def check_relative(path: str, field: str = "local_path") -> list[str]:
    """Validate a client-given path lexically; return its parts."""
    if not path:
        raise invalid_argument([(field, "required: a path relative to the storage root")])
    if "\x00" in path:
        raise invalid_argument([(field, "must not contain NUL bytes")])
    if path.startswith("/") or path.startswith("\\") or (len(path) > 1 and path[1] == ":"):
        raise invalid_argument([(field, f"{clip(path)} is absolute; give a path relative to the storage root")])
    if len(path) > 4096:
        raise invalid_argument([(field, "at most 4096 characters")])
    parts = [p for p in PurePosixPath(path).parts if p not in ("", ".")]
    if any(len(p.encode()) > 255 for p in parts):
        raise invalid_argument([(field, "a path component is longer than 255 bytes")])
    if ".." in parts:
        raise invalid_argument([(field, f"{clip(path)} contains '..'; paths must stay inside the storage root")])
    if not parts:
        raise invalid_argument([(field, "must name a file, not the storage root itself")])
    return parts


def resolve_inside(root: Path, path: str, field: str = "local_path") -> tuple[Path | None, os.stat_result | None]:
    """Resolve `path` under `root` (a project's area) following symlinks
    only while they stay inside. Returns (path, lstat result) or
    (None, None) when it does not exist or lies in the hidden PROJECTS_DIR;
    PERMISSION_DENIED when a link leads outside."""
    parts = check_relative(path, field)
    root = Path(os.path.realpath(root))
    cur: list[str] = []  # components below root, already resolved
    todo = list(parts)
    hops = 0
    st: os.stat_result | None = None
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not cur:
                raise outside_root(path)
            cur.pop()
            continue
        if not cur and part == PROJECTS_DIR:
            return None, None  # the other projects' areas: nothing there exists for this one
        candidate = root.joinpath(*cur, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except OSError as e:  # too long once links are followed, no permission, ...
            raise invalid_argument([(field, f"cannot be checked: {e.strerror}")])
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise outside_root(path)
            target = os.readlink(candidate)
            if os.path.isabs(target):
                rel = os.path.relpath(os.path.normpath(target), root)
                if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
                    raise outside_root(path)
                cur = []
                todo = [p for p in rel.split("/") if p not in ("", ".")] + todo
            else:
                todo = target.split("/") + todo
            continue
        cur.append(part)
    if st is None:
        return None, None
    return root.joinpath(*cur), st
