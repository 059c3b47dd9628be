"""The `mediajobs` CLI's media commands (entries, mediainfo, templates,
`worker --media`) against a scripted channel (grpcio-testing): the CLI runs
in a thread, the test thread plays the server, checks each request and
answers it, as in test_cli.py."""
from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import types
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest
from google.protobuf import empty_pb2
from google.rpc import status_pb2

from mediajobs.client import Worker, render
from mediajobs.client.cli import entries as cli  # the entries group: follow_entry (patched), EntryProgress, ...
from mediajobs.client.cli import main
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import resources_pb2 as res
from conftest import start_app
from scripted import fail_unary, ok, rich_status, run_cli, spawn, take

JOB_SERVICE = svc.DESCRIPTOR.services_by_name["JobService"]
MEDIA_SERVICE = msvc.DESCRIPTOR.services_by_name["MediaService"]
Job = res.Job
Entry = mres.Entry
FlavorAsset = mres.FlavorAsset

ENTRY = "01HB00000000000000000ENTRY"
OTHER_ENTRY = "01HB00000000000000000OTHER"
EXTRACT = "01HB000000000000000000EXT1"
OTHER_EXTRACT = "01HB000000000000000000EXT9"
T720 = "01HB000000000000000000T720"
T480 = "01HB000000000000000000T480"
FA720 = "01HB00000000000000000FA720"
FA480 = "01HB00000000000000000FA480"
MI_SRC = "01HB00000000000000000MISRC"
MI720 = "01HB00000000000000000MI720"
MI480 = "01HB00000000000000000MI480"


@pytest.fixture
def fake() -> Any:
    return grpc_testing.channel([JOB_SERVICE, MEDIA_SERVICE], grpc_testing.strict_real_time())


# -- scripted server -------------------------------------------------------------


def take_media(fake: Any, name: str, running: Future[Any]) -> tuple[Any, Any]:
    return take("unary_unary", fake, MEDIA_SERVICE, name, running)


def take_jobs(fake: Any, name: str, running: Future[Any]) -> tuple[Any, Any]:
    return take("unary_unary", fake, JOB_SERVICE, name, running)


def take_watch(fake: Any, running: Future[Any]) -> tuple[Any, Any]:
    return take("unary_stream", fake, JOB_SERVICE, "WatchJobs", running)


def fail(rpc: Any, code: grpc.StatusCode, message: str, reason: str,
         violations: list[tuple[str, str]] | None = None) -> None:
    fail_unary(rpc, rich_status(code, message, reason, violations=violations))


# -- resources ---------------------------------------------------------------------


def flavor(fa_id: str, name: str, state: int = FlavorAsset.QUEUED, job_id: str = "", size: int = 0) -> mres.FlavorAsset:
    fa = FlavorAsset(id=fa_id, output_name=name, state=state, job_id=job_id,  # type: ignore[arg-type]
                     output=mres.OutputSpec(name=name, container="mp4", video_codec="h264"))
    if state == FlavorAsset.READY:
        fa.path = f"entries/{ENTRY}/{name}.mp4"
        fa.size_bytes = size
    return fa


def entry(state: int = Entry.PENDING, flavors: list[mres.FlavorAsset] | None = None,
          job_ids: list[str] | None = None, took_ms: int = 0, **kw: Any) -> mres.Entry:
    e = Entry(id=kw.pop("id", ENTRY), name=kw.pop("name", "clip.mov"), state=state,  # type: ignore[arg-type]
              source_uri="incoming/clip.mov", template_id="mp4-h264-720p", creator="anonymous",
              job_ids=job_ids if job_ids is not None else [EXTRACT], flavor_assets=flavors or [], **kw)
    e.create_time.FromMilliseconds(1_800_000_000_000)
    e.update_time.FromMilliseconds(1_800_000_000_000 + took_ms)
    return e


def entry_job(job_id: str, job_type: str, state: int = Job.PENDING, progress: int = 0,
              entry_id: str = ENTRY, revision: int = 0, flavor_asset: str = "") -> res.Job:
    """A processing job with the server's metadata: entry_id, and entry_step
    `extract` or `flavor:<flavor asset id>` (left out when no flavor_asset is
    given for a TRANSCODE job, to test placing it by the entry instead)."""
    metadata = {"entry_id": entry_id}
    if job_type == "EXTRACT_MEDIA":
        metadata["entry_step"] = "extract"
    elif flavor_asset:
        metadata["entry_step"] = f"flavor:{flavor_asset}"
    return Job(id=job_id, type=job_type, state=state, progress=progress, revision=revision,  # type: ignore[arg-type]
               metadata=metadata)


def event(rev: int, job: res.Job, etype: int = res.JobEvent.UPDATED) -> svc.WatchJobsResponse:
    j = Job.FromString(job.SerializeToString())
    j.revision = rev
    return svc.WatchJobsResponse(revision=rev, events=[res.JobEvent(revision=rev, type=etype, job=j)])  # type: ignore[arg-type]


def bookmark(rev: int) -> svc.WatchJobsResponse:
    return svc.WatchJobsResponse(revision=rev, progress=svc.WatchProgress())


def start_add(fake: Any, *argv: str, created: mres.Entry, extract_revision: int) -> tuple[Future[int], Any, Any]:
    """Run `entries add ARGV`, answer CreateEntry with `created` and GetJob of
    its extraction; returns (run, CreateEntry request, WatchJobs rpc)."""
    run = run_cli(fake, "entries", "add", *argv)
    create_req, rpc = take_media(fake, "CreateEntry", run)
    ok(rpc, created)
    req, rpc = take_jobs(fake, "GetJob", run)
    assert req.id == EXTRACT, "the extraction job (the entry's first) gives the watch's start"
    ok(rpc, entry_job(EXTRACT, "EXTRACT_MEDIA", revision=extract_revision))
    req, watch = take_watch(fake, run)
    assert req.start_revision == extract_revision, "the watch starts at the extraction job's revision"
    assert list(req.types) == ["EXTRACT_MEDIA", "TRANSCODE"]
    assert not req.job_ids and not req.send_initial_snapshot
    return run, create_req, watch


