"""The bulk-upload runner: applies CSV bulk uploads inside the server.

A runner is a worker like any other, only in-process: it leases BULK_UPLOAD
jobs through the store's lease functions (identity `server/bulk-runner-N`),
so the sweeper recovers an upload whose server died, AbortJob reaches it,
and an external worker could run the same jobs instead (`--bulk-runners 0`).

For each upload it streams the stored file from the resume point, parses
and checks records in a read thread (csv_records; source paths under the
storage root), and hands them to the writer a batch at a time
(store/bulk_uploads.apply_batch): each batch's entries, jobs, results,
counts and resume point commit together, and every batch renews the lease
and notices an abort.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import grpc
from google.rpc import code_pb2, status_pb2

from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import resources_pb2 as res

from ..errors import ServiceError
from ..ids import IdBlock
from ..principal import acting_for
from ..storage import area_root
from ..store import Store, PendingEvent
from ..store import bulk_uploads as store_bulk
from ..store import entries as store_entries
from ..store import leases
from . import csv_records
from .files import csv_options

log = logging.getLogger("mediajobs.bulk")

BulkUpload = bres.BulkUpload
Job = res.Job

# A runner that died (kill -9, power loss) is noticed when its lease runs
# out; every batch renews it, so a live runner never gets near the end.
LEASE_S = 10.0
# Records per writer transaction. Applying a record that adds an entry with a
# source (entry, tag rows, EXTRACT_MEDIA job, its metadata and event, the
# result) holds the writer for about 150 microseconds, so a batch holds it
# for about 25 ms: other clients' writes wait at most that long, and the
# commit (an fsync in strict mode) is shared by 160 records. Records that
# only get a result (validation, errors) are far cheaper.
APPLY_BATCH = 160
VALIDATE_BATCH = 2000
IDLE_POLL_S = 5.0


class BulkRunner:
    def __init__(self, store: Store, storage_root: Path, index: int = 1) -> None:
        self.store = store
        self.storage_root = storage_root
        self.identity = f"server/bulk-runner-{index}"
        self._wake = asyncio.Event()
        self.applied_uploads = 0
        # The upload whose ADD records are being prepared while read (None:
        # validating, or re-running, where the writer prepares them).
        self._prepare: BulkUpload | None = None

    def on_publish(self, events: list[PendingEvent]) -> None:
        """Watch hub listener: a BULK_UPLOAD job became leasable."""
        for ev in events:
            if ev.job_type == store_bulk.JOB_TYPE and ev.state == Job.PENDING:
                self._wake.set()
                return

    async def run_forever(self) -> None:
        while True:
            try:
                got = await self.store.write(
                    lambda tx: leases.acquire(tx, [store_bulk.JOB_TYPE], 1, int(LEASE_S * 1e6), res.LockKey(),
                                              self.identity, all_projects=True), bounded=False)
            except ServiceError as e:
                log.warning("bulk runner cannot lease jobs: %s", e.message)
                got = []
            if not got:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                continue
            leased = got[0]
            with acting_for(leased.job.project):  # every read and write below is the upload's project's
                await self._run(leased)

    async def _run(self, leased: leases.Leased) -> None:
        try:
            await self.process(leased.job, leased.token)
        except asyncio.CancelledError:
            # Shutting down: hand the job back at once for the next start.
            with contextlib.suppress(Exception):
                await self.store.write(lambda tx: leases.release(tx, leased.job.id, leased.token, "", False),
                                       bounded=False)
            raise
        except ServiceError as e:
            log.warning("bulk upload job %s stopped: %s", leased.job.id, e)
            await self._fail(leased.job.id, leased.token, e.to_status(), retryable=e.code.name in (
                "UNAVAILABLE", "RESOURCE_EXHAUSTED"))
        except Exception as e:  # noqa: BLE001 - a bug must not stop the runner
            log.exception("bulk upload job %s failed", leased.job.id)
            await self._fail(leased.job.id, leased.token,
                             status_pb2.Status(code=code_pb2.INTERNAL, message=f"{type(e).__name__}: {e}"[:500]),
                             retryable=True)

    async def _fail(self, job_id: str, token: str, error: status_pb2.Status, retryable: bool) -> None:
        with contextlib.suppress(ServiceError):
            await self.store.write(lambda tx: leases.fail(tx, job_id, token, error, retryable, 0), bounded=False)

    async def process(self, job: Job, token: str) -> None:
        upload_id = job.params.fields["bulk_upload_id"].string_value if "bulk_upload_id" in job.params.fields else ""
        selection_value = int(job.params.fields["selection"].number_value) if "selection" in job.params.fields else 0
        # (Leasing the job made the upload PROCESSING: store/bulk_uploads.on_job_state.)
        upload = await self.store.read_point(store_bulk.load_upload, upload_id)
        if upload.job_id != job.id:  # an older job of a re-run upload: nothing to do
            await self.store.write(lambda tx: leases.complete(tx, job.id, token, None), bounded=False)
            return
        generation = upload.generation
        selection = store_bulk.selection_of(selection_value) if generation > 1 else None
        validate = upload.validate_only
        options = csv_options(upload)
        layout = await self.store.read(
            lambda db, p: csv_records.read_layout(store_bulk.iter_file(db, p, upload_id), options))
        resume = await self.store.read(store_bulk.load_resume, upload_id)
        start = csv_records.Position(resume.byte_offset, resume.line_number, resume.next_index) \
            if generation == 1 and resume.next_index > 0 else layout.data_start

        stopped = ""
        if (upload.error_policy == BulkUpload.VALIDATE_FIRST and not validate and generation == 1
                and start == layout.data_start):
            bad = await self._validate_first(upload, job, token, options, layout)
            if bad:
                stopped = "validate_first_failed"
        if not stopped:
            self._prepare = upload if not validate else None
            try:
                stopped = await self._apply(upload, job, token, options, layout, start, generation, selection,
                                            validate)
            finally:
                self._prepare = None
        await self.store.write(lambda tx: store_bulk.finish_run(tx, upload_id, job.id, token, stopped), bounded=False)
        self.applied_uploads += 1

    def _batches(self, db: Any, project: str, upload_id: str, options: csv_records.CsvOptions,
                 layout: csv_records.Layout, start: csv_records.Position, size: int
                 ) -> Iterator[list[store_bulk.Planned]]:
        """Planned records a batch at a time (run step by step in read threads)."""
        if start == layout.data_start:
            chunks = store_bulk.iter_file(db, project, upload_id)
            records = csv_records.scan_records(chunks, options, layout)
        else:
            chunks = store_bulk.iter_file(db, project, upload_id, start.byte_offset)
            records = csv_records.scan_records(chunks, options, layout, start)
        batch: list[store_bulk.Planned] = []
        # Sources and templates looked up in this batch: a catalogue often
        # names one file or template many times.
        sources: dict[str, str | ServiceError] = {}
        templates: dict[str, Any] = {}
        ids = IdBlock()
        for rec in records:
            batch.append(self._plan(db, project, rec, sources, templates, ids))
            if len(batch) >= size:
                yield batch
                batch = []
                sources, templates = {}, {}
        if batch:
            yield batch

    def _plan(self, db: Any, project: str, rec: csv_records.Record, sources: dict[str, str | ServiceError],
              templates: dict[str, Any], ids: IdBlock) -> store_bulk.Planned:
        """A record made ready for the writer (in a read thread): checked,
        its source resolved, and a record that adds an entry prepared whole
        (ids, flavor assets, job), so the writer mostly writes rows."""
        planned = store_bulk.Planned(rec.index, rec.line_number, rec.line_count, rec.byte_offset, rec.byte_length,
                                     rec.fields, None)
        if rec.error is not None:
            planned.error = ServiceError(grpc.StatusCode.INVALID_ARGUMENT, rec.error.reason, rec.error.message)
            planned.error_column = rec.error.column
            return planned
        f = rec.fields
        if f is not None and f.source:
            found = sources.get(f.source)
            if found is None:
                try:
                    found = store_entries.source_relative_path(
                        area_root(self.storage_root, project, self.store.project), f.source, "source_uri")
                except ServiceError as e:
                    found = e
                sources[f.source] = found
            if isinstance(found, ServiceError):
                planned.error = found
                planned.error_column = "source_uri"
            else:
                planned.source = found
        if f is not None and planned.error is None and self._prepare is not None and f.action == csv_records.ADD:
            try:
                store_bulk.prepare_add(db, project, self.store.clock(), self._prepare, planned, templates,
                                       ids.take)
            except ServiceError as e:
                planned.error = e
                planned.error_column = {"MISSING_VALUE": "name", "TEMPLATE_NOT_FOUND": "template_id"}.get(
                    e.reason, "labels")
        return planned

    async def _next(self, it: Iterator[list[store_bulk.Planned]]) -> list[store_bulk.Planned] | None:
        return await self.store.read(lambda db, p: next(it, None))

    async def _validate_first(self, upload: BulkUpload, job: Job, token: str, options: csv_records.CsvOptions,
                              layout: csv_records.Layout) -> bool:
        """Pass 1 of VALIDATE_FIRST: record the invalid records (only);
        True when there were any (then nothing is created)."""
        it = await self.store.read(lambda db, p: self._batches(db, p, upload.id, options, layout,
                                                               layout.data_start, VALIDATE_BATCH))
        bad_any = False
        while (batch := await self._next(it)) is not None:
            bad = [r for r in batch if r.error is not None]
            if not bad:
                # Nothing to write, but the lease must not run out on a long file.
                await self.store.write(lambda tx: leases.heartbeat(tx, job.id, token, 0, "", None, 0),
                                       bounded=False)
                continue
            bad_any = True
            out = await self.store.write(lambda tx: store_bulk.apply_batch(
                tx, upload.id, job.id, token, bad, None, 1, None, True), bounded=False)
            if out.stop:
                return True
        return bad_any

    async def _apply(self, upload: BulkUpload, job: Job, token: str, options: csv_records.CsvOptions,
                     layout: csv_records.Layout, start: csv_records.Position, generation: int,
                     selection: frozenset[int] | None, validate: bool) -> str:
        size = VALIDATE_BATCH if validate else APPLY_BATCH
        it = await self.store.read(lambda db, p: self._batches(db, p, upload.id, options, layout, start, size))
        # The next batch is read and checked (a read thread) while this one
        # is written (the writer thread): the two overlap.
        ahead = asyncio.ensure_future(self._next(it))
        try:
            while (batch := await ahead) is not None:
                ahead = asyncio.ensure_future(self._next(it))
                last = batch[-1]
                resume = store_bulk.ResumePoint(last.byte_offset + last.byte_length,
                                                last.line_number + last.line_count, last.index + 1) \
                    if generation == 1 else None
                valid = 0
                if validate and generation == 1:
                    # Valid records get no row (they show as OK once VALIDATED): only errors go to the writer.
                    bad = [r for r in batch if r.error is not None]
                    valid, batch = len(batch) - len(bad), bad
                out = await self.store.write(lambda tx: store_bulk.apply_batch(
                    tx, upload.id, job.id, token, batch, resume, generation, selection, validate, valid),
                    bounded=False)
                if out.stop:
                    return out.stop
                if upload.max_errors and out.upload.counts.error >= upload.max_errors:
                    return "max_errors"
            return ""
        finally:
            if not ahead.done():
                with contextlib.suppress(Exception):
                    await ahead  # never leave the reader running on its own

