"""Resource ids: ULIDs (26 characters of Crockford base32, sortable by
creation time), monotonic across the whole server process.

python-ulid's `str(ULID())` costs about 3 microseconds an id, almost all
of it its pure-Python base32 encoder. A bulk upload makes three ids per
line (entry, flavor asset, job), so the server takes ids a block at a
time here instead: one `os.urandom` and one base32 encoding for up to
1,024 ids, about 0.2 microseconds an id. The
ids are the ULID specification's monotonic ones: within one millisecond
(or when the clock steps back) the next id is the last one plus one, so
ids sort in the order they were handed out, as python-ulid's default
generator does. `ulid.ULID.from_str` reads them back unchanged (the
tests check both ways).
"""
from __future__ import annotations

import base64
import os
import threading
import time
from typing import Callable

# RFC 4648 base32 -> Crockford base32 (the ULID alphabet), symbol for symbol.
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # every value of 10 bits as two symbols
_RANDOM_BITS = 80
_MAX = (1 << 128) - 1

_lock = threading.Lock()
_last = 0  # the last id handed out, as its 128-bit value


def new_ids(n: int) -> list[str]:
    """`n` new ids, in increasing order, each greater than every id before."""
    global _last
    if n <= 0:
        return []
    ms = time.time_ns() // 1_000_000
    with _lock:
        if (_last >> _RANDOM_BITS) >= ms:
            start = _last + 1  # same millisecond (or the clock stepped back): count on
        else:
            start = (ms << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big")
        if start + n - 1 > _MAX:
            raise OverflowError("ULID space exhausted")
        _last = start + n - 1
    # The last two symbols of an id are its low 10 bits; the 24 before them
    # are shared by up to 1,024 consecutive ids, so each run of them is
    # encoded once and the ids are that prefix plus a pair from a table.
    out: list[str] = []
    v, end = start, start + n
    while v < end:
        stop = min(end, (v | 0x3FF) + 1)
        prefix = _encode(v)[:24]
        out.extend([prefix + _PAIRS[x & 0x3FF] for x in range(v, stop)])
        v = stop
    return out


def _encode(value: int) -> str:
    # 20 bytes (4 zero bytes, then the id's 16) are exactly 32 base32
    # symbols; symbols 6..31 are the id's 26 (the first 2 of its 130 bits
    # are zero, as a ULID's are).
    return base64.b32encode(value.to_bytes(20, "big")).translate(_CROCKFORD).decode("ascii")[6:]


def new_id() -> str:
    return new_ids(1)[0]


class IdBlock:
    """Ids taken `block` at a time: `take()` is one list pop when ids are
    at hand. For code that makes many ids in a row (a bulk upload's batch)."""

    def __init__(self, block: int = 512) -> None:
        self.block = block
        self._ids: list[str] = []

    def take(self) -> str:
        if not self._ids:
            self._ids = new_ids(self.block)
            self._ids.reverse()  # pop() from the end hands them out in order
        return self._ids.pop()


IdSource = Callable[[], str]