def answer_get_entry(fake: Any, run: Future[int], response: mres.Entry) -> None:
    req, rpc = take_media(fake, "GetEntry", run)
    assert req.id == ENTRY
    ok(rpc, response)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- entries add -----------------------------------------------------------------------


def test_entries_add_json_follows_one_watch_to_ready(fake, capsys, tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "media").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    queued = [flavor(FA720, "720p"), flavor(FA480, "480p")]
    run, req, watch = start_add(
        fake, str(tmp_path / "media" / "clip.mov"), "--template", "web", "--tag", "launch", "--tag", "2024",
        "--reference-id", "cms-1", "--priority", "high", "--json",
        created=entry(flavors=queued), extract_revision=40)
    assert req.entry.source_uri == "file://" + os.path.join(os.getcwd(), "media", "clip.mov"), \
        "an absolute path goes as a file:// URL, the symlinked directory kept as given"
    assert (req.entry.name, req.entry.template_id, req.entry.reference_id) == ("clip.mov", "web", "cms-1")
    assert list(req.entry.tags) == ["launch", "2024"]
    assert req.priority == Job.HIGH

    watch.send_response(event(40, entry_job(EXTRACT, "EXTRACT_MEDIA"), res.JobEvent.CREATED))
    watch.send_response(event(41, entry_job(OTHER_EXTRACT, "EXTRACT_MEDIA", Job.RUNNING, 90, OTHER_ENTRY)))
    watch.send_response(event(42, entry_job(EXTRACT, "EXTRACT_MEDIA", Job.RUNNING, 60)))
    watch.send_response(event(43, entry_job(EXTRACT, "EXTRACT_MEDIA", Job.SUCCEEDED, 100)))
    transcoding = [flavor(FA720, "720p", job_id=T720), flavor(FA480, "480p", job_id=T480)]
    answer_get_entry(fake, run, entry(Entry.PROCESSING, transcoding, [EXTRACT, T720, T480]))
    watch.send_response(event(44, entry_job(T720, "TRANSCODE", flavor_asset=FA720), res.JobEvent.CREATED))
    watch.send_response(event(45, entry_job(T720, "TRANSCODE", Job.RUNNING, 50, flavor_asset=FA720)))
    watch.send_response(event(46, entry_job(T480, "TRANSCODE", Job.RUNNING, 30, flavor_asset=FA480)))
    watch.send_response(event(47, entry_job(T720, "TRANSCODE", Job.SUCCEEDED, 100, flavor_asset=FA720)))
    answer_get_entry(fake, run, entry(Entry.PROCESSING, [flavor(FA720, "720p", FlavorAsset.READY, T720, 2_000_000),
                                                         flavor(FA480, "480p", job_id=T480)], [EXTRACT, T720, T480]))
    watch.send_response(event(48, entry_job(T480, "TRANSCODE", Job.SUCCEEDED, 100, flavor_asset=FA480)))
    answer_get_entry(fake, run, entry(
        Entry.READY, [flavor(FA720, "720p", FlavorAsset.READY, T720, 2_000_000),
                      flavor(FA480, "480p", FlavorAsset.READY, T480, 900_000)],
        [EXTRACT, T720, T480], took_ms=8_500, duration_ms=12_345))
    assert run.result(timeout=5) == 0

    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    *progress, final = lines
    assert all(p["entry_id"] == ENTRY for p in progress)
    assert OTHER_EXTRACT not in {p.get("job_id") for p in progress}, "other entries' jobs are left out"
    assert [(p["state"], p["progress"], p.get("step"), p.get("job_state")) for p in progress] == [
        ("PENDING", 0, "EXTRACT_MEDIA", "PENDING"),
        ("PROCESSING", 20, "EXTRACT_MEDIA", "RUNNING"),       # (60 + 0 + 0) / 3
        ("PROCESSING", 33, "EXTRACT_MEDIA", "SUCCEEDED"),     # (100 + 0 + 0) / 3
        ("PROCESSING", 33, "TRANSCODE 720p", "PENDING"),
        ("PROCESSING", 50, "TRANSCODE 720p", "RUNNING"),      # (100 + 50 + 0) / 3
        ("PROCESSING", 60, "TRANSCODE 480p", "RUNNING"),      # (100 + 50 + 30) / 3
        ("PROCESSING", 76, "TRANSCODE 720p", "SUCCEEDED"),    # (100 + 100 + 30) / 3
        ("PROCESSING", 100, "TRANSCODE 480p", "SUCCEEDED"),
        ("READY", 100, None, None),
    ]
    assert progress[4]["job_id"] == T720 and progress[5]["job_id"] == T480
    assert (final["id"], final["state"]) == (ENTRY, "READY")
    assert [(fa["output_name"], fa["state"], fa["size_bytes"]) for fa in final["flavor_assets"]] == [
        ("720p", "READY", 2_000_000), ("480p", "READY", 900_000)]


