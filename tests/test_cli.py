"""The `mediajobs` CLI and the sync client against a scripted channel
(grpcio-testing): the CLI runs in a thread, the test thread plays the server,
checks each request and answers it. At the end, commands whose point is the
server's answer (jobs wait, -q, --template) against a real server."""
from __future__ import annotations

import asyncio
import importlib.metadata
import json
import queue
import re
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.rpc import status_pb2

from mediajobs.client import Backoff, MediaJobsClient, MediaJobsError, RetryInfo, RevisionCompactedError
from mediajobs.client.cli import main
from mediajobs.server.app import App
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc
from conftest import start_app
from scripted import fail_stream, fail_unary, ok, rich_status, run_cli, spawn, take

SERVICE = svc.DESCRIPTOR.services_by_name["JobService"]
Job = res.Job
ID1 = "01HA255YE6H6DEETJ5M6595ZDA"
ID2 = "01HA255YE6H6DEETJ5M6595ZDB"
FAST = Backoff(initial=0.001, maximum=0.005)


@pytest.fixture
def fake() -> Any:
    return grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())


def take_unary(fake: Any, name: str, running: Future[Any]) -> tuple[Any, Any]:
    return take("unary_unary", fake, SERVICE, name, running)


def take_stream(fake: Any, name: str, running: Future[Any]) -> tuple[Any, Any]:
    return take("unary_stream", fake, SERVICE, name, running)


def job(id: str = ID1, **kw: Any) -> res.Job:
    j = Job(id=id, type=kw.pop("type", "TRANSCODE"), state=kw.pop("state", Job.PENDING),
            priority=kw.pop("priority", Job.MEDIUM), creator=kw.pop("creator", "anonymous"), project="default",
            max_attempts=3, **kw)
    j.create_time.FromSeconds(1_800_000_000)
    j.update_time.FromSeconds(1_800_000_000)
    return j


def event(rev: int, etype: int, j: res.Job, prev: int = 0) -> svc.WatchJobsResponse:
    j = Job.FromString(j.SerializeToString())
    j.revision = rev
    ev = res.JobEvent(revision=rev, type=etype, job=j, previous_state=prev)  # type: ignore[arg-type]
    ev.event_time.FromSeconds(1_800_000_000 + rev)
    return svc.WatchJobsResponse(revision=rev, events=[ev])


def progress(rev: int, complete: bool = False) -> svc.WatchJobsResponse:
    return svc.WatchJobsResponse(revision=rev, progress=svc.WatchProgress(snapshot_complete=complete))


# -- requests and output ---------------------------------------------------------


def test_create_sends_metadata_params_priority_and_prints_json(fake, capsys):
    run = run_cli(fake, "jobs", "create", "--type", "TRANSCODE", "--priority", "high",
                  "--meta", "asset=a1", "lang=en", "--meta", "note=x=y",
                  "--params", '{"input": "in.mov", "outputs": [{"height": 720}], "fast": true}',
                  "--creator", "alice", "--max-attempts", "5", "--request-id", "req-1", "--json")
    req, rpc = take_unary(fake, "CreateJob", run)
    assert req.type == "TRANSCODE"
    assert req.priority == Job.HIGH
    assert dict(req.metadata) == {"asset": "a1", "lang": "en", "note": "x=y"}
    expected_params = struct_pb2.Struct()
    expected_params.update({"input": "in.mov", "outputs": [{"height": 720}], "fast": True})
    assert req.params == expected_params
    assert (req.creator, req.max_attempts, req.request_id) == ("alice", 5, "req-1")
    ok(rpc, job(priority=Job.HIGH, creator="alice", metadata=dict(req.metadata), params=req.params, revision=7))
    assert run.result(timeout=5) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["id"] == ID1
    assert out["priority"] == "HIGH" and out["state"] == "PENDING"
    assert out["metadata"] == {"asset": "a1", "lang": "en", "note": "x=y"}
    assert out["params"]["outputs"] == [{"height": 720}]
    assert out["revision"] == 7, "int64 fields are JSON numbers"
    assert out["create_time"] == "2027-01-15T08:00:00Z"


