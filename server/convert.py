"""Conversions between protobuf values and what the store keeps.

Times are stored as integer microseconds since the Unix epoch (UTC); 0 means
"not set", which keeps every time column NOT NULL and index-friendly.
"""
from __future__ import annotations

import time

from google.protobuf import timestamp_pb2


def now_us() -> int:
    """The current wall-clock time in microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


def ts_from_us(us: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if us:
        ts.FromMicroseconds(us)
    return ts


def set_ts(ts: timestamp_pb2.Timestamp, us: int) -> None:
    """Set a Timestamp field in place; 0 clears it."""
    if us:
        ts.FromMicroseconds(us)
    else:
        ts.Clear()


def us_from_ts(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000