def test_entries_add_text_rereads_for_new_transcodes_and_idle_bookmarks(fake, capsys):
    run, req, watch = start_add(fake, "/srv/media/incoming/clip.mov", "--name", "Launch clip",
                                created=entry(flavors=[flavor(FA720, "720p")]), extract_revision=7)
    assert req.entry.source_uri == "file:///srv/media/incoming/clip.mov"
    assert req.entry.name == "Launch clip"
    watch.send_response(event(7, entry_job(EXTRACT, "EXTRACT_MEDIA", Job.RUNNING, 40)))
    watch.send_response(event(8, entry_job(EXTRACT, "EXTRACT_MEDIA", Job.SUCCEEDED, 100)))
    # The entry read right after the extraction does not name the TRANSCODE job yet ...
    answer_get_entry(fake, run, entry(Entry.PROCESSING, [flavor(FA720, "720p")]))
    # ... so when that job shows up the entry is read again (once).
    watch.send_response(event(9, entry_job(T720, "TRANSCODE"), res.JobEvent.CREATED))
    answer_get_entry(fake, run, entry(Entry.PROCESSING, [flavor(FA720, "720p", job_id=T720)], [EXTRACT, T720]))
    watch.send_response(event(10, entry_job(T720, "TRANSCODE", Job.RUNNING, 50)))
    watch.send_response(bookmark(10))  # an idle stream: read the entry as a safety net
    answer_get_entry(fake, run, entry(Entry.PROCESSING, [flavor(FA720, "720p", job_id=T720)], [EXTRACT, T720]))
    watch.send_response(event(11, entry_job(T720, "TRANSCODE", Job.SUCCEEDED, 100)))
    answer_get_entry(fake, run, entry(Entry.READY, [flavor(FA720, "720p", FlavorAsset.READY, T720, 1_258_291)],
                                      [EXTRACT, T720], took_ms=8_500, duration_ms=12_345, name="Launch clip"))
    assert run.result(timeout=5) == 0
    cap = capsys.readouterr()
    err = cap.err.splitlines()
    assert f"created entry {ENTRY}" in err[0] and "Ctrl-C" in err[0]
    assert f"entry {ENTRY}: PROCESSING 20% EXTRACT_MEDIA RUNNING (job {EXTRACT})" in err
    assert f"entry {ENTRY}: PROCESSING 75% TRANSCODE 720p RUNNING (job {T720})" in err
    assert f"entry {ENTRY}: READY 100%" in err
    assert "\r" not in cap.err, "no bar when stderr is not a terminal"
    out = cap.out.splitlines()
    assert out[0] == f"entry {ENTRY} READY after 8.5 s"
    assert ["name:", "Launch", "clip"] in [ln.split() for ln in out]
    assert ["duration:", "12.345", "s"] in [ln.split() for ln in out]
    assert out[-2].split() == ["NAME", "STATE", "SIZE", "PATH", "JOB", "ID"]
    assert out[-1].split() == ["720p", "READY", "1.2", "MiB", f"entries/{ENTRY}/720p.mp4", T720, FA720]


def test_entries_add_draws_a_bar_on_a_terminal(fake, capsys, monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    run, _req, watch = start_add(fake, "/srv/media/a.mov", created=entry(flavors=[flavor(FA720, "720p")]),
                                 extract_revision=3)
    watch.send_response(event(3, entry_job(EXTRACT, "EXTRACT_MEDIA", Job.RUNNING, 50)))
    watch.send_response(bookmark(3))
    answer_get_entry(fake, run, entry(Entry.READY, [flavor(FA720, "720p", FlavorAsset.READY, T720, 10)],
                                      took_ms=1_000))
    assert run.result(timeout=5) == 0
    text = tty.getvalue()
    bars = [chunk.split("\n")[0] for chunk in text.split("\r")[1:]]
    assert [b.split()[1] for b in bars] == ["0%", "25%", "100%"]
    assert bars[1].startswith("[######") and "EXTRACT_MEDIA RUNNING" in bars[1]
    assert text.endswith("\n"), "the bar's line is ended before the summary"
    assert f"entry {ENTRY}: " not in text, "no plain progress lines on a terminal"
    assert capsys.readouterr().out.startswith(f"entry {ENTRY} READY after 1.0 s")


def test_entries_add_error_exits_1_with_the_entry_error(fake, capsys):
    run, _req, watch = start_add(fake, "/srv/media/notes.txt", "--json",
                                 created=entry(flavors=[flavor(FA720, "720p")]), extract_revision=5)
    watch.send_response(event(5, entry_job(EXTRACT, "EXTRACT_MEDIA", Job.RUNNING, 10)))
    watch.send_response(event(6, entry_job(EXTRACT, "EXTRACT_MEDIA", Job.FAILED, 10)))
    message = f"job {EXTRACT} failed: no audio or video stream in incoming/notes.txt"
    answer_get_entry(fake, run, entry(Entry.ERROR, [flavor(FA720, "720p", FlavorAsset.ERROR)],
                                      error=status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                                              message=message)))
    assert run.result(timeout=5) == 1
    cap = capsys.readouterr()
    final = json.loads(cap.out.splitlines()[-1])
    assert (final["id"], final["state"], final["error"]["message"]) == (ENTRY, "ERROR", message)
    assert f"mediajobs: entry {ENTRY} failed: INVALID_ARGUMENT: {message}" in cap.err


