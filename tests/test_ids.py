"""Resource ids (server/ids.py): ULIDs handed out a block at a time must be
real ULIDs (python-ulid reads them back unchanged), unique and in the order
they were made, also across the 1,024-id runs the encoder shares a prefix
over; and what the server makes with them sorts as it was created (a bulk
upload's entries, over a real channel)."""
from __future__ import annotations

import time
from pathlib import Path

import grpc
from ulid import ULID

from mediajobs.server import ids
from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc

from conftest import start_app


def value(text: str) -> int:
    return int.from_bytes(ULID.from_str(text).bytes, "big")


def test_ids_are_ulids_consecutive_and_sortable() -> None:
    before_ms = time.time_ns() // 1_000_000
    for n in (1, 2, 511, 512, 1024, 1025, 3000):
        made = ids.new_ids(n)
        assert len(made) == n == len(set(made))
        assert made == sorted(made)
        vals = [value(x) for x in made]
        assert vals == list(range(vals[0], vals[0] + n)), f"block of {n} is not consecutive"
        for x in made:
            assert len(x) == 26 and str(ULID.from_str(x)) == x
    assert ULID.from_str(ids.new_id()).milliseconds >= before_ms
    block = ids.IdBlock(block=3)
    taken = [block.take() for _ in range(10)]  # refills on the way
    assert taken == sorted(taken) and len(set(taken)) == 10
    assert ids.new_ids(0) == []


def test_ids_stay_ordered_across_a_shared_prefix_and_a_clock_behind_them() -> None:
    # The last id handed out sits just below a 1,024 boundary (and ahead of
    # the clock, as after a step back): the next ones continue from it.
    now_ms = time.time_ns() // 1_000_000
    ids._last = ((now_ms + 1_000) << 80) | 0x3FD
    made = ids.new_ids(6)
    vals = [value(x) for x in made]
    assert vals[0] == ((now_ms + 1_000) << 80) | 0x3FE
    assert vals == list(range(vals[0], vals[0] + 6))
    assert made[1][:24] != made[2][:24]  # the prefix changed inside the block
    assert made == sorted(made)
    assert ids.new_id() > made[-1]


async def test_entries_a_bulk_upload_makes_sort_in_record_order(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    (root / "media").mkdir(parents=True)
    (root / "media" / "clip.mp4").write_bytes(b"\0" * 16)
    records = 1_300  # more than an IdBlock, across batches
    content = ("name,reference_id,source\n" + "".join(
        f"clip {i},ref-{i},media/clip.mp4\n" for i in range(1, records + 1))).encode()
    app = await start_app(str(tmp_path / "db.sqlite"), storage_root=root)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
            media = media_service_pb2_grpc.MediaServiceStub(ch)
            u = await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(
                bulk_upload=bres.BulkUpload(file_name="c.csv"), content=content))
            async for got in bulk.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=u.id), timeout=60):
                if got.state == bres.BulkUpload.WAITING_FOR_OBJECTS:
                    break
            assert got.counts.objects_created == records
            newest_first: list[str] = []
            token = ""
            while True:
                page = await media.ListEntries(msvc.ListEntriesRequest(page_size=500, page_token=token))
                newest_first += [e.reference_id for e in page.entries]
                for e in page.entries:
                    assert len({e.id, e.job_ids[0], e.flavor_assets[0].id}) == 3
                    assert e.id < e.flavor_assets[0].id < e.job_ids[0]  # made in that order
                token = page.next_page_token
                if not token:
                    break
            assert newest_first == [f"ref-{i}" for i in range(records, 0, -1)]
    finally:
        await app.stop(None)
