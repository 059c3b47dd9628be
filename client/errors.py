"""Client-side errors: a failed call with its rich status unpacked.

The server attaches a google.rpc.Status to every error, with an ErrorInfo
(domain "mediajobs", an UPPER_SNAKE reason), a BadRequest for bad input and
a PreconditionFailure for state conflicts. `MediaJobsError` carries all of it
so callers never parse status protos themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(eq=False)
class MediaJobsError(Exception):
    """A failed mediajobs call.

    `code` is the gRPC status code, `message` its text; `reason`, `domain` and
    `metadata` come from the ErrorInfo detail (empty when the failure did not
    come from the mediajobs server, e.g. UNAVAILABLE); `field_violations` are
    the (field, description) pairs of a BadRequest detail and
    `precondition_violations` the (type, subject, description) triples of a
    PreconditionFailure detail.
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    precondition_violations: list[tuple[str, str, str]] = field(default_factory=list)
    has_rich_status: bool = False

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "MediaJobsError":
        """Unpack a grpc.RpcError (which is also a grpc.Call) into the most
        specific MediaJobsError subclass."""
        code = _call_attr(err, "code") or grpc.StatusCode.UNKNOWN
        message = _call_attr(err, "details") or ""
        kw: dict = {}
        st = None
        try:
            st = rpc_status.from_call(err)  # type: ignore[arg-type]
        except (ValueError, AttributeError, NotImplementedError):
            st = None  # inconsistent or missing status details: use code/details only
        if st is not None:
            kw["has_rich_status"] = True
            kw["field_violations"] = []
            kw["precondition_violations"] = []
            for any_detail in st.details:
                if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    any_detail.Unpack(info)
                    kw["reason"], kw["domain"], kw["metadata"] = info.reason, info.domain, dict(info.metadata)
                elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    br = error_details_pb2.BadRequest()
                    any_detail.Unpack(br)
                    kw["field_violations"] += [(v.field, v.description) for v in br.field_violations]
                elif any_detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                    pf = error_details_pb2.PreconditionFailure()
                    any_detail.Unpack(pf)
                    kw["precondition_violations"] += [(v.type, v.subject, v.description) for v in pf.violations]
        if code == grpc.StatusCode.OUT_OF_RANGE and kw.get("reason") == "REVISION_COMPACTED":
            return RevisionCompactedError(code, message, **kw)
        return cls(code, message, **kw)


class RevisionCompactedError(MediaJobsError):
    """WatchJobs cannot resume: the requested revision has been compacted away.

    Re-list with ListJobs (its `revision` + 1 is a gap-free watch start) and
    watch again. `oldest_revision` is the oldest revision still available.
    """

    @property
    def oldest_revision(self) -> int:
        try:
            return int(self.metadata.get("oldest_revision", "0"))
        except ValueError:
            return 0

    @property
    def start_revision(self) -> int:
        try:
            return int(self.metadata.get("start_revision", "0"))
        except ValueError:
            return 0


def _call_attr(err: grpc.RpcError, name: str):  # type: ignore[no-untyped-def]
    fn = getattr(err, name, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a half-implemented Call (tests, interceptors)
        return None