@pytest.mark.parametrize("code, reason, message, rc", [
    (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
     "source_uri: /etc/passwd is outside the storage root /srv/media", 2),
    (grpc.StatusCode.PERMISSION_DENIED, "PATH_OUTSIDE_STORAGE_ROOT",
     "source_uri: incoming/link.mov resolves outside the storage root", 1),
    (grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND", "source_uri: incoming/nope.mov does not exist", 1),
])
def test_entries_add_shows_why_the_server_refuses_the_file(fake, capsys, code, reason, message, rc):
    run = run_cli(fake, "entries", "add", "/etc/passwd")
    req, rpc = take_media(fake, "CreateEntry", run)
    assert req.entry.source_uri == "file:///etc/passwd"
    fail(rpc, code, message, reason, violations=[("entry.source_uri", message)])
    assert run.result(timeout=5) == rc, "and nothing is followed"
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.startswith(f"mediajobs: {code.name}: {message}\n")
    assert "under the server's storage root" in cap.err and "file:///etc/passwd" in cap.err


def test_entries_add_no_follow_prints_the_created_entry(fake, capsys):
    run = run_cli(fake, "entries", "add", "/srv/media/clip.mov", "--no-follow", "--json", "--request-id", "r1")
    req, rpc = take_media(fake, "CreateEntry", run)
    assert req.request_id == "r1"
    ok(rpc, entry(flavors=[flavor(FA720, "720p")]))
    assert run.result(timeout=5) == 0, "no GetJob or WatchJobs"
    doc = json.loads(capsys.readouterr().out)
    assert (doc["id"], doc["state"], doc["job_ids"]) == (ENTRY, "PENDING", [EXTRACT])


def test_entries_add_ctrl_c_stops_following_only(fake, capsys, monkeypatch):
    def interrupted(*_a: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "follow_entry", interrupted)
    run = run_cli(fake, "entries", "add", "/srv/media/clip.mov")
    _req, rpc = take_media(fake, "CreateEntry", run)
    ok(rpc, entry())
    assert run.result(timeout=5) == 130
    err = capsys.readouterr().err
    assert f"stopped following entry {ENTRY}; it keeps processing" in err


def test_entry_progress_places_transcodes_by_their_step_and_counts_the_latest_job():
    progress = cli.EntryProgress(entry(Entry.PROCESSING, [flavor(FA720, "720p"), flavor(FA480, "480p")]))
    progress.track(entry_job(EXTRACT, "EXTRACT_MEDIA", Job.SUCCEEDED, 100))
    t720 = entry_job(T720, "TRANSCODE", Job.RUNNING, 40, flavor_asset=FA720)
    assert progress.belongs(t720) and not progress.needs_lookup(t720), "entry_step names its flavor asset"
    progress.track(t720)
    assert (progress.percent, progress.step(t720)) == ((100 + 40 + 0) // 3, "TRANSCODE 720p")
    rerun = entry_job("01HB000000000000000000T721", "TRANSCODE", Job.RUNNING, 10, flavor_asset=FA720)
    progress.track(rerun)
    assert progress.percent == (100 + 10 + 0) // 3, "a re-run (a newer ULID) replaces the job before it"
    progress.track(t720)  # a late event of the older job does not take the step back
    assert progress.percent == (100 + 10 + 0) // 3
    no_step = entry_job(T480, "TRANSCODE", Job.RUNNING, 70)
    assert progress.needs_lookup(no_step) and not progress.needs_lookup(no_step), "re-read the entry once"
    progress.track(no_step)
    assert progress.step(no_step) == "TRANSCODE" and progress.percent == (100 + 10 + 0) // 3
    progress.set_entry(entry(Entry.PROCESSING, [flavor(FA720, "720p"), flavor(FA480, "480p", job_id=T480)]))
    assert progress.step(no_step) == "TRANSCODE 480p" and progress.percent == (100 + 10 + 70) // 3
    assert not progress.belongs(entry_job(OTHER_EXTRACT, "EXTRACT_MEDIA", entry_id=OTHER_ENTRY))
    progress.set_entry(entry(Entry.READY, [flavor(FA720, "720p", FlavorAsset.READY, T720, 1),
                                           flavor(FA480, "480p", FlavorAsset.READY, T480, 1)]))
    assert progress.done and progress.record() == {"entry_id": ENTRY, "state": "READY", "progress": 100}


def test_skipped_flavor_assets_are_not_part_of_the_progress_or_the_count():
    progress = cli.EntryProgress(entry(Entry.PROCESSING, [flavor(FA720, "720p", FlavorAsset.NOT_APPLICABLE),
                                                          flavor(FA480, "480p", job_id=T480)]))
    progress.track(entry_job(EXTRACT, "EXTRACT_MEDIA", Job.SUCCEEDED, 100))
    progress.track(entry_job(T480, "TRANSCODE", Job.RUNNING, 50, flavor_asset=FA480))
    assert progress.percent == (100 + 50) // 2
    done = entry(Entry.READY, [flavor(FA720, "720p", FlavorAsset.NOT_APPLICABLE),
                               flavor(FA480, "480p", FlavorAsset.READY, T480, 1)])
    assert "1/1 ready (1 skipped)" in render.entries_table([done])


def test_plain_progress_lines_do_not_follow_interleaved_progress_reports(capsys):
    display = cli.EntryProgressDisplay(json_lines=False)

    def rec(progress: int, job_id: str, job_state: str = "RUNNING") -> dict[str, Any]:
        return {"entry_id": ENTRY, "state": "PROCESSING", "progress": progress, "step": "TRANSCODE",
                "job_id": job_id, "job_state": job_state}

    for r in (rec(25, T720), rec(25, T480), rec(26, T720), rec(27, T480), rec(28, T720),  # parallel reports
              rec(31, T480), rec(33, T720), rec(40, T720, "SUCCEEDED")):
        display.show(r)
    lines = capsys.readouterr().err.splitlines()
    assert [(ln.split()[3], ln.split()[-1]) for ln in lines] == [
        ("25%", f"{T720})"),   # a job's first RUNNING
        ("25%", f"{T480})"),   # the other job's first RUNNING
        ("31%", f"{T480})"),   # a new 10%
        ("40%", f"{T720})"),   # a new job state (and a new 10%)
    ]


# -- entries get / list / delete ---------------------------------------------------------


def test_entries_list_get_and_delete(fake, capsys):
    run = run_cli(fake, "entries", "list", "--state", "ready,error", "--tag", "launch", "--page-size", "2")
    req, rpc = take_media(fake, "ListEntries", run)
    assert (list(req.states), req.tag, req.page_size) == ([Entry.READY, Entry.ERROR], "launch", 2)
    ok(rpc, msvc.ListEntriesResponse(entries=[
        entry(Entry.READY, [flavor(FA720, "720p", FlavorAsset.READY, T720, 5), flavor(FA480, "480p")],
              duration_ms=62_500),
        entry(Entry.ERROR, id=OTHER_ENTRY, name="broken.mov")], next_page_token="p2"))
    assert run.result(timeout=5) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "TEMPLATE", "FLAVORS", "DURATION", "CREATED"]
    assert lines[1].split() == [ENTRY, "clip.mov", "READY", "mp4-h264-720p", "1/2", "ready", "1:02.500",
                                "2027-01-15T08:00:00Z"]
    assert lines[2].split()[:3] == [OTHER_ENTRY, "broken.mov", "ERROR"]
    assert "--page-token p2" in cap.err

    run = run_cli(fake, "entries", "list", "--all", "--json")
    req, rpc = take_media(fake, "ListEntries", run)
    ok(rpc, msvc.ListEntriesResponse(entries=[entry()], next_page_token="p2"))
    req, rpc = take_media(fake, "ListEntries", run)
    assert req.page_token == "p2"
    ok(rpc, msvc.ListEntriesResponse(entries=[entry(id=OTHER_ENTRY)]))
    assert run.result(timeout=5) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)["entries"]] == [ENTRY, OTHER_ENTRY]

    run = run_cli(fake, "entries", "get", ENTRY)
    req, rpc = take_media(fake, "GetEntry", run)
    assert req.id == ENTRY
    ok(rpc, entry(Entry.READY, [flavor(FA720, "720p", FlavorAsset.READY, T720, 2048)], tags=["a", "b"]))
    assert run.result(timeout=5) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["id:", ENTRY] and ["state:", "READY"] in rows and ["tags:", "a,", "b"] in rows
    assert ["720p", "READY", "2.0", "KiB", f"entries/{ENTRY}/720p.mp4", T720, FA720] in rows

    run = run_cli(fake, "entries", "delete", ENTRY, "--allow-missing")
    req, rpc = take_media(fake, "DeleteEntry", run)
    assert (req.id, req.allow_missing) == (ENTRY, True)
    ok(rpc, empty_pb2.Empty())
    assert run.result(timeout=5) == 0
    assert capsys.readouterr().out == f"deleted entry {ENTRY}\n"


