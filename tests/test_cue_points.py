"""Cue points: XML import (hostile documents, limits, per-item errors),
export (filters, paging) and the export -> import round trip, against a
real in-process server on SQLite and PostgreSQL."""
from __future__ import annotations

import random
import tracemalloc
import uuid
from pathlib import Path
from typing import AsyncIterator, Callable

import grpc
import pytest
from defusedxml import ElementTree as defused_et

from conftest import error_info, field_violations, start_app
from mediajobs.server import cue_points as cp_mod
from mediajobs.server.app import App
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc as msvc_grpc

CuePoint = mres.CuePoint
MiB = 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)]
FIELDS = (
    "entry_id", "type", "start_time_ms", "end_time_ms", "system_name", "title", "text", "description", "code",
    "source_url", "sub_type", "tags", "partner_data",
)


# -- fixtures and helpers -----------------------------------------------------------------


async def _stub_for(app: App) -> AsyncIterator[msvc_grpc.MediaServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=CHANNEL_OPTIONS) as ch:
        yield msvc_grpc.MediaServiceStub(ch)


@pytest.fixture
async def media_app(db_url: str) -> AsyncIterator[App]:
    """A server on SQLite, then on PostgreSQL."""
    app = await start_app(db_url)
    try:
        yield app
    finally:
        await app.stop(None)


@pytest.fixture
async def media(media_app: App) -> AsyncIterator[msvc_grpc.MediaServiceStub]:
    async for stub in _stub_for(media_app):
        yield stub


@pytest.fixture
async def sqlite_media(app: App) -> AsyncIterator[msvc_grpc.MediaServiceStub]:
    """MediaService on the SQLite-only `app` fixture (for tests where the
    database does not matter)."""
    async for stub in _stub_for(app):
        yield stub


async def new_entry(media: msvc_grpc.MediaServiceStub, name: str = "clip") -> str:
    entry = await media.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(name=name)))
    assert entry.id
    return entry.id


def scene(entry_id: str | None, element: str = "scene-annotation", start: str | None = "00:00:01.000", body: str = "", extra_attrs: str = "") -> str:
    attrs = (f' entryId="{entry_id}"' if entry_id is not None else "") + extra_attrs
    start_el = f"<sceneStartTime>{start}</sceneStartTime>" if start is not None else ""
    return f"<{element}{attrs}>{start_el}{body}</{element}>"