def test_create_prints_readable_details(fake, capsys):
    run = run_cli(fake, "jobs", "create", "--type", "THUMBNAIL", "--meta", "asset=a1")
    req, rpc = take_unary(fake, "CreateJob", run)
    assert req.priority == Job.PRIORITY_UNSPECIFIED, "no --priority leaves the server default"
    assert not req.HasField("params")
    ok(rpc, job(type="THUMBNAIL", metadata={"asset": "a1"}, revision=3))
    assert run.result(timeout=5) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id:", ID1]
    assert ["type:", "THUMBNAIL"] in [ln.split() for ln in lines]
    assert ["priority:", "MEDIUM"] in [ln.split() for ln in lines]
    assert ["metadata:", "asset=a1"] in [ln.split() for ln in lines]
    # values start in one column
    assert len({ln.index(ln.split()[1]) for ln in lines if ln.split()}) == 1


def test_global_options_after_the_subcommand_and_read_mask(fake, capsys):
    run = run_cli(fake, "jobs", "get", ID1, "--fields", "id,state", "--metadata", "--json",
                  "--server", "example:1")
    req, rpc = take_unary(fake, "GetJob", run)
    assert req.id == ID1
    assert list(req.read_mask.paths) == ["id", "state"]
    assert req.include_metadata
    ok(rpc, Job(id=ID1, state=Job.RUNNING))
    assert run.result(timeout=5) == 0
    assert json.loads(capsys.readouterr().out) == {"id": ID1, "state": "RUNNING"}


def test_global_options_before_the_subcommand_table_honours_fields(fake, capsys):
    run = run_cli(fake, "--server", "example:1", "jobs", "get", ID1, "--fields", "id,state,progress")
    _req, rpc = take_unary(fake, "GetJob", run)
    ok(rpc, Job(id=ID1, state=Job.RUNNING, progress=40))
    assert run.result(timeout=5) == 0
    assert [ln.split() for ln in capsys.readouterr().out.splitlines()] == [
        ["id:", ID1], ["state:", "RUNNING"], ["progress:", "40%"]]


def test_list_prints_an_aligned_table_and_the_next_page_hint(fake, capsys):
    run = run_cli(fake, "jobs", "list", "--state", "pending,running", "--type", "TRANSCODE",
                  "--meta", "asset=a1", "--order-by", "priority desc", "--created-from", "2027-01-01T00:00:00Z",
                  "--page-size", "2")
    req, rpc = take_unary(fake, "ListJobs", run)
    assert list(req.states) == [Job.PENDING, Job.RUNNING]
    assert list(req.types) == ["TRANSCODE"]
    assert dict(req.metadata) == {"asset": "a1"}
    assert req.order_by == "priority desc"
    assert req.create_time_from == timestamp_pb2.Timestamp(seconds=1798761600)
    assert not req.HasField("create_time_to")
    assert req.page_size == 2
    ok(rpc, svc.ListJobsResponse(
        jobs=[job(ID1, priority=Job.HIGHEST, state=Job.RUNNING, progress=55, creator="alice"),
              job(ID2, type="EXTRACT_MEDIA")],
        next_page_token="tok-2", total_size=5, revision=12))
    assert run.result(timeout=5) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "STATE", "PRIORITY", "PROGRESS", "CREATED", "CREATOR"]
    assert lines[1].split() == [ID1, "TRANSCODE", "RUNNING", "HIGHEST", "55%", "2027-01-15T08:00:00Z", "alice"]
    assert lines[2].split() == [ID2, "EXTRACT_MEDIA", "PENDING", "MEDIUM", "0%", "2027-01-15T08:00:00Z", "anonymous"]
    for col in ("STATE", "PRIORITY", "CREATOR"):
        start = lines[0].index(col)
        assert lines[1][start - 2:start] == "  " and lines[1][start] != " ", f"column {col} is aligned"
        assert lines[2][start - 2:start] == "  " and lines[2][start] != " ", f"column {col} is aligned"
    assert "2 of 5 jobs" in cap.err and "--page-token tok-2" in cap.err


def test_list_all_follows_page_tokens_into_one_json_document(fake, capsys):
    run = run_cli(fake, "--json", "jobs", "list", "--all", "--creator", "alice", "--page-size", "1")
    req, rpc = take_unary(fake, "ListJobs", run)
    assert (req.creator, req.page_token, req.page_size) == ("alice", "", 1)
    ok(rpc, svc.ListJobsResponse(jobs=[job(ID1)], next_page_token="tok-2", total_size=2, revision=30))
    req, rpc = take_unary(fake, "ListJobs", run)
    assert (req.creator, req.page_token) == ("alice", "tok-2"), "same filters, the token of the previous page"
    ok(rpc, svc.ListJobsResponse(jobs=[job(ID2)], total_size=2, revision=31))
    assert run.result(timeout=5) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in doc["jobs"]] == [ID1, ID2]
    assert doc["total_size"] == 2 and doc["revision"] == 30
    assert "next_page_token" not in doc