def test_entries_get_not_found_exits_1(fake, capsys):
    run = run_cli(fake, "entries", "get", ENTRY)
    _req, rpc = take_media(fake, "GetEntry", run)
    fail(rpc, grpc.StatusCode.NOT_FOUND, f"entry {ENTRY!r} does not exist", "ENTRY_NOT_FOUND")
    assert run.result(timeout=5) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mediajobs: NOT_FOUND: entry {ENTRY!r} does not exist") and "ENTRY_NOT_FOUND" in err


# -- mediainfo ---------------------------------------------------------------------------


def media_info(mi_id: str, flavor_asset_id: str = "", **kw: Any) -> mres.MediaInfo:
    base: dict[str, Any] = dict(
        container_format="mov,mp4,m4a,3gp,3g2,mj2", container_id="isom", container_duration_ms=12_345,
        container_bit_rate_kbps=1500, video_format="h264", video_codec_id="avc1", video_width=1280,
        video_height=720, video_frame_rate=29.97, video_dar=16 / 9, video_rotation=90,
        scan_type=mres.SCAN_TYPE_PROGRESSIVE, max_gop=250, is_fast_start=True, video_bit_rate_kbps=1300,
        audio_format="aac", audio_codec_id="mp4a", audio_channels=2, audio_sampling_rate=48000,
        audio_bit_rate_kbps=128, file_size_bytes=1_234_567, writing_lib="Lavf61.7.100")
    base.update(kw)
    return mres.MediaInfo(id=mi_id, entry_id=ENTRY, flavor_asset_id=flavor_asset_id, **base)


def test_mediainfo_prints_source_first_then_flavor_assets(fake, capsys):
    run = run_cli(fake, "mediainfo", ENTRY)
    req, rpc = take_media(fake, "GetEntry", run)
    assert req.id == ENTRY
    ok(rpc, entry(Entry.READY, [flavor(FA720, "720p", FlavorAsset.READY, T720, 1),
                                flavor(FA480, "480p", FlavorAsset.READY, T480, 1)]))
    req, rpc = take_media(fake, "ListMediaInfos", run)
    assert (req.entry_id, req.flavor_asset_id, req.page_token) == (ENTRY, "", "")
    ok(rpc, msvc.ListMediaInfosResponse(
        media_infos=[media_info(MI480, FA480, video_width=854, video_height=480, is_fast_start=False),
                     media_info(MI_SRC, video_rotation=0, scan_type=mres.SCAN_TYPE_INTERLACED)],
        next_page_token="p2"))
    req, rpc = take_media(fake, "ListMediaInfos", run)
    assert (req.entry_id, req.page_token) == (ENTRY, "p2"), "every page"
    ok(rpc, msvc.ListMediaInfosResponse(media_infos=[
        media_info(MI720, FA720, audio_format="", audio_channels=0, writing_lib="")]))
    assert run.result(timeout=5) == 0
    blocks = [b.splitlines() for b in capsys.readouterr().out.split("\n\n")]
    assert [b[0] for b in blocks] == [
        f"source incoming/clip.mov  [media info {MI_SRC}]",
        f"flavor asset 720p ({FA720})  [media info {MI720}]",
        f"flavor asset 480p ({FA480})  [media info {MI480}]",
    ], "the source first, then the flavor assets in the entry's order"
    source = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in blocks[0][1:]}
    assert source == {
        "container": "mov,mp4,m4a,3gp,3g2,mj2 (isom)",
        "duration": "12.345 s",
        "bit rate": "1500 kbit/s",
        "video": "h264 (avc1), 1280x720 29.97 fps, 1300 kbit/s",
        "aspect": "DAR 1.778 (16:9), rotation 0",
        "scan type": "interlaced",
        "max GOP": "250 frames",
        "fast start": "yes",
        "audio": "aac (mp4a), 2 ch, 48000 Hz, 128 kbit/s",
        "file size": "1.2 MiB (1234567 bytes)",
        "writing lib": "Lavf61.7.100",
    }
    rows_720 = [ln.split() for ln in blocks[1]]
    assert ["audio:", "none"] in rows_720 and ["writing", "lib:", "-"] in rows_720
    assert ["aspect:", "DAR", "1.778", "(16:9),", "rotation", "90"] in rows_720
    rows_480 = [ln.split() for ln in blocks[2]]
    assert ["fast", "start:", "no"] in rows_480 and ["scan", "type:", "progressive"] in rows_480