def doc(*scenes: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<scenes>\n' + "\n".join(scenes) + "\n</scenes>\n").encode()


async def import_xml(media: msvc_grpc.MediaServiceStub, xml: bytes) -> msvc.ImportCuePointsResponse:
    return await media.ImportCuePoints(msvc.ImportCuePointsRequest(xml=xml))


async def rejected(media: msvc_grpc.MediaServiceStub, xml: bytes) -> grpc.aio.AioRpcError:
    """Import `xml`, expect INVALID_ARGUMENT on field `xml`, return the error."""
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await import_xml(media, xml)
    err = ei.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert error_info(err).reason == "INVALID_CUE_POINT_XML"
    assert "xml" in field_violations(err)
    return err


async def export_all(media: msvc_grpc.MediaServiceStub, page_size: int = 0, **filters: object) -> list[CuePoint]:
    """Every cue point matching `filters`, following page tokens; each page is
    parsed back with the import parser, ids taken from the sceneId attributes."""
    out: list[CuePoint] = []
    token = ""
    for _ in range(100):
        resp = await media.ExportCuePoints(msvc.ExportCuePointsRequest(page_size=page_size, page_token=token, **filters))  # type: ignore[arg-type]
        items = cp_mod.parse_document(resp.xml)
        assert [it.errors for it in items] == [[]] * len(items)
        assert resp.count == len(items)
        scene_ids = [el.get("sceneId", "") for el in defused_et.fromstring(resp.xml)]
        for it, scene_id in zip(items, scene_ids, strict=True):
            assert it.cue_point is not None and scene_id
            it.cue_point.id = scene_id
            out.append(it.cue_point)
        token = resp.next_page_token
        if not token:
            return out
        # A page ends at page_size, or early at the byte cap (4 MiB clients).
        assert resp.count == (page_size or cp_mod.DEFAULT_EXPORT_PAGE) or (
            len(resp.xml) > cp_mod.MAX_EXPORT_DOCUMENT_BYTES // 2)
    raise AssertionError("export did not end")


def fields_of(cp: CuePoint) -> tuple[object, ...]:
    """Everything but id and create_time."""
    return tuple(list(getattr(cp, f)) if f == "tags" else getattr(cp, f) for f in FIELDS)


def peak_memory_of(fn: Callable[[], object]) -> int:
    """Peak bytes Python allocated while running fn (expat's own buffers
    included: pyexpat allocates through the Python allocator)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# -- time values and rendering (no server) -----------------------------------------------------


@pytest.mark.parametrize(
    "text,ms",
    [("00:00:05.000", 5000), ("00:00:10.5", 10500), ("01:02:03.004", 3723004), ("00:01:00", 60000),
     ("123:00:00.000", 442800000), (" 90000 ", 90000), ("0", 0)],
)
def test_parse_time_ms_accepts_clock_times_and_milliseconds(text: str, ms: int) -> None:
    assert cp_mod.parse_time_ms(text) == ms


@pytest.mark.parametrize("text", ["", "1:2", "00:60:00.000", "00:00:61", "00:00:01.0001", "-5", "1e3", "5 ms", "9" * 40])
def test_parse_time_ms_rejects_other_text_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM:SS.mmm|too large"):
        cp_mod.parse_time_ms(text)


def test_format_time_ms_round_trips() -> None:
    for ms in (0, 1, 999, 1000, 59_999, 3_600_000, 3_723_004, 100 * 3_600_000 + 7):
        assert cp_mod.parse_time_ms(cp_mod.format_time_ms(ms)) == ms
    assert cp_mod.format_time_ms(3_723_004) == "01:02:03.004"


def test_rendered_document_escapes_markup_and_round_trips_tricky_text() -> None:
    tricky = 'a < b && c > d ]]> "q" \'s\' \r\n\ttab  </sceneText><x>&amp; é 日本 \U0001F600 '
    cp = CuePoint(
        id="01JCUE", entry_id='e"1&<>', type=CuePoint.AD, start_time_ms=1, end_time_ms=2,
        system_name='sys "name"\n\r\t<&>', title=tricky, text=tricky, description=tricky, code=tricky,
        source_url="https://x.example/?a=1&b=<2>", sub_type=tricky, partner_data=tricky, tags=["<t&>", 'q"'],
    )
    xml = cp_mod.render_document([cp])
    assert b"<x>" not in xml and b"</sceneText><x>" not in xml
    assert b"<adType>" in xml  # an ad's sub_type is written as adType
    (item,) = cp_mod.parse_document(xml)
    assert item.errors == []
    assert item.cue_point is not None
    assert fields_of(item.cue_point) == fields_of(cp)


def test_rendered_document_stays_well_formed_with_control_characters() -> None:
    # Import never stores them; if one got into the database anyway, export
    # must still produce a document that parses.
    cp = CuePoint(id="01J", entry_id="e", type=CuePoint.CODE, start_time_ms=0, code="a\x01b\x1f\ufffe", tags=["t\x0b"])
    xml = cp_mod.render_document([cp])
    (item,) = cp_mod.parse_document(xml)
    assert item.cue_point is not None
    assert item.cue_point.code == "a\ufffdb\ufffd\ufffd"
    assert list(item.cue_point.tags) == ["t\ufffd"]


# -- hostile documents: the parser alone, for memory ------------------------------------------


def _deep(levels: int) -> bytes:
    return b"<scenes>" + b"<a>" * levels + b"</a>" * levels + b"</scenes>"


def _billion_laughs() -> bytes:
    ents = b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1)) * 10 if i > 1 else b"lol" * 10) for i in range(1, 10)
    )
    return b'<?xml version="1.0"?>\n<!DOCTYPE scenes [' + ents + b"]>\n<scenes>&lol9;</scenes>"


HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "billion laughs": (_billion_laughs, "DTD"),
    "quadratic blowup without DTD": (lambda: b"<scenes>" + b"&a;" * 100_000 + b"</scenes>", "undefined entity"),
    "10,000-deep nesting": (lambda: _deep(10_000), "nested more than 16 deep"),
    "1,000,000 open elements": (lambda: b"<scenes>" + b"<a>" * 1_000_000, "nested more than 16 deep"),
    "17 levels": (lambda: _deep(16), "nested more than 16 deep"),
    "DTD only": (lambda: b'<?xml version="1.0"?>\n<!DOCTYPE scenes [<!ELEMENT scenes ANY>]>', "DTD"),
    "external DTD": (lambda: b'<!DOCTYPE scenes SYSTEM "file:///etc/passwd"><scenes/>', "DTD"),
    "8 MiB of attributes on one element": (
        lambda: b"<scenes><x" + b"".join(b' a%d=""' % i for i in range(1_200_000))[: 8 * MiB - 100] + b"/></scenes>",
        "larger than 256 KiB",
    ),
    "8 MiB of distinct element names": (
        lambda: b"<scenes><scene-annotation>"
        + b"".join(b"<n%d/>" % i for i in range(1_200_000))[: 8 * MiB - 100]
        + b"</scene-annotation></scenes>",
        "distinct element and attribute names",
    ),
    "8 MiB comment": (lambda: b"<scenes><!--" + b"x" * (8 * MiB - 100) + b"--></scenes>", "larger than 256 KiB"),
    "10,001 items": (lambda: b"<scenes>" + b"<x/>" * 10_001 + b"</scenes>", "more than 10000 cue-point elements"),
    "over 8 MiB": (lambda: b"<scenes>" + b" " * (8 * MiB) + b"</scenes>", "at most 8388608"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_document_is_rejected_by_the_parser_within_64_mib(name: str) -> None:
    make, expected = HOSTILE[name]
    data = make()
    errors: list[cp_mod.DocumentError] = []

    def parse() -> None:
        try:
            cp_mod.parse_document(data)
        except cp_mod.DocumentError as e:
            errors.append(e)

    peak = peak_memory_of(parse)
    assert len(errors) == 1, f"{name} was accepted"
    assert expected in str(errors[0])
    assert peak < 64 * MiB, f"{name}: parser peaked at {peak / MiB:.1f} MiB"


def test_largest_valid_document_parses_within_64_mib() -> None:
    # Memory stays proportional to what is kept: 10,000 items near the 8 MiB cap.
    item = scene("01JENTRY", body="<sceneText>" + "y" * 680 + "</sceneText><tags><tag>a</tag></tags>")
    data = doc(*[item] * 10_000)
    assert 7 * MiB < len(data) <= cp_mod.MAX_DOCUMENT_BYTES
    result: list[list[cp_mod.ParsedItem]] = []
    peak = peak_memory_of(lambda: result.append(cp_mod.parse_document(data)))
    assert len(result[0]) == 10_000 and all(it.cue_point is not None for it in result[0])
    assert peak < 64 * MiB, f"peaked at {peak / MiB:.1f} MiB"


def test_sixteen_levels_are_accepted() -> None:
    # <scenes> is level 1; level 16 is the deepest allowed (an unknown
    # element here, reported as an item, not a document error).
    (item,) = cp_mod.parse_document(_deep(15))
    assert item.cue_point is None and "unknown element <a>" in item.errors[0]


def test_long_text_is_an_item_error_not_a_stalled_parse() -> None:
    # Character data streams through (only markup counts against 256 KiB).
    data = doc(scene("e", body="<sceneText>" + "x" * (2 * MiB) + "</sceneText>"), scene("e"))
    items = cp_mod.parse_document(data)
    assert items[0].errors == ["<sceneText> is 2097152 characters; at most 4096"]
    assert items[1].cue_point is not None


# -- hostile documents through the server --------------------------------------------------------


async def test_hostile_documents_are_invalid_argument_and_create_nothing(sqlite_media: msvc_grpc.MediaServiceStub) -> None:
    media = sqlite_media
    entry_id = await new_entry(media)
    valid = scene(entry_id)
    cases = {
        "billion laughs": (_billion_laughs(), "DTD"),
        "10,000-deep nesting": (_deep(10_000), "nested more than 16 deep"),
        "deep nesting after a valid item": (b"<scenes>" + valid.encode() + b"<a>" * 10_000, "nested more than 16 deep"),
        "DTD only": (b'<?xml version="1.0"?>\n<!DOCTYPE scenes [<!ELEMENT scenes ANY>]>', "DTD"),
        "DTD before valid items": (b"<!DOCTYPE scenes>" + doc(valid), "DTD"),
        "oversize": (doc(valid) + b" " * (8 * MiB), "at most 8388608"),
        "10,001 items": (doc(*[valid] * 10_001), "more than 10000 cue-point elements"),
        "wrong root": (b"<annotations>" + valid.encode() + b"</annotations>", "root element must be <scenes>"),
        "not XML": (b"scene-annotation entryId=1", "not well-formed"),
        "truncated": (doc(valid)[:-20], "not well-formed"),
        "undefined entity": (doc(valid, scene(entry_id, body="<title>&nbsp;</title>")), "undefined entity"),
        "invalid character reference": (doc(valid, scene(entry_id, body="<title>&#1;</title>")), "invalid character"),
        "unknown encoding": (b'<?xml version="1.0" encoding="x-unknown"?><scenes/>', "unsupported encoding"),
        "empty": (b"", "required"),
        "garbage bytes": (bytes(range(256)) * 16, "not well-formed"),
    }
    for name, (xml, expected) in cases.items():
        err = await rejected(media, xml)
        assert expected in field_violations(err)["xml"], name
    # Line numbers, when known, name where the problem is.
    err = await rejected(media, b"<scenes>\n" + valid.encode() + b"\n\n<bad attr=x/>\n</scenes>")
    assert "(line 4)" in field_violations(err)["xml"]
    assert await export_all(media) == []


async def test_external_entity_never_reads_the_file(sqlite_media: msvc_grpc.MediaServiceStub, tmp_path: Path) -> None:
    media = sqlite_media
    entry_id = await new_entry(media)
    secret = f"SECRET-{uuid.uuid4().hex}"
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret)
    url = secret_file.as_uri()
    attempts = [
        f'<?xml version="1.0"?>\n<!DOCTYPE scenes [<!ENTITY xxe SYSTEM "{url}">]>\n'
        f'<scenes><scene-annotation entryId="{entry_id}"><sceneStartTime>1</sceneStartTime>'
        f"<sceneText>&xxe;</sceneText></scene-annotation></scenes>",
        '<?xml version="1.0"?>\n<!DOCTYPE scenes [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        f'<scenes><scene-annotation entryId="{entry_id}"><sceneStartTime>1</sceneStartTime>'
        "<sceneText>&xxe;</sceneText></scene-annotation></scenes>",
        f'<?xml version="1.0"?>\n<!DOCTYPE scenes [<!ENTITY % p SYSTEM "{url}"> %p;]>\n<scenes/>',
        f'<?xml version="1.0"?>\n<!DOCTYPE scenes SYSTEM "{url}">\n<scenes>{scene(entry_id)}</scenes>',
        f'<?xml version="1.0"?>\n<scenes xmlns:xi="http://www.w3.org/2001/XInclude">'
        f'<scene-annotation entryId="{entry_id}"><sceneStartTime>1</sceneStartTime>'
        f'<sceneText><xi:include href="{url}" parse="text"/></sceneText></scene-annotation></scenes>',
    ]
    passwd_first_line = Path("/etc/passwd").read_text().splitlines()[0]
    seen: list[str] = []
    for xml in attempts[:4]:  # a DTD: refused as a whole
        err = await rejected(media, xml.encode())
        assert "a DTD (<!DOCTYPE ...>) is not allowed" in field_violations(err)["xml"]
        seen += [err.details() or "", repr(err.trailing_metadata())]
    # XInclude is not processed: the item is reported (markup inside sceneText).
    resp = await import_xml(media, attempts[4].encode())
    assert list(resp.cue_points) == []
    assert [e.message for e in resp.errors] == ["<sceneText> must hold only text, not <xi:include>"]
    seen.append(str(resp))
    seen.append(repr((await media.ExportCuePoints(msvc.ExportCuePointsRequest())).xml))
    everything = "\n".join(seen)
    assert secret not in everything
    assert passwd_first_line not in everything
    assert await export_all(media) == []


# -- per-item errors -----------------------------------------------------------------------------


async def test_invalid_items_are_reported_and_valid_ones_created(media: msvc_grpc.MediaServiceStub) -> None:
    e1, e2 = await new_entry(media, "one"), await new_entry(media, "two")
    missing = "01JNOSUCHENTRY000000000000"
    items = [
        scene(e1, body="<title>ok 0</title>"),  # 0 ok
        scene(missing),  # 1 unknown entry
        scene(None),  # 2 no entryId
        scene(e1, start="1:2"),  # 3 bad time
        scene(e1, start="00:00:05.000", body="<sceneEndTime>00:00:04.000</sceneEndTime>"),  # 4 end < start
        scene(e1, element="scene-bogus"),  # 5 unknown element
        scene(e2, element="scene-code-cue-point", body="<code>ok 6</code>"),  # 6 ok
        scene(e1, body="<title>" + "t" * 257 + "</title>"),  # 7
        scene(e1, extra_attrs=f' systemName="{"s" * 257}"'),  # 8
        scene(e1, body="<sceneText>" + "x" * 4097 + "</sceneText>"),  # 9
        scene(e1, body="<description>" + "d" * 4097 + "</description>"),  # 10
        scene(e1, body="<code>" + "c" * 1025 + "</code>"),  # 11
        scene(e1, body="<sourceUrl>" + "u" * 2049 + "</sourceUrl>"),  # 12
        scene(e1, body="<partnerData>" + "p" * 4097 + "</partnerData>"),  # 13
        scene(e1, body="<tags>" + "".join(f"<tag>t{i}</tag>" for i in range(33)) + "</tags>"),  # 14
        scene(e1, body="<tags><tag>" + "g" * 65 + "</tag></tags>"),  # 15
        scene(e1, start=None),  # 16 no start
        scene(e1, body="<colour>red</colour>"),  # 17 unknown child
        scene(e2, element="scene-ad-cue-point", start="90000", body="<adType>VIDEO</adType>"),  # 18 ok
        scene(e1, body="<title><b>bold</b></title>"),  # 19 markup in a text field
        scene(e1, body="<title>a</title><title>b</title>"),  # 20 repeated
        scene(e1, body="<tags>" + "".join(f"<tag>t{i}</tag>" for i in range(32)) + "</tags>"),  # 21 ok: 32 tags
        scene(e1, body="<title>" + "t" * 256 + "</title>"),  # 22 ok: at the limit
    ]
    resp = await import_xml(media, doc(*items))
    errors = {e.index: e for e in resp.errors}
    expected = {
        1: "does not exist in this project",
        2: "missing entryId",
        3: "'1:2' is not a time",
        4: "<sceneEndTime> 00:00:04.000 is before <sceneStartTime> 00:00:05.000",
        5: "unknown element <scene-bogus>",
        7: "<title> is 257 characters; at most 256",
        8: "systemName is 257 characters; at most 256",
        9: "<sceneText> is 4097 characters; at most 4096",
        10: "<description> is 4097 characters; at most 4096",
        11: "<code> is 1025 characters; at most 1024",
        12: "<sourceUrl> is 2049 characters; at most 2048",
        13: "<partnerData> is 4097 characters; at most 4096",
        14: "more than 32 tags",
        15: "a <tag> is 65 characters; at most 64",
        16: "missing <sceneStartTime>",
        17: "unknown element <colour>",
        19: "<title> must hold only text, not <b>",
        20: "<title> appears more than once",
    }
    assert sorted(errors) == sorted(expected)
    for index, text in expected.items():
        assert text in errors[index].message, (index, errors[index].message)
        assert errors[index].line == index + 3  # the declaration, <scenes>, then one item a line
    assert errors[1].entry_id == missing
    assert errors[2].entry_id == ""
    assert errors[7].entry_id == e1
    assert [e.index for e in resp.errors] == sorted(expected)  # document order

    assert [(c.entry_id, c.type) for c in resp.cue_points] == [
        (e1, CuePoint.ANNOTATION), (e2, CuePoint.CODE), (e2, CuePoint.AD), (e1, CuePoint.ANNOTATION),
        (e1, CuePoint.ANNOTATION),
    ]
    assert resp.cue_points[0].title == "ok 0" and resp.cue_points[1].code == "ok 6"
    assert resp.cue_points[2].sub_type == "VIDEO" and resp.cue_points[2].start_time_ms == 90_000
    assert len(resp.cue_points[3].tags) == 32
    assert all(c.id and c.create_time.seconds for c in resp.cue_points)
    assert len({c.id for c in resp.cue_points}) == 5
    stored = await export_all(media)
    assert sorted(c.id for c in stored) == sorted(c.id for c in resp.cue_points)

    # All invalid: nothing created, every item reported.
    resp = await import_xml(media, doc(scene(missing), scene(None)))
    assert list(resp.cue_points) == [] and [e.index for e in resp.errors] == [0, 1]
    assert len(await export_all(media)) == 5


async def test_duplicate_tags_are_merged_and_ignored_kaltura_elements_accepted(media: msvc_grpc.MediaServiceStub) -> None:
    e1 = await new_entry(media)
    body = (
        "<createdAt>1700000000</createdAt><userId>someone</userId>"
        "<tags><tag> a </tag><tag>b</tag><tag>a</tag></tags><subType>SLIDE</subType>"
    )
    resp = await import_xml(media, doc(scene(e1, element="scene-thumb-cue-point", body=body, extra_attrs=' sceneId="0_old"')))
    assert [e.message for e in resp.errors] == []
    (cp,) = resp.cue_points
    assert list(cp.tags) == ["a", "b"]
    assert cp.sub_type == "SLIDE" and cp.type == CuePoint.THUMB
    assert cp.id != "0_old"


async def test_unknown_entry_of_a_deleted_entry_is_reported(media: msvc_grpc.MediaServiceStub) -> None:
    e1, e2 = await new_entry(media), await new_entry(media)
    await media.DeleteEntry(msvc.DeleteEntryRequest(id=e2))
    resp = await import_xml(media, doc(scene(e1), scene(e2)))
    assert [c.entry_id for c in resp.cue_points] == [e1]
    assert [(e.index, e.entry_id) for e in resp.errors] == [(1, e2)]


# -- export ------------------------------------------------------------------------------------


async def _export_fixture(media: msvc_grpc.MediaServiceStub) -> tuple[str, str, list[CuePoint]]:
    e1, e2 = await new_entry(media, "one"), await new_entry(media, "two")
    items = [
        scene(e1, start="00:00:30.000", body="<tags><tag>intro</tag></tags>"),
        scene(e1, element="scene-ad-cue-point", start="00:00:10.000", body="<tags><tag>ads</tag><tag>mid</tag></tags>"),
        scene(e1, element="scene-code-cue-point", start="00:00:20.000"),
        scene(e1, start="00:00:10.000", body="<tags><tag>mid</tag></tags>"),  # same start as the ad: id breaks the tie
        scene(e2, element="scene-thumb-cue-point", start="0"),
        scene(e2, element="scene-event-cue-point", start="00:01:00.000", body="<tags><tag>intro</tag><tag>end</tag></tags>"),
        scene(e2, start="00:00:20.000"),
    ]
    resp = await import_xml(media, doc(*items))
    assert list(resp.errors) == []
    return e1, e2, list(resp.cue_points)


def _ids(cps: list[CuePoint]) -> list[str]:
    return [c.id for c in cps]


async def test_export_filters_and_order(media: msvc_grpc.MediaServiceStub) -> None:
    e1, e2, created = await _export_fixture(media)
    ordered = sorted(created, key=lambda c: (c.entry_id, c.start_time_ms, c.id))

    def where(pred: Callable[[CuePoint], bool]) -> list[str]:
        return _ids([c for c in ordered if pred(c)])

    everything = await export_all(media)
    assert _ids(everything) == _ids(ordered)
    assert [fields_of(c) for c in everything] == [fields_of(c) for c in ordered]
    assert _ids(await export_all(media, entry_ids=[e2])) == where(lambda c: c.entry_id == e2)
    assert _ids(await export_all(media, entry_ids=[e2, e1])) == _ids(ordered)
    assert _ids(await export_all(media, types=[CuePoint.AD, CuePoint.EVENT])) == where(
        lambda c: c.type in (CuePoint.AD, CuePoint.EVENT)
    )
    assert _ids(await export_all(media, start_time_from_ms=20_000)) == where(lambda c: c.start_time_ms >= 20_000)
    assert _ids(await export_all(media, start_time_to_ms=20_000)) == where(lambda c: c.start_time_ms <= 20_000)
    assert _ids(await export_all(media, start_time_from_ms=10_000, start_time_to_ms=20_000)) == where(
        lambda c: 10_000 <= c.start_time_ms <= 20_000
    )
    assert _ids(await export_all(media, tags=["intro"])) == where(lambda c: "intro" in c.tags)
    assert _ids(await export_all(media, tags=["mid", "end"])) == where(lambda c: bool({"mid", "end"} & set(c.tags)))
    assert _ids(await export_all(media, tags=["nothing"])) == []
    combined = await export_all(media, entry_ids=[e1], types=[CuePoint.ANNOTATION], tags=["mid", "intro"], start_time_to_ms=15_000)
    assert _ids(combined) == where(
        lambda c: c.entry_id == e1 and c.type == CuePoint.ANNOTATION and c.start_time_ms <= 15_000
        and bool({"mid", "intro"} & set(c.tags))
    )
    assert len(combined) == 1
    # An empty export is still a document the import takes (and it creates nothing).
    empty = await media.ExportCuePoints(msvc.ExportCuePointsRequest(entry_ids=["01JNOSUCH"]))
    assert empty.count == 0 and empty.next_page_token == ""
    assert list((await import_xml(media, empty.xml)).cue_points) == []


async def test_export_pages_follow_the_order_without_gaps(media: msvc_grpc.MediaServiceStub) -> None:
    _, _, created = await _export_fixture(media)
    ordered = _ids(sorted(created, key=lambda c: (c.entry_id, c.start_time_ms, c.id)))
    for size in (1, 2, 3, 6, 7, 8):
        pages: list[int] = []
        token = ""
        got: list[str] = []
        for _ in range(10):  # 7 cue points: a page of 1 needs 7 calls
            resp = await media.ExportCuePoints(msvc.ExportCuePointsRequest(page_size=size, page_token=token))
            pages.append(resp.count)
            got += [el.get("sceneId", "") for el in defused_et.fromstring(resp.xml)]
            token = resp.next_page_token
            if not token:
                break
        else:
            raise AssertionError(f"export with page_size {size} did not end")
        assert got == ordered, size
        assert pages == [size] * (7 // size) + ([7 % size] if 7 % size else []), size
    # Paging works with filters too.
    tagged = await export_all(media, page_size=1, tags=["mid", "intro"])
    assert len(tagged) == 4


async def test_export_rejects_bad_requests(media: msvc_grpc.MediaServiceStub) -> None:
    e1, _, _ = await _export_fixture(media)
    first = await media.ExportCuePoints(msvc.ExportCuePointsRequest(page_size=2, entry_ids=[e1]))
    assert first.next_page_token
    bad: list[tuple[msvc.ExportCuePointsRequest, str, str]] = [
        (msvc.ExportCuePointsRequest(page_size=-1), "page_size", "must not be negative"),
        (msvc.ExportCuePointsRequest(page_size=2, page_token=first.next_page_token), "page_token", "different filters"),
        (msvc.ExportCuePointsRequest(page_size=2, entry_ids=[e1], tags=["x"], page_token=first.next_page_token),
         "page_token", "different filters"),
        (msvc.ExportCuePointsRequest(page_token="garbage!"), "page_token", "not a page token"),
        (msvc.ExportCuePointsRequest(types=[CuePoint.TYPE_UNSPECIFIED]), "types[0]", "not a cue point type"),
        (msvc.ExportCuePointsRequest(types=[CuePoint.AD, 42]), "types[1]", "not a cue point type"),  # type: ignore[list-item]
        (msvc.ExportCuePointsRequest(start_time_from_ms=-1), "start_time_from_ms", "must not be negative"),
        (msvc.ExportCuePointsRequest(start_time_from_ms=10, start_time_to_ms=5), "start_time_to_ms", "before"),
        (msvc.ExportCuePointsRequest(entry_ids=[""]), "entry_ids[0]", "empty"),
        (msvc.ExportCuePointsRequest(tags=["a", " "]), "tags[1]", "empty"),
    ]
    for req, fld, text in bad:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await media.ExportCuePoints(req)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
        assert text in field_violations(ei.value).get(fld, ""), (req, field_violations(ei.value))
    # The same filters (page size may change) continue where the page ended.
    second = await media.ExportCuePoints(msvc.ExportCuePointsRequest(page_size=10, entry_ids=[e1], page_token=first.next_page_token))
    assert first.count == 2 and second.count == 2 and second.next_page_token == ""


async def test_export_pages_stay_importable_and_under_4_mib(media: msvc_grpc.MediaServiceStub) -> None:
    e1 = await new_entry(media)
    # "&" is escaped to 5 bytes: each cue point renders to about 60 KiB.
    body = "".join(f"<{el}>" + "&amp;" * 4096 + f"</{el}>" for el in ("sceneText", "description", "partnerData"))
    for batch in range(2):
        xml = doc(*[scene(e1, start=str(batch * 1000 + i), body=body) for i in range(130)])
        assert len(xml) <= cp_mod.MAX_DOCUMENT_BYTES
        assert len((await import_xml(media, xml)).cue_points) == 130
    sizes: list[int] = []
    counts: list[int] = []
    pages: list[bytes] = []
    token = ""
    for _ in range(10):
        resp = await media.ExportCuePoints(msvc.ExportCuePointsRequest(page_token=token))
        pages.append(resp.xml)
        sizes.append(len(resp.xml))
        counts.append(resp.count)
        token = resp.next_page_token
        if not token:
            break
    else:
        raise AssertionError("export did not end")
    reimported = sum([len((await import_xml(media, xml)).cue_points) for xml in pages])
    assert len(counts) >= 2 and counts[0] < 260  # the byte cap ended the first page, not page_size
    assert max(sizes) <= cp_mod.MAX_EXPORT_DOCUMENT_BYTES
    assert sizes[0] > cp_mod.MAX_EXPORT_DOCUMENT_BYTES - 70 * 1024  # ... and only when the next did not fit
    assert sum(counts) == 260 and reimported == 260


# -- round trip ------------------------------------------------------------------------------


def _random_cue_points(entry_ids: list[str], n: int, seed: int) -> list[CuePoint]:
    rnd = random.Random(seed)
    alphabet = "abc XYZ 0123 <>&\"' ]]> é日本\U0001F600\t\n\r"

    def text(limit: int) -> str:
        if rnd.random() < 0.3:
            return ""
        size = rnd.choice([1, 5, 40, limit])
        return "".join(rnd.choice(alphabet) for _ in range(size))

    out = []
    for i in range(n):
        start = rnd.randrange(0, 10 * 3_600_000)
        kind = rnd.choice(list(cp_mod.TYPE_ELEMENTS))
        tags = list(dict.fromkeys(f"tag-{rnd.randrange(50)}" for _ in range(rnd.choice([0, 1, 3, 32]))))
        out.append(CuePoint(
            entry_id=entry_ids[i % len(entry_ids)], type=kind,  # type: ignore[arg-type]
            start_time_ms=start, end_time_ms=rnd.choice([0, start, start + rnd.randrange(1, 60_000)]),
            system_name=text(256), title=text(256), text=text(4096), description=text(300),
            code=text(1024), source_url=rnd.choice(["", f"https://ads.example.com/vast?i={i}&x=<1>"]),
            sub_type=text(20), tags=tags, partner_data=text(4096),
        ))
    return out


async def test_export_import_round_trip_of_1000_cue_points(media: msvc_grpc.MediaServiceStub) -> None:
    entries = [await new_entry(media, f"e{i}") for i in range(3)]
    originals = _random_cue_points(entries, 1000, seed=7)
    # The tricky alphabet survives only if rendering escapes it; the source
    # document is made by the renderer (ids blank), like a Kaltura export.
    first = await import_xml(media, cp_mod.render_document(originals))
    assert list(first.errors) == []
    assert [fields_of(c) for c in first.cue_points] == [fields_of(c) for c in originals]

    # Default page size is 500; pages of 400 then hold everything.
    page = await media.ExportCuePoints(msvc.ExportCuePointsRequest())
    assert page.count == cp_mod.DEFAULT_EXPORT_PAGE and page.next_page_token
    big = await media.ExportCuePoints(msvc.ExportCuePointsRequest(page_size=50_000))  # capped at 10,000
    assert big.count == 1000 and big.next_page_token == ""

    documents: list[bytes] = []
    token = ""
    for _ in range(4):
        resp = await media.ExportCuePoints(msvc.ExportCuePointsRequest(page_size=400, page_token=token))
        documents.append(resp.xml)
        token = resp.next_page_token
        if not token:
            break
    assert len(documents) == 3

    reimported: list[CuePoint] = []
    for xml in documents:
        resp = await import_xml(media, xml)
        assert list(resp.errors) == []
        reimported += resp.cue_points
    assert len(reimported) == 1000
    assert sorted(fields_of(c) for c in reimported) == sorted(fields_of(c) for c in first.cue_points)
    assert not {c.id for c in reimported} & {c.id for c in first.cue_points}  # ids are new
    # Both generations are stored and exported alike.
    everything = await export_all(media, page_size=10_000)
    assert len(everything) == 2000
    assert sorted(fields_of(c) for c in everything) == sorted(fields_of(c) for c in [*first.cue_points, *reimported])