def test_list_limit_stops_at_the_limit(fake, capsys):
    run = run_cli(fake, "jobs", "list", "--limit", "3", "--page-size", "2", "--json")
    req, rpc = take_unary(fake, "ListJobs", run)
    assert req.page_size == 2
    ok(rpc, svc.ListJobsResponse(jobs=[job(ID1), job(ID2)], next_page_token="t2", total_size=9, revision=4))
    req, rpc = take_unary(fake, "ListJobs", run)
    assert (req.page_size, req.page_token) == (1, "t2"), "the last page asks only for what is missing"
    ok(rpc, svc.ListJobsResponse(jobs=[job("01HA255YE6H6DEETJ5M6595ZDC")], next_page_token="t3", total_size=9))
    assert run.result(timeout=5) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["jobs"]) == 3 and doc["next_page_token"] == "t3"


def test_update_abort_rerun_delete_send_the_right_requests(fake, capsys):
    run = run_cli(fake, "jobs", "update", ID1, "--priority", "LOWEST", "--json")
    req, rpc = take_unary(fake, "UpdateJob", run)
    assert (req.job.id, req.job.priority, list(req.update_mask.paths)) == (ID1, Job.LOWEST, ["priority"])
    ok(rpc, job(priority=Job.LOWEST))
    assert run.result(timeout=5) == 0
    assert json.loads(capsys.readouterr().out)["priority"] == "LOWEST"

    run = run_cli(fake, "jobs", "abort", ID1, "--reason", "wrong source", "--skip-cleanup")
    req, rpc = take_unary(fake, "AbortJob", run)
    assert (req.id, req.reason, req.skip_cleanup) == (ID1, "wrong source", True)
    ok(rpc, job(state=Job.ABORTED, abort_reason="wrong source"))
    assert run.result(timeout=5) == 0
    assert ["abort_reason:", "wrong", "source"] in [ln.split() for ln in capsys.readouterr().out.splitlines()]

    run = run_cli(fake, "jobs", "rerun", ID1, "--priority", "highest")
    req, rpc = take_unary(fake, "RerunJob", run)
    assert (req.id, req.priority) == (ID1, Job.HIGHEST)
    ok(rpc, job(ID2, rerun_of=ID1))
    assert run.result(timeout=5) == 0
    assert ["rerun_of:", ID1] in [ln.split() for ln in capsys.readouterr().out.splitlines()]

    run = run_cli(fake, "jobs", "delete", ID1, ID2, "--allow-missing", "--force")
    req, rpc = take_unary(fake, "DeleteJobs", run)
    assert (list(req.ids), req.allow_missing, req.force) == ([ID1, ID2], True, True)
    ok(rpc, svc.DeleteJobsResponse(deleted_ids=[ID1]))
    assert run.result(timeout=5) == 0
    assert capsys.readouterr().out.splitlines() == ["deleted 1 job", ID1]


def test_types_and_problems_tables(fake, capsys):
    run = run_cli(fake, "jobs", "types")
    _req, rpc = take_unary(fake, "ListJobTypes", run)
    ok(rpc, svc.ListJobTypesResponse(job_types=[
        res.JobType(name="TRANSCODE", description="Decode and encode.", built_in=True),
        res.JobType(name="MY_TYPE", description="Custom job type in use.")]))
    assert run.result(timeout=5) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "BUILT-IN", "DESCRIPTION"]
    assert lines[1].split()[:2] == ["TRANSCODE", "yes"] and lines[2].split()[:2] == ["MY_TYPE", "no"]

    run = run_cli(fake, "jobs", "problems", "--job", ID1, "--include-resolved", "--json")
    req, rpc = take_unary(fake, "ListJobProblems", run)
    assert (req.job_id, req.include_resolved) == (ID1, True)
    ok(rpc, svc.ListJobProblemsResponse(
        problems=[res.JobProblem(id=ID2, job_id=ID1, reason="LEASE_EXPIRED", message="no heartbeat")],
        next_page_token="p2"))
    req, rpc = take_unary(fake, "ListJobProblems", run)
    assert req.page_token == "p2", "every page is fetched"
    ok(rpc, svc.ListJobProblemsResponse())
    assert run.result(timeout=5) == 0
    assert json.loads(capsys.readouterr().out)["problems"][0]["reason"] == "LEASE_EXPIRED"