def test_mediainfo_json_one_record_per_line_for_a_flavor_asset_by_name(fake, capsys):
    run = run_cli(fake, "mediainfo", ENTRY, "--flavor-asset", "720p", "--json")
    _req, rpc = take_media(fake, "GetEntry", run)
    ok(rpc, entry(Entry.READY, [flavor(FA720, "720p", FlavorAsset.READY, T720, 1)]))
    req, rpc = take_media(fake, "ListMediaInfos", run)
    assert req.flavor_asset_id == FA720, "an output name is sent as its flavor asset's id"
    ok(rpc, msvc.ListMediaInfosResponse(media_infos=[media_info(MI720, FA720), media_info(MI480, FA720)]))
    assert run.result(timeout=5) == 0
    docs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [d["id"] for d in docs] == [MI720, MI480]
    assert docs[0]["flavor_asset_id"] == FA720 and docs[0]["video_width"] == 1280
    assert docs[0]["file_size_bytes"] == 1_234_567, "64-bit integers are JSON numbers"
    assert docs[0]["scan_type"] == "SCAN_TYPE_PROGRESSIVE"


def test_mediainfo_says_when_there_is_none_yet(fake, capsys):
    run = run_cli(fake, "mediainfo", ENTRY, "--flavor-asset", "source")
    _req, rpc = take_media(fake, "GetEntry", run)
    ok(rpc, entry(Entry.PENDING))
    req, rpc = take_media(fake, "ListMediaInfos", run)
    assert req.flavor_asset_id == "source"
    ok(rpc, msvc.ListMediaInfosResponse())
    assert run.result(timeout=5) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and f"no media info for entry {ENTRY} (flavor asset source) yet" in cap.err


# -- templates ---------------------------------------------------------------------------


def template(tid: str, built_in: bool = False) -> mres.JobTemplate:
    return mres.JobTemplate(id=tid, display_name=f"{tid} display", built_in=built_in, outputs=[
        mres.OutputSpec(name="720p", container="mp4", video_codec="h264", height=720, audio_codec="aac"),
        mres.OutputSpec(name="audio", container="mp4", audio_codec="aac", audio_bit_rate_bps=96000)])


def test_templates_list_get_and_create(fake, capsys, tmp_path):
    run = run_cli(fake, "templates", "list")
    _req, rpc = take_media(fake, "ListJobTemplates", run)
    ok(rpc, msvc.ListJobTemplatesResponse(job_templates=[template("mp4-h264-720p", True)], next_page_token="t2"))
    req, rpc = take_media(fake, "ListJobTemplates", run)
    assert req.page_token == "t2"
    ok(rpc, msvc.ListJobTemplatesResponse(job_templates=[template("web-small")]))
    assert run.result(timeout=5) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "BUILT-IN", "OUTPUTS", "DISPLAY", "NAME"]
    assert lines[1].split() == ["mp4-h264-720p", "yes", "720p,audio", "mp4-h264-720p", "display"]
    assert lines[2].split()[:3] == ["web-small", "no", "720p,audio"]

    run = run_cli(fake, "templates", "list", "--json")
    _req, rpc = take_media(fake, "ListJobTemplates", run)
    ok(rpc, msvc.ListJobTemplatesResponse(job_templates=[template("mp4-h264-720p", True)]))
    assert run.result(timeout=5) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["job_templates"][0]["outputs"][1]["audio_bit_rate_bps"] == 96000

    run = run_cli(fake, "templates", "get", "web-small")
    req, rpc = take_media(fake, "GetJobTemplate", run)
    assert req.id == "web-small"
    ok(rpc, template("web-small"))
    assert run.result(timeout=5) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["id:", "web-small"] and ["built_in:", "no"] in rows
    assert ["720p", "mp4", "h264", "height", "720", "source", "crf", "23", "aac", "128000", "veryfast"] in rows
    assert ["audio", "mp4", "-", "-", "-", "-", "aac", "96000", "-"] in rows

    spec = tmp_path / "t.json"
    spec.write_text(json.dumps({"display_name": "Small", "outputs": [
        {"name": "360p", "container": "mp4", "video_codec": "h264", "height": 360, "video_bit_rate_bps": 600000}]}))
    run = run_cli(fake, "templates", "create", "web-small", f"@{spec}", "--json")
    req, rpc = take_media(fake, "CreateJobTemplate", run)
    assert req.job_template_id == "web-small"
    assert req.job_template.display_name == "Small"
    assert (req.job_template.outputs[0].height, req.job_template.outputs[0].video_bit_rate_bps) == (360, 600000)
    ok(rpc, mres.JobTemplate(id="web-small", outputs=req.job_template.outputs))
    assert run.result(timeout=5) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "web-small"


def test_templates_create_refuses_what_is_not_a_template(fake, capsys):
    assert main(["templates", "create", "web-small", '{"outputs": [{"nmae": "x"}]}'], channel=fake) == 2
    assert "not a JobTemplate" in capsys.readouterr().err


