"""What a Kaltura api_v3 request carries, decoded into one parameter tree.

Kaltura clients send the same parameters four ways, and a request may mix
them (the query string first, the body on top):

- a JSON body, nested: `{"pager": {"objectType": "KalturaFilterPager", "pageSize": "10"}, "ks": "..."}`
  (what kalturaapiclient sends for calls without files);
- multipart/form-data: a part `json` holding that JSON, one part per file
  (`csvFileData`, `fileData`), and possibly plain fields;
- bracketed query or form fields: `filter[entryIdEqual]=x&pager[pageSize]=5`
  (serve URLs, the seeds' swagger; `filter:entryIdEqual` is taken too);
- a list as `items[0][field]` or a JSON array; an empty list as `{"-": ""}`.

Every scalar may arrive as a string: `"101"`, `"25.0"`, `"True"`/`"False"`.
`name__null` means the parameter is explicitly null. The getters below turn
values into Python types or raise KalturaError with Kaltura's codes
(MISSING_MANDATORY_PARAMETER, PROPERTY_VALIDATION_NUMERIC_VALUE, ...).
Every input is bounded: depth, number of values, key and value lengths.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

MAX_DEPTH = 8
MAX_VALUES = 5000
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 1024 * 1024
MAX_FILES = 4
NULL = object()  # a parameter sent as `name__null`


class KalturaError(Exception):
    """An answer in Kaltura's error form: `code` (e.g. BULK_UPLOAD_NOT_FOUND)
    and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def missing(name: str) -> KalturaError:
    return KalturaError("MISSING_MANDATORY_PARAMETER", f'Missing parameter "{name}"')


@dataclass
class UploadedFile:
    """A file part: its name as the client gave it (base name only) and bytes."""
    filename: str
    data: bytes