# -- errors ------------------------------------------------------------------------------


def test_invalid_argument_prints_field_violations_and_exits_2(fake, capsys):
    run = run_cli(fake, "jobs", "create", "--type", "bad type!")
    _req, rpc = take_unary(fake, "CreateJob", run)
    fail_unary(rpc, rich_status(
        grpc.StatusCode.INVALID_ARGUMENT, "type: 'bad type!' is not a job type", "INVALID_ARGUMENT",
        violations=[("type", "'bad type!' is not a job type"), ("metadata['']", "keys must be 1-128 characters")]))
    assert run.result(timeout=5) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    err = cap.err.splitlines()
    assert err[0] == "mediajobs: INVALID_ARGUMENT: type: 'bad type!' is not a job type"
    assert "  field type: 'bad type!' is not a job type" in err
    assert "  field metadata['']: keys must be 1-128 characters" in err


def test_not_found_prints_the_reason_and_exits_1(fake, capsys):
    run = run_cli(fake, "jobs", "abort", ID1)
    _req, rpc = take_unary(fake, "AbortJob", run)
    fail_unary(rpc, rich_status(grpc.StatusCode.NOT_FOUND, f"job {ID1!r} does not exist", "JOB_NOT_FOUND",
                                metadata={"job_id": ID1}))
    assert run.result(timeout=5) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mediajobs: NOT_FOUND: job {ID1!r} does not exist\n")
    assert f"reason: JOB_NOT_FOUND (job_id={ID1})" in err