# -- worker --media ----------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["worker"], "give MODULE (a module with job handlers), --media (the reference media worker) or --live"),
    (["worker", "handlers", "--media", "--storage-root", "."], "give one of MODULE, --media or --live"),
    (["worker", "--media", "--live"], "give one of MODULE, --media or --live"),
    (["worker", "handlers", "--storage-root", "."], "--storage-root goes with --media or --live"),
    (["worker", "--live", "--storage-root", ".", "--rtmp-listen", "nonsense"], "--rtmp-listen"),
    (["worker", "--media"], "the default storage root {tmp}/share/mediajobs/storage is not a directory: "
                            "start the server on this machine first"),
    (["worker", "--media", "--storage-root", "/nonexistent/media/root"], "not a directory"),
])
def test_worker_needs_exactly_one_of_module_or_media(fake, capsys, monkeypatch, tmp_path, argv, message):
    for name in ("MEDIAJOBS_STORAGE_ROOT", "MEDIAJOBS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))  # no server has made its storage root there
    message = message.format(tmp=tmp_path)
    monkeypatch.setitem(sys.modules, "mediajobs.client.media_worker", None)  # never reached
    assert main(argv, channel=fake) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: mediajobs worker" in err


def test_worker_media_builds_and_runs_the_media_worker(fake, capsys, monkeypatch, tmp_path):
    calls: list[Any] = []
    worker = Worker("ignored:1", concurrency=2)
    worker.register("EXTRACT_MEDIA", lambda ctx: None)
    worker.register("TRANSCODE", lambda ctx: None)
    worker.run_sync = lambda types=None, handle_signals=None: calls.append(("run", list(types or [])))  # type: ignore[method-assign]

    def build_media_worker(target: str, storage_root: Path, *, concurrency: int = 2, **kw: Any) -> Worker:
        calls.append(("build", target, storage_root, concurrency, kw))
        worker.target, worker.concurrency = target, concurrency
        return worker

    monkeypatch.setitem(sys.modules, "mediajobs.client.media_worker",
                        types.SimpleNamespace(build_media_worker=build_media_worker))
    monkeypatch.setenv("MEDIAJOBS_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setattr("logging.basicConfig", lambda **kw: None)
    rc = main(["worker", "--media", "--server", "media.example:7000", "--concurrency", "3", "--types", "TRANSCODE",
               "--lease", "60"], channel=fake)
    assert rc == 0
    assert calls == [("build", "media.example:7000", tmp_path, 3, {}), ("run", ["TRANSCODE"])]
    assert worker.lease_duration == 60, "the options apply as for a MODULE"
    err = capsys.readouterr().err
    assert "running TRANSCODE from media.example:7000 (concurrency 3, lease 60s)" in err


def test_worker_media_reports_an_import_failure(fake, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mediajobs.client.media_worker", None)  # import fails
    assert main(["worker", "--media", "--storage-root", str(tmp_path)], channel=fake) == 1
    err = capsys.readouterr().err
    assert err.startswith("mediajobs: worker: the reference media worker cannot be imported:\n")
    assert "import of mediajobs.client.media_worker halted" in err, "with the traceback"


# -- help --------------------------------------------------------------------------------


def test_help_lists_the_media_commands_with_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("entries", "mediainfo", "templates", "worker"):
        assert command in out
    assert main(["entries", "add", "--help"]) == 0
    out = capsys.readouterr().out
    assert "storage root" in out and "Examples:" in out and "--no-follow" in out and "--json" in out
    assert main(["worker", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--media" in out and "--storage-root" in out and "exactly one of MODULE, --media or --live" in out


# -- cue points ----------------------------------------------------------------------------

CUES = b'<scenes><scene-annotation entryId="E"><sceneStartTime>5</sceneStartTime></scene-annotation></scenes>'


def test_cuepoints_import_reports_refused_items_and_exits_1(fake, capsys, tmp_path):
    good, partial = tmp_path / "good.xml", tmp_path / "partial.xml"
    good.write_bytes(CUES)
    partial.write_bytes(CUES + b"<!-- 2 -->")
    run = run_cli(fake, "cuepoints", "import", str(good), str(partial))
    req, rpc = take_media(fake, "ImportCuePoints", run)
    assert req.xml == CUES, "the file's bytes, unchanged"
    ok(rpc, msvc.ImportCuePointsResponse(cue_points=[mres.CuePoint(id="C1"), mres.CuePoint(id="C2")]))
    req, rpc = take_media(fake, "ImportCuePoints", run)
    ok(rpc, msvc.ImportCuePointsResponse(cue_points=[mres.CuePoint(id="C3")], errors=[
        msvc.CuePointImportError(index=1, line=7, entry_id="01HB0000000000000000NOPE00", message="no such entry")]))
    assert run.result(timeout=5) == 1, "some items were refused"
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{good}: created 2 cue point(s)"
    assert out[1] == f"{partial}: created 1 cue point(s), 1 item(s) refused:"
    assert out[2] == "  item 1, line 7, entry 01HB0000000000000000NOPE00: no such entry"


def test_cuepoints_import_of_a_refused_document_exits_2_naming_the_file(fake, capsys, tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_bytes(b'<!DOCTYPE x [<!ENTITY a "aaaa">]><scenes/>')
    run = run_cli(fake, "cuepoints", "import", str(bomb))
    _req, rpc = take_media(fake, "ImportCuePoints", run)
    fail(rpc, grpc.StatusCode.INVALID_ARGUMENT, "xml: line 1: DTDs are not allowed", "INVALID_ARGUMENT",
         violations=[("xml", "line 1: DTDs are not allowed")])
    assert run.result(timeout=5) == 2
    err = capsys.readouterr().err
    assert f"{bomb}: nothing was imported" in err and "DTDs are not allowed" in err


def test_cuepoints_export_one_document_to_stdout_with_filters(fake, capsysbinary):
    run = run_cli(fake, "cuepoints", "export", "--entry", "E1", "--entry", "E2", "--type", "AD", "--tag", "x",
                  "--from-ms", "1000", "--to-ms", "2000")
    req, rpc = take_media(fake, "ExportCuePoints", run)
    assert list(req.entry_ids) == ["E1", "E2"] and list(req.types) == [mres.CuePoint.AD]
    assert (list(req.tags), req.start_time_from_ms, req.start_time_to_ms, req.page_size) == (["x"], 1000, 2000, 10000)
    ok(rpc, msvc.ExportCuePointsResponse(xml=CUES, count=1))
    assert run.result(timeout=5) == 0
    assert capsysbinary.readouterr().out == CUES


def test_cuepoints_export_needs_a_directory_for_several_pages(fake, capsys, tmp_path):
    run = run_cli(fake, "cuepoints", "export", "--page-size", "1")
    _req, rpc = take_media(fake, "ExportCuePoints", run)
    ok(rpc, msvc.ExportCuePointsResponse(xml=CUES, count=1, next_page_token="p2"))
    assert run.result(timeout=5) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "--output-dir" in cap.err

    run = run_cli(fake, "cuepoints", "export", "--page-size", "1", "--output-dir", str(tmp_path / "pages"))
    for token, nxt in (("", "p2"), ("p2", "")):
        req, rpc = take_media(fake, "ExportCuePoints", run)
        assert req.page_token == token
        ok(rpc, msvc.ExportCuePointsResponse(xml=CUES + token.encode(), count=1, next_page_token=nxt))
    assert run.result(timeout=5) == 0
    assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == ["cuepoints-0001.xml", "cuepoints-0002.xml"]
    assert (tmp_path / "pages" / "cuepoints-0002.xml").read_bytes() == CUES + b"p2"


# -- where the source and the storage root are --------------------------------------------


def test_source_uri_of_a_relative_file_is_relative_to_the_storage_root(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.source_uri_of("incoming/clip.mov") == "incoming/clip.mov", "the server resolves it under its root"
    assert cli.source_uri_of("/srv/media/a b/#1.mov") == "file:///srv/media/a%20b/%231.mov"
    assert cli.source_uri_of("/srv/media/x/../clip.mov") == "file:///srv/media/clip.mov"
    assert cli.source_uri_of("~/media/clip.mov") == (tmp_path / "media" / "clip.mov").as_uri()


@pytest.mark.parametrize("env, expected", [
    ({}, "home/.local/share/mediajobs/storage"),
    ({"XDG_DATA_HOME": "{tmp}/xdg"}, "xdg/mediajobs/storage"),
    ({"XDG_DATA_HOME": "{tmp}/xdg", "MEDIAJOBS_DATA_DIR": "{tmp}/data"}, "data/storage"),
    ({"MEDIAJOBS_DATA_DIR": "{tmp}/data", "MEDIAJOBS_STORAGE_ROOT": "{tmp}/root"}, "root"),
])
def test_the_media_workers_default_storage_root_is_the_servers(tmp_path, env, expected):
    """`worker --media` without --storage-root finds the storage root the
    server uses with the same environment (each computed in a fresh process,
    as `mediajobs-server` and `mediajobs` start)."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("XDG_DATA_HOME", "MEDIAJOBS_DATA_DIR", "MEDIAJOBS_STORAGE_ROOT")}
    environ["HOME"] = str(tmp_path / "home")
    environ.update({name: value.format(tmp=tmp_path) for name, value in env.items()})
    code = ("import logging; logging.basicConfig = lambda **kw: None\n"
            "from mediajobs.server.config import parse_args\n"
            "from mediajobs.client.cli import default_storage_root\n"
            "print(parse_args([]).storage_dir()); print(default_storage_root())")
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    server_root, worker_root = done.stdout.splitlines()
    assert worker_root == server_root == str(tmp_path / expected)


async def test_entries_add_resolves_a_relative_file_under_the_servers_storage_root(tmp_path, monkeypatch, capsys):
    """A real server: `entries add incoming/clip.mov` from a folder that is not
    the storage root registers the file under the root; a missing one is
    refused naming the storage root the server looked in."""
    root = tmp_path / "storage"
    app = await start_app(str(tmp_path / "mediajobs.db"), storage_root=root, lease_sweep_interval_s=3600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (root / "incoming").mkdir(parents=True)
    (root / "incoming" / "clip.mov").write_bytes(b"not a movie; nobody probes it here")

    async def cli_main(*argv: str) -> int:
        return await asyncio.wrap_future(spawn(main, ["--server", f"127.0.0.1:{app.port}", *argv]))

    try:
        assert await cli_main("entries", "add", "incoming/clip.mov", "--no-follow", "--json") == 0
        made = json.loads(capsys.readouterr().out)
        assert (made["source_uri"], made["name"], made["state"]) == ("incoming/clip.mov", "clip.mov", "PENDING")
        assert await cli_main("entries", "add", str(root / "incoming" / "clip.mov"), "--no-follow", "-q") == 0
        assert len(capsys.readouterr().out.strip()) == 26, "an absolute path under the root works too"

        (elsewhere / "incoming").mkdir()
        (elsewhere / "incoming" / "other.mov").write_bytes(b"here, not under the storage root")
        assert await cli_main("entries", "add", "incoming/other.mov", "--no-follow") == 1
        err = capsys.readouterr().err
        assert (f"mediajobs: NOT_FOUND: source 'incoming/other.mov' does not exist under the storage root {root}\n"
                in err)
        assert "it was sent as incoming/other.mov" in err
        assert "incoming/other.mov exists in the current directory" in err, "the hint for a local file"
    finally:
        await app.stop(None)