@dataclass
class Params:
    """A request's parameters as a tree of dicts, lists and strings."""
    tree: dict[str, Any] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)

    # -- decoding --------------------------------------------------------------------

    def merge_flat(self, items: Iterable[tuple[str, Any]]) -> None:
        """Bracketed `a[b][c]=v` fields (query or form) into the tree."""
        for key, value in items:
            if len(key) > MAX_KEY_CHARS:
                raise KalturaError("INVALID_PARAMETER", f"a parameter name is longer than {MAX_KEY_CHARS} characters")
            path = [p for p in re.split(r"[\[\]:]+", key) if p != ""]
            if not path:
                continue
            if len(path) > MAX_DEPTH:
                raise KalturaError("INVALID_PARAMETER", f"parameter {key[:60]!r} is nested deeper than {MAX_DEPTH}")
            node = self.tree
            for part in path[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[path[-1]] = value
        self._check_size()

    def merge_json(self, text: str | bytes) -> None:
        try:
            body = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise KalturaError("INVALID_PARAMETER", f"the JSON body cannot be read: {str(e)[:200]}") from None
        if not isinstance(body, dict):
            raise KalturaError("INVALID_PARAMETER", "the JSON body must be an object of parameters")
        _check_depth(body, 0)
        self.tree.update(body)
        self._check_size()

    def _check_size(self) -> None:
        if _count(self.tree) > MAX_VALUES:
            raise KalturaError("INVALID_PARAMETER", f"more than {MAX_VALUES} parameter values")

    # -- reading ---------------------------------------------------------------------

    def raw(self, name: str, within: dict[str, Any] | None = None) -> Any:
        """The value of `name` (None when absent, NULL when sent as null)."""
        node = self.tree if within is None else within
        if name in node:
            return node[name]
        if f"{name}__null" in node:
            return NULL
        return None

    def obj(self, name: str, required: bool = False) -> dict[str, Any] | None:
        value = self.raw(name)
        if value is None or value is NULL:
            if required:
                raise missing(name)
            return None
        if not isinstance(value, dict):
            raise KalturaError("INVALID_PARAMETER", f'parameter "{name}" must be an object')
        return value

    def file(self, name: str) -> UploadedFile:
        got = self.files.get(name)
        if got is None:
            raise missing(name)
        return got


def _count(node: Any) -> int:
    if isinstance(node, dict):
        return sum(_count(v) for v in node.values()) + 1
    if isinstance(node, list):
        return sum(_count(v) for v in node) + 1
    return 1


def _check_depth(node: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise KalturaError("INVALID_PARAMETER", f"parameters are nested deeper than {MAX_DEPTH}")
    if isinstance(node, dict):
        for k, v in node.items():
            if len(k) > MAX_KEY_CHARS:
                raise KalturaError("INVALID_PARAMETER", f"a parameter name is longer than {MAX_KEY_CHARS} characters")
            _check_depth(v, depth + 1)
    elif isinstance(node, list):
        for v in node:
            _check_depth(v, depth + 1)
    elif isinstance(node, str) and len(node) > MAX_VALUE_CHARS:
        raise KalturaError("INVALID_PARAMETER", f"a parameter value is longer than {MAX_VALUE_CHARS} characters")


# -- typed values (each takes the raw value and the name to blame) ------------------------


def text(value: Any, name: str, max_chars: int = 4096) -> str | None:
    """A string parameter (None when absent or null)."""
    if value is None or value is NULL:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise KalturaError("INVALID_PARAMETER", f'parameter "{name}" must be a string')
    if len(value) > max_chars:
        raise KalturaError("PROPERTY_VALIDATION_MAX_LENGTH",
                           f'The property "{name}" cannot have more than {max_chars} characters')
    return value


def integer(value: Any, name: str, low: int = -(2**63), high: int = 2**63 - 1) -> int | None:
    """An integer parameter: 5, "5", "5.0" (None when absent, null or empty)."""
    if value is None or value is NULL or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    try:
        if isinstance(value, (int, float)):
            number = int(value)
        elif isinstance(value, str) and len(value) <= 40:
            number = int(float(value)) if re.fullmatch(r"-?\d+\.0*", value.strip()) else int(value.strip())
        else:
            raise ValueError
    except (ValueError, OverflowError):
        raise KalturaError("PROPERTY_VALIDATION_NUMERIC_VALUE", f'The property "{name}" must be numeric') from None
    if not low <= number <= high:
        raise KalturaError("PROPERTY_VALIDATION_MIN_VALUE" if number < low else "PROPERTY_VALIDATION_MAX_VALUE",
                           f'The property "{name}" must be between {low} and {high}')
    return number


def number(value: Any, name: str) -> float | None:
    if value is None or value is NULL or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise KalturaError("PROPERTY_VALIDATION_NUMERIC_VALUE", f'The property "{name}" must be numeric') from None
    if out != out or out in (float("inf"), float("-inf")):
        raise KalturaError("PROPERTY_VALIDATION_NUMERIC_VALUE", f'The property "{name}" must be a finite number')
    return out


def boolean(value: Any, name: str) -> bool | None:
    """True/False, "True"/"False" (what the Python client sends), 1/0, true/false."""
    if value is None or value is NULL or value == "":
        return None
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise KalturaError("INVALID_PARAMETER", f'parameter "{name}" must be true or false')


def items(value: Any, name: str, max_items: int = 1000) -> list[Any]:
    """A list parameter: a JSON list, `{"0": .., "1": ..}` from brackets, or
    `{"-": ""}` (empty)."""
    if value is None or value is NULL:
        return []
    if isinstance(value, dict):
        if set(value) <= {"-"}:
            return []
        if not all(re.fullmatch(r"\d{1,6}", k) for k in value):
            raise KalturaError("INVALID_PARAMETER", f'parameter "{name}" must be a list')
        value = [value[k] for k in sorted(value, key=int)]
    if not isinstance(value, list):
        raise KalturaError("INVALID_PARAMETER", f'parameter "{name}" must be a list')
    if len(value) > max_items:
        raise KalturaError("INVALID_PARAMETER", f'parameter "{name}" has more than {max_items} items')
    return value


def csv_list(value: Any, name: str, max_items: int = 1000) -> list[str]:
    """A Kaltura `...In` filter value: "a,b,c"."""
    raw = text(value, name, 64 * 1024)
    if not raw:
        return []
    out = [v.strip() for v in raw.split(",") if v.strip()]
    if len(out) > max_items:
        raise KalturaError("INVALID_PARAMETER", f'parameter "{name}" has more than {max_items} values')
    return out