def test_unavailable_names_the_server_and_how_to_start_it(fake, capsys, monkeypatch):
    monkeypatch.setenv("MEDIAJOBS_SERVER", "jobs.example:6000")
    run = run_cli(fake, "jobs", "types")
    _req, rpc = take_unary(fake, "ListJobTypes", run)
    rpc.terminate(None, (), grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    assert run.result(timeout=5) == 1
    err = capsys.readouterr().err
    assert "the server at jobs.example:6000 is not reachable" in err
    assert "mediajobs-server" in err and "scripts/serve" in err


@pytest.mark.parametrize("argv, message", [
    (["jobs", "create", "--type", "T", "--params", "[1, 2]"], "must be a JSON object"),
    (["jobs", "create", "--type", "T", "--params", "{nope"], "not valid JSON"),
    (["jobs", "create", "--type", "T", "--priority", "URGENT"], "unknown priority 'URGENT'"),
    (["jobs", "create", "--type", "T", "--meta", "novalue"], "'novalue' is not KEY=VALUE"),
    (["jobs", "list", "--state", "DONE"], "unknown state 'DONE'"),
    (["jobs", "list", "--created-from", "yesterday"], "not an ISO 8601 time"),
    (["jobs", "watch", "--snapshot", "--from-revision", "3"], "--snapshot cannot be combined"),
    (["jobs"], "required"),
])
def test_usage_errors_exit_2_without_calling_the_server(fake, capsys, argv, message):
    assert main(argv, channel=fake) == 2
    assert message in capsys.readouterr().err


def test_help_describes_every_action(capsys):
    assert main(["jobs", "--help"]) == 0
    out = capsys.readouterr().out
    for action in ("create", "get", "list", "update", "abort", "rerun", "delete", "types", "problems", "watch"):
        assert action in out
    assert main(["jobs", "watch", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--count" in out and "resumes by itself" in out and "--from-revision" in out


# -- watch ------------------------------------------------------------------------------
#
# grpc_testing drops the responses a client has not read yet when the server
# side terminates the call, unlike a real channel. So before each scripted
# disconnect the test waits until the client has taken the messages sent so
# far: the CLI's output lines and the client's messages go through queues.


class LineQueue:
    """A stdout replacement that hands every complete line to a queue."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        for ln in done:
            self.lines.put(ln)
        return len(text)

    def flush(self) -> None:
        pass

    def get(self, timeout: float = 5.0) -> str:
        return self.lines.get(timeout=timeout)

    def rest(self) -> list[str]:
        out = []
        while not self.lines.empty():
            out.append(self.lines.get_nowait())
        return out


class Consumer:
    """Iterates a watch in a thread; every message (or the error) lands in a queue."""

    def __init__(self, it: Any) -> None:
        self.q: queue.Queue[Any] = queue.Queue()
        self.done: Future[None] = Future()

        def run() -> None:
            try:
                for m in it:
                    self.q.put(m)
                self.done.set_result(None)
            except BaseException as e:  # noqa: BLE001
                self.done.set_exception(e)

        threading.Thread(target=run, daemon=True).start()

    def get(self, timeout: float = 5.0) -> Any:
        return self.q.get(timeout=timeout)


def test_watch_resumes_from_the_last_revision_without_gaps_or_repeats(fake, capsys, monkeypatch):
    out = LineQueue()
    monkeypatch.setattr("sys.stdout", out)
    run = run_cli(fake, "jobs", "watch", "--from-revision", "5", "--type", "TRANSCODE", "--json",
                  "--progress", "--count", "4")
    req, rpc = take_stream(fake, "WatchJobs", run)
    assert (req.start_revision, list(req.types), req.send_initial_snapshot) == (5, ["TRANSCODE"], False)
    rpc.send_response(event(5, res.JobEvent.CREATED, job(ID1)))
    first = json.loads(out.get())
    assert (first["revision"], first["type"], first["job_id"]) == (5, "CREATED", ID1)
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "Socket closed")

    req, rpc = take_stream(fake, "WatchJobs", run)
    assert req.start_revision == 6, "resumes at the last revision + 1"
    assert list(req.types) == ["TRANSCODE"], "with the same filter"
    rpc.send_response(event(5, res.JobEvent.CREATED, job(ID1)))  # a repeat is never shown
    rpc.send_response(event(10, res.JobEvent.UPDATED, job(ID1, state=Job.RUNNING, progress=10), Job.PENDING))
    second = json.loads(out.get())
    assert second["revision"] == 10, "the repeated revision 5 was skipped"
    rpc.terminate((), grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")

    req, rpc = take_stream(fake, "WatchJobs", run)
    assert req.start_revision == 11
    rpc.terminate((), grpc.StatusCode.CANCELLED, "Cancelled")  # before any message: same revision again

    req, rpc = take_stream(fake, "WatchJobs", run)
    assert req.start_revision == 11
    rpc.send_response(progress(14))  # a bookmark moves the cursor
    assert json.loads(out.get()) == {"revision": 14, "type": "PROGRESS", "snapshot_complete": False}
    rpc.terminate((), grpc.StatusCode.RESOURCE_EXHAUSTED, "too many streams")

    req, rpc = take_stream(fake, "WatchJobs", run)
    assert req.start_revision == 15
    rpc.send_response(event(15, res.JobEvent.CREATED, job(ID2)))
    rpc.send_response(event(16, res.JobEvent.DELETED, job(ID2)))
    assert run.result(timeout=5) == 0
    lines = [first, second] + [json.loads(ln) for ln in out.rest()]
    assert [(ln["revision"], ln["type"], ln["job_id"]) for ln in lines if ln["type"] != "PROGRESS"] == [
        (5, "CREATED", ID1), (10, "UPDATED", ID1), (15, "CREATED", ID2), (16, "DELETED", ID2)]
    assert second["previous_state"] == "PENDING" and second["job"]["state"] == "RUNNING"
    assert second["job"]["revision"] == 10
    err = capsys.readouterr().err
    assert "reconnecting" in err and "from revision 6" in err and "resumed" in err


def test_watch_json_leaves_out_progress_unless_asked(fake, monkeypatch):
    out = LineQueue()
    monkeypatch.setattr("sys.stdout", out)
    run = run_cli(fake, "jobs", "watch", "--from-revision", "1", "--json", "--count", "1")
    _req, rpc = take_stream(fake, "WatchJobs", run)
    rpc.send_response(progress(3))
    rpc.send_response(event(4, res.JobEvent.CREATED, job(ID1)))
    assert run.result(timeout=5) == 0
    assert [json.loads(ln)["revision"] for ln in out.rest()] == [4]


def test_watch_readable_lines_and_progress(fake, capsys):
    run = run_cli(fake, "jobs", "watch", "--from-revision", "1", "--progress", "--count", "2")
    _req, rpc = take_stream(fake, "WatchJobs", run)
    rpc.send_response(event(1, res.JobEvent.CREATED, job(ID1)))
    rpc.send_response(progress(3))
    rpc.send_response(event(4, res.JobEvent.UPDATED, job(ID1, state=Job.RUNNING, progress=25), Job.PENDING))
    assert run.result(timeout=5) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["REVISION", "TIME", "JOB", "EVENT", "TYPE", "STATE", "PROGRESS"]
    assert lines[1].split() == ["1", "2027-01-15T08:00:01.000Z", ID1, "CREATED", "TRANSCODE", "PENDING", "0%"]
    assert lines[2].split()[0] == "3" and "progress" in lines[2]
    assert lines[3].split() == ["4", "2027-01-15T08:00:04.000Z", ID1, "UPDATED", "TRANSCODE",
                                "PENDING->RUNNING", "25%"]


@pytest.mark.parametrize("code, reason, rc, text", [
    (grpc.StatusCode.OUT_OF_RANGE, "REVISION_COMPACTED", 1, "oldest_revision=10"),
    (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", 2, "field states: unknown state 9"),
    (grpc.StatusCode.INTERNAL, "INTERNAL", 1, "INTERNAL: internal error"),
])
def test_watch_does_not_retry_what_a_retry_cannot_fix(fake, capsys, code, reason, rc, text):
    run = run_cli(fake, "jobs", "watch", "--from-revision", "2", "--json")
    _req, rpc = take_stream(fake, "WatchJobs", run)
    message = {"OUT_OF_RANGE": "revision 2 is older than the retained history",
               "INVALID_ARGUMENT": "states: unknown state 9",
               # reported by the server itself, so not a transport reset despite the words
               "INTERNAL": "internal error: database connection reset by peer"}[code.name]
    fail_stream(rpc, rich_status(code, message, reason, metadata={"oldest_revision": "10"} if reason ==
                "REVISION_COMPACTED" else None, violations=[("states", "unknown state 9")] if rc == 2 else []))
    # A retry would block on a second WatchJobs call nobody answers.
    assert run.result(timeout=5) == rc
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.startswith(f"mediajobs: {code.name}: ")
    assert text in cap.err


def test_client_watch_from_now_anchors_on_the_first_progress_message(fake):
    client = MediaJobsClient(channel=fake)
    watch = client.watch_jobs(job_ids=[ID1], include_progress=False, backoff=FAST)
    c = Consumer(watch)
    req, rpc = take_stream(fake, "WatchJobs", c.done)
    assert (req.start_revision, list(req.job_ids)) == (0, [ID1])
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "connection reset")  # lost before any message
    req, rpc = take_stream(fake, "WatchJobs", c.done)
    assert req.start_revision == 0, "nothing was promised yet: from now again"
    rpc.send_response(progress(41))  # the server says where "now" is first
    rpc.send_response(event(42, res.JobEvent.CREATED, job(ID1)))
    assert c.get().revision == 42, "progress is left out on request"
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "connection reset")
    req, rpc = take_stream(fake, "WatchJobs", c.done)
    assert req.start_revision == 43, "resumes right after the last event"
    rpc.send_response(event(43, res.JobEvent.UPDATED, job(ID1)))
    assert c.get().revision == 43
    assert watch.next_revision == 44 and watch.reconnects == 2
    watch.cancel()
    assert c.done.result(timeout=5) is None, "a cancelled watch ends"
    assert c.q.empty()


def test_client_splits_batched_events_and_drops_repeats(fake):
    client = MediaJobsClient(channel=fake)
    watch = client.watch_jobs(start_revision=5, include_progress=False, backoff=FAST)
    c = Consumer(watch)
    req, rpc = take_stream(fake, "WatchJobs", c.done)
    assert req.start_revision == 5
    batch = svc.WatchJobsResponse(revision=7, events=[event(r, res.JobEvent.UPDATED, job(ID1)).events[0] for r in (5, 6, 7)])
    rpc.send_response(batch)
    assert [c.get().revision for _ in range(3)] == [5, 6, 7]
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "gone")
    req, rpc = take_stream(fake, "WatchJobs", c.done)
    assert req.start_revision == 8
    # A server that repeats part of a batch: only the new event comes through.
    rpc.send_response(svc.WatchJobsResponse(revision=8, events=[event(r, res.JobEvent.UPDATED, job(ID1)).events[0] for r in (7, 8)]))
    got = c.get()
    assert got.revision == 8 and [e.revision for e in got.events] == [8]
    watch.cancel()
    assert c.done.result(timeout=5) is None


def test_client_snapshot_is_restarted_when_lost_before_it_completes(fake):
    client = MediaJobsClient(channel=fake)
    retries: list[RetryInfo] = []
    watch = client.watch_jobs(send_initial_snapshot=True, backoff=FAST, on_retry=retries.append)
    c = Consumer(watch)
    req, rpc = take_stream(fake, "WatchJobs", c.done)
    assert (req.start_revision, req.send_initial_snapshot) == (0, True)
    rpc.send_response(event(3, res.JobEvent.SNAPSHOT, job(ID1)))
    msgs = [c.get()]
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "gone")
    req, rpc = take_stream(fake, "WatchJobs", c.done)
    assert (req.start_revision, req.send_initial_snapshot) == (0, True), "the snapshot is asked for again"
    rpc.send_response(event(3, res.JobEvent.SNAPSHOT, job(ID1)))
    rpc.send_response(event(7, res.JobEvent.SNAPSHOT, job(ID2)))
    rpc.send_response(progress(9, complete=True))
    rpc.send_response(event(10, res.JobEvent.UPDATED, job(ID2)))
    msgs += [c.get() for _ in range(4)]
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "gone again")
    req, rpc = take_stream(fake, "WatchJobs", c.done)
    assert (req.start_revision, req.send_initial_snapshot) == (11, False), "after the snapshot: resume, no snapshot"
    rpc.send_response(event(3, res.JobEvent.SNAPSHOT, job(ID1)))  # never again after snapshot_complete
    rpc.send_response(event(11, res.JobEvent.CREATED, job(ID1)))
    msgs.append(c.get())
    assert [(m.revision, "event" if m.events else "progress") for m in msgs] == [
        (3, "event"), (3, "event"), (7, "event"), (9, "progress"), (10, "event"), (11, "event")]
    assert [(r.attempt, r.next_revision) for r in retries] == [(0, None), (0, 11)], "back-off restarts after data"
    assert all(0 <= r.delay <= FAST.initial for r in retries)
    watch.cancel()
    assert c.done.result(timeout=5) is None


def test_client_raises_typed_errors(fake):
    client = MediaJobsClient(channel=fake)
    run = spawn(client.get_job, ID1)
    _req, rpc = take_unary(fake, "GetJob", run)
    fail_unary(rpc, rich_status(grpc.StatusCode.NOT_FOUND, "no such job", "JOB_NOT_FOUND", metadata={"job_id": ID1}))
    with pytest.raises(MediaJobsError) as ei:
        run.result(timeout=5)
    assert (ei.value.code, ei.value.reason, ei.value.metadata) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND",
                                                                   {"job_id": ID1})
    watch = client.watch_jobs(start_revision=3)
    run = spawn(next, watch)
    _req, rpc = take_stream(fake, "WatchJobs", run)
    fail_stream(rpc, rich_status(grpc.StatusCode.OUT_OF_RANGE, "compacted", "REVISION_COMPACTED",
                                 metadata={"oldest_revision": "8", "start_revision": "3"}))
    with pytest.raises(RevisionCompactedError) as ci:
        run.result(timeout=5)
    assert (ci.value.oldest_revision, ci.value.start_revision) == (8, 3)


def test_backoff_is_exponential_with_full_jitter():
    b = Backoff(initial=0.1, maximum=5.0)
    assert [b.delay(n, rand=lambda: 1.0) for n in range(8)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5])
    assert b.delay(3, rand=lambda: 0.5) == pytest.approx(0.4)
    assert b.delay(10_000, rand=lambda: 1.0) == 5.0


# -- against a real server: --version, -q, --template, jobs wait --------------------------


def test_version_prints_the_installed_distribution_version(capsys) -> None:
    assert main(["--version"]) == 0
    expected = f"mediajobs {importlib.metadata.version('mediajobs')}\n"
    assert capsys.readouterr().out == expected
    script = Path(sys.executable).parent / "mediajobs"  # the console script, as installed
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, expected), done.stderr


class Live:
    """A real server plus the CLI run in a thread (its calls go over a real
    channel to the server on this test's event loop)."""

    def __init__(self, app: App, ch: grpc.aio.Channel) -> None:
        self.target = f"127.0.0.1:{app.port}"
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(ch)

    async def cli(self, *argv: str) -> int:
        # A daemon thread (not asyncio.to_thread): a CLI left waiting by a
        # failed test must not keep the event loop's executor from closing.
        return await asyncio.wrap_future(spawn(main, ["--server", self.target, *argv]))

    async def lease(self, job_type: str) -> wsvc.LeasedJob:
        resp = await self.workers.AcquireJobs(wsvc.AcquireJobsRequest(
            job_types=[job_type], max_jobs=1, lease_duration=duration_pb2.Duration(seconds=30),
            identity="test", no_wait=True))
        assert len(resp.jobs) == 1
        return resp.jobs[0]


@pytest.fixture
async def live(tmp_path: Path) -> Any:
    app = await start_app(str(tmp_path / "mediajobs.db"), storage_root=tmp_path / "storage",
                          lease_sweep_interval_s=3600)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield Live(app, ch)
    finally:
        await app.stop(None)


async def test_create_quiet_prints_only_the_id_and_template_fills_the_outputs(live: Live, capsys) -> None:
    assert await live.cli("jobs", "create", "--type", "TRANSCODE", "--template", "mp4-h264-360p",
                          "--params", '{"source": "incoming/a.mov"}', "-q") == 0
    job_id = capsys.readouterr().out.strip()
    assert len(job_id) == 26 and job_id.isalnum()
    assert await live.cli("jobs", "get", job_id, "--json") == 0
    got = json.loads(capsys.readouterr().out)
    assert got["template_id"] == "mp4-h264-360p"
    assert [o["name"] for o in got["params"]["outputs"]] == ["360p"] and got["params"]["source"] == "incoming/a.mov"
    assert await live.cli("jobs", "rerun", job_id, "-q") == 0
    rerun = capsys.readouterr().out.strip()
    assert len(rerun) == 26 and rerun != job_id


async def test_wait_returns_when_the_job_succeeds_and_prints_its_result(live: Live, capsys) -> None:
    assert await live.cli("jobs", "create", "--type", "CHECKSUM", "-q") == 0
    job_id = capsys.readouterr().out.strip()
    waiting = asyncio.ensure_future(live.cli("jobs", "wait", job_id, "--json", "--timeout", "60"))
    leased = await live.lease("CHECKSUM")
    result = struct_pb2.Struct()
    result.update({"sha256": "abc"})
    await live.workers.CompleteJob(wsvc.CompleteJobRequest(job_id=job_id, lease_token=leased.lease_token,
                                                           result=result))
    async with asyncio.timeout(30):
        assert await waiting == 0
    (done,) = json.loads(capsys.readouterr().out)["jobs"]
    assert (done["id"], done["state"], done["result"]) == (job_id, "SUCCEEDED", {"sha256": "abc"})
    # A job that has already finished: at once, the same answer.
    assert await live.cli("jobs", "wait", job_id) == 0
    assert re.search(r"^state:\s+SUCCEEDED$", capsys.readouterr().out, re.M)


async def test_wait_exits_1_for_a_failed_an_aborted_or_an_unfinished_job(live: Live, capsys) -> None:
    ids = []
    for _ in range(3):
        assert await live.cli("jobs", "create", "--type", "CHECKSUM", "--max-attempts", "1", "-q") == 0
        ids.append(capsys.readouterr().out.strip())
    failing, aborted, pending = ids
    waiting = asyncio.ensure_future(live.cli("jobs", "wait", failing, aborted, "--timeout", "60"))
    leased = await live.lease("CHECKSUM")
    assert leased.job.id == failing
    await live.workers.FailJob(wsvc.FailJobRequest(job_id=failing, lease_token=leased.lease_token,
                                                   error=status_pb2.Status(code=3, message="bad input")))
    assert await live.cli("jobs", "abort", aborted, "--json") == 0
    async with asyncio.timeout(30):
        assert await waiting == 1
    cap = capsys.readouterr()
    assert [ln.split()[-1] for ln in cap.out.splitlines() if ln.startswith("state:")] == ["FAILED", "ABORTED"]
    assert f"mediajobs: job {failing} is FAILED: " in cap.err and "bad input" in cap.err
    assert f"mediajobs: job {aborted} is ABORTED" in cap.err
    assert await live.cli("jobs", "wait", pending, "--timeout", "0.3") == 1
    assert f"not finished: {pending}" in capsys.readouterr().err
    assert await live.cli("jobs", "wait", "01HA255YE6H6DEETJ5M6595ZDX") == 1
    assert "NOT_FOUND" in capsys.readouterr().err
