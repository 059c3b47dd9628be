"""The bulk-upload CSV reader (server/bulk/csv_records.py): Kaltura's entry
CSV versions, mediajobs' own header, every field rule, resume points, chunking
and hostile input (design: bulk-uploads.md 2.1, 5.5, 5.8)."""
from __future__ import annotations

import csv
import io
import random
import tracemalloc
from typing import Any

import pytest

from mediajobs.server.bulk import csv_records as c
from mediajobs.server.bulk.csv_records import (
    MAX_COLUMNS,
    MAX_RECORD_BYTES,
    MAX_RECORD_LINES,
    CsvOptions,
    FileError,
    Layout,
    Position,
    Record,
    read_layout,
    scan_records,
)

ULID = "01HA255YE6H6DEETJ5M6595ZDA"
MiB = 1 << 20


def chunked(data: bytes, size: int | None) -> list[bytes]:
    if size is None:
        return [data]
    return [data[i:i + size] for i in range(0, len(data), size)]


def scan(data: bytes, size: int | None = None, **opts: Any) -> tuple[Layout, list[Record]]:
    options = CsvOptions(**opts)
    layout = read_layout(chunked(data, size), options)
    return layout, list(scan_records(chunked(data, size), options, layout))


def errors(records: list[Record]) -> list[tuple[int, str]]:
    return [(r.line_number, r.error.reason) for r in records if r.error is not None]


COLUMNS = ["title", "description", "tags", "url", "contentType", "conversionProfileId", "referenceId", "entryId",
           "action", "ownerId", "partnerData", "scheduleStartDate", "scheduleEndDate", "priority", "label:team"]


def row(values: dict[str, str]) -> Record:
    """One record under a `*` header naming every column (values quoted by csv.writer)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["*" + COLUMNS[0]] + COLUMNS[1:])
    w.writerow([values.get(k, "") for k in COLUMNS])
    _, records = scan(buf.getvalue().encode())
    assert len(records) == 1
    return records[0]


def ok(values: dict[str, str]) -> c.EntryFields:
    r = row({"title": "A clip", **values})
    assert r.error is None, r.error
    assert r.fields is not None
    return r.fields


def bad(values: dict[str, str]) -> c.RecordError:
    r = row({"title": "A clip", **values})
    assert r.fields is None and r.error is not None
    return r.error


# -- versions ------------------------------------------------------------------------------


def test_v3_header_in_any_order_with_every_kaltura_name() -> None:
    data = (b"*url,Title,ACTION,entryId,contentType,tags,description,conversionProfileId,referenceId,ownerId,"
            b"partnerData,scheduleStartDate,scheduleEndDate\n"
            b"media/a.mp4,Clip A,update,01ha255ye6h6deetj5m6595zda,Audio,\"news, sport\",Desc,h264-ladder,ref-1,"
            b"alice,pd,2026-05-01T10:00:00,2026-05-02T10:00:00\n")
    layout, [r] = scan(data)
    assert layout.version == 3
    assert layout.columns == ["source", "name", "action", "entry_id", "content_type", "tags", "description",
                              "template_id", "reference_id", "owner", "partner_data", "schedule_start_time",
                              "schedule_end_time"]
    assert layout.header_names[:3] == ["url", "Title", "ACTION"]
    assert layout.warnings == []
    assert layout.data_start == Position(data.index(b"\n") + 1, 2, 1)
    assert r.error is None
    assert r.fields == c.EntryFields(
        action=c.UPDATE, name="Clip A", description="Desc", tags=["news", "sport"], source="media/a.mp4",
        content_type="audio", template_id="h264-ladder", reference_id="ref-1", entry_id=ULID, owner="alice",
        partner_data="pd", schedule_start_time="2026-05-01T10:00:00Z", schedule_end_time="2026-05-02T10:00:00Z",
    )
    assert (r.index, r.line_number, r.line_count) == (1, 2, 1)


def test_plain_header_of_mediajobs_aliases() -> None:
    header = ("name,source_uri,content_type,template_id,reference_id,entry_id,owner,partner_data,schedule_start_time,"
              "schedule_end_time,priority,label:team,action,description,tags,source_uri_x")
    with pytest.raises(FileError):  # one unknown name among known ones: refused by name, not read as data
        read_layout([(header + "\n").encode()], CsvOptions())
    header = header.rsplit(",", 1)[0]
    data = (header + "\nClip,media/a.mp4,video,-1,ref,,bob,,,,HIGH,ops,,,a\n").encode()
    layout, [r] = scan(data)
    assert layout.version == 0
    assert layout.columns[:3] == ["name", "source", "content_type"]
    assert "label:team" in layout.columns
    assert r.fields is not None
    assert (r.fields.name, r.fields.source, r.fields.priority, r.fields.labels, r.fields.template_id,
            r.fields.owner, r.fields.tags) == ("Clip", "media/a.mp4", 4, {"team": "ops"}, "", "bob", ["a"])
    # creatorId (older Kaltura engines) and `source` are aliases too
    layout = read_layout([b"Title,Source,CreatorId\n"], CsvOptions())
    assert layout.columns == ["name", "source", "owner"]


@pytest.mark.parametrize("first,is_header", [
    (b"name,colour", True), (b"name,source_uri,,", True), (b"Title,desc,tags,url,video", True),
    (b"My clip,desc,news,clips/a.mp4,video", False), (b"Clip,,,,", False), (b"name", True),
])
def test_auto_header_detection(first: bytes, is_header: bool) -> None:
    options = CsvOptions(ignore_unknown_columns=True)
    layout = read_layout([first + b"\n"], options)
    assert (layout.version == 0) == is_header
    if not is_header:
        assert layout.data_start == Position(0, 1, 1)
    with pytest.raises(FileError) as e:  # a header with unknown names is refused by name
        read_layout([b"name,colour\nx,red\n"], CsvOptions())
    assert e.value.reason == "UNKNOWN_COLUMNS" and e.value.violations[0][0] == "colour"


def test_positional_v1_and_v2_by_value_count_per_record() -> None:
    data = (b"Clip A,desc,\"a,b\",media/a.mp4,video\n"
            b"Clip B,desc,t,media/b.mp4,audio,h264-ladder,12,Sports>Football,2026-05-01T10:00:00,"
            b"2026-06-01T10:00:00,http://thumbs/b.jpg,pd\n"
            b"only,three,values\n"
            b"Clip D,,,,\n")
    layout, records = scan(data)
    assert layout.version == 1
    assert layout.header_names == []
    assert layout.data_start == Position(0, 1, 1)
    assert len(layout.columns) == 12
    a, b, wrong, d = records
    assert a.fields is not None and (a.fields.name, a.fields.tags, a.fields.source) == ("Clip A", ["a", "b"],
                                                                                          "media/a.mp4")
    assert b.fields is not None
    assert b.fields.template_id == "h264-ladder"
    assert b.fields.schedule_start_time == "2026-05-01T10:00:00Z"
    assert b.fields.partner_data == "pd"
    assert b.fields.labels == {"kaltura.accessControlProfileId": "12", "kaltura.category": "Sports>Football",
                               "kaltura.thumbnailUrl": "http://thumbs/b.jpg"}
    assert wrong.error is not None and wrong.error.reason == "WRONG_NUMBER_OF_VALUES"
    assert wrong.error.message.startswith("Wrong number of values on line 3 (expected 5 or 12")
    assert d.fields is not None and d.fields.source == ""
    assert [r.index for r in records] == [1, 2, 3, 4]


def test_positional_v2_first_record_sets_version_2_and_warns() -> None:
    layout, [r] = scan(b"Clip,,,m.mp4,video,,,Cat,,,,\n")
    assert layout.version == 2
    assert "category" in layout.warnings[0] and "kaltura." in layout.warnings[0]
    assert r.fields is not None and r.fields.labels == {"kaltura.category": "Cat"}


def test_positional_ssh_key_values_refuse_the_file() -> None:
    # Kaltura's getV2Columns() names the SSH columns after partnerData; only a
    # 15-value record reaches them.
    good = b"Clip,,,m.mp4,video\n"
    ssh = b"Clip,,,sftp://h/m.mp4,video,,,,,,,,-----BEGIN KEY-----,pub,\n"
    options = CsvOptions()
    layout = read_layout([good + ssh], options)
    with pytest.raises(FileError) as e:
        list(scan_records([good + ssh], options, layout))
    assert e.value.reason == "SSH_KEYS_NOT_ACCEPTED"
    assert "BEGIN" not in e.value.message
    _, [_, r] = scan(good + b"Clip,,,m.mp4,video,,,,,,,,,,\n")  # 15 values, no key: a wrong count
    assert r.error is not None and r.error.reason == "WRONG_NUMBER_OF_VALUES"


def test_header_modes_present_and_absent() -> None:
    with pytest.raises(FileError) as e:
        read_layout([b"foo,bar\n1,2\n"], CsvOptions(header="present"))
    assert e.value.reason == "UNKNOWN_COLUMNS"
    layout, [r] = scan(b"foo,title\n1,A\n", header="present", ignore_unknown_columns=True)
    assert layout.version == 0 and layout.columns == ["plugin:foo", "name"]
    assert r.fields is not None and r.fields.plugins_data == {"foo": "1"} and r.fields.name == "A"
    assert any("foo" in w for w in layout.warnings)
    # absent: a line of column names is data
    layout, [r] = scan(b"title,description,tags,url,video\n", header="absent")
    assert layout.version == 1 and layout.data_start == Position(0, 1, 1)
    assert r.fields is not None and r.fields.name == "title"


def test_empty_files() -> None:
    for data in (b"", b"\xef\xbb\xbf", b"# only a comment\n\n"):
        layout, records = scan(data)
        assert records == [] and layout.version == 1
        with pytest.raises(FileError) as e:
            read_layout([data], CsvOptions(header="present"))
        assert e.value.reason == "NO_HEADER"
    layout, records = scan(b"*title,url\n")
    assert records == [] and layout.data_start == Position(11, 2, 1)


# -- lines, encodings, delimiters --------------------------------------------------------------


def test_bom_is_skipped_and_offsets_stay_file_offsets() -> None:
    data = b"\xef\xbb\xbfname,source\nA,a.mp4\r\nB,b.mp4"
    layout, [a, b] = scan(data)
    assert layout.version == 0 and layout.columns == ["name", "source"]
    assert layout.data_start == Position(3 + len(b"name,source\n"), 2, 1)
    assert data[a.byte_offset:a.byte_offset + a.byte_length] == b"A,a.mp4\r\n"
    assert data[b.byte_offset:b.byte_offset + b.byte_length] == b"B,b.mp4"  # no terminator on the last line
    assert b.end == Position(len(data), 4, 3)
    # a positional file with a BOM starts after it
    layout, [r] = scan(b"\xef\xbb\xbfA,,,a.mp4,video\n")
    assert layout.data_start == Position(3, 1, 1) and r.fields is not None and r.fields.name == "A"


@pytest.mark.parametrize("bom", [b"\xff\xfe", b"\xfe\xff"])
def test_utf16_is_refused(bom: bytes) -> None:
    with pytest.raises(FileError) as e:
        read_layout([bom + "*title\n".encode("utf-16-le")], CsvOptions())
    assert e.value.reason == "UTF16_NOT_SUPPORTED" and "CSV UTF-8" in e.value.message


def test_comments_and_blank_lines_are_not_numbered_but_lines_count() -> None:
    data = (b"# leading comment\n"          # 1
            b"\n"                            # 2
            b"*title,url\n"                  # 3 header
            b"A,a.mp4\n"                     # 4 -> 1
            b"   # indented comment \"x\n"  # 5 (a quote in a comment opens nothing)
            b",,\n"                          # 6 only delimiters
            b" \t \r\n"                      # 7 only blanks
            b"\"#quoted\",x\n"               # 8 first value starts with #
            b"\"B\r\nmore\",b.mp4\r\n"       # 9-10 -> 2
            b"#\n"                           # 11
            b"C,c.mp4")                      # 12 -> 3
    layout, records = scan(data)
    assert layout.data_start.line_number == 4
    assert [(r.index, r.line_number, r.line_count) for r in records] == [(1, 4, 1), (2, 9, 2), (3, 12, 1)]
    assert records[1].fields is not None and records[1].fields.name == "B\r\nmore"  # CR/LF inside quotes are data
    assert records[2].end == Position(len(data), 13, 4)


def test_crlf_and_lf_mixed_and_quoted_values() -> None:
    data = b"*title,description\r\nA,\"say \"\"hi\"\", twice\"\nB,plain\r\n\"C\",\"x\ny\r\nz\"\n"
    _, records = scan(data)
    assert [r.fields.description for r in records if r.fields] == ['say "hi", twice', "plain", "x\ny\r\nz"]
    assert [r.line_number for r in records] == [2, 3, 4]
    assert records[2].line_count == 3


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_each_delimiter(delimiter: str) -> None:
    d = delimiter
    text = f"*title{d}url{d}tags\nA{d}a.mp4{d}\"x,y\"\n\"B{d}b\"{d}b.mp4{d}z\n{d}{d}\n"
    layout, records = scan(text.encode(), delimiter=d)
    assert layout.columns == ["name", "source", "tags"]
    assert [(r.fields.name, r.fields.source, r.fields.tags) for r in records if r.fields] == [
        ("A", "a.mp4", ["x", "y"]), (f"B{d}b", "b.mp4", ["z"])]
    # a comma is data when it is not the delimiter
    if d != ",":
        _, [r] = scan(f"*title{d}url\nA,B{d}a.mp4\n".encode(), delimiter=d)
        assert r.fields is not None and r.fields.name == "A,B"


def test_options_are_checked_and_normalised() -> None:
    for bad_options in ({"delimiter": ":"}, {"delimiter": ",,"}, {"encoding": "latin-1"}, {"header": "yes"}):
        with pytest.raises(ValueError):
            CsvOptions(**bad_options)
    assert CsvOptions(encoding="cp1252").encoding == "windows-1252"
    assert CsvOptions(encoding="UTF-8").encoding == "utf-8"


def test_windows_1252() -> None:
    data = b"*title,description\nCaf\xe9,\x80 5 \x93quoted\x94\nX,\x81\n"
    _, [a, b] = scan(data, encoding="windows-1252")
    assert a.fields is not None and (a.fields.name, a.fields.description) == ("Café", "€ 5 “quoted”")
    assert b.fields is not None and b.fields.description == "\x81"  # undefined in cp1252: as WHATWG decodes it


def test_invalid_utf8_is_a_line_error() -> None:
    data = b"*title,url\nCaf\xe9,a.mp4\n\"Caf\xe9\",a.mp4\nB,b.mp4\n"
    _, records = scan(data)
    assert errors(records) == [(2, "INVALID_UTF8"), (3, "INVALID_UTF8")]
    e = records[0].error
    assert e is not None and "byte 3" in e.message and "windows-1252" in e.message
    assert records[2].fields is not None and records[2].index == 3
    with pytest.raises(FileError) as fe:  # a header that cannot be read refuses the file
        read_layout([b"*tit\xffle,url\nA,a\n"], CsvOptions())
    assert fe.value.reason == "INVALID_HEADER"


# -- actions and field rules -------------------------------------------------------------------


@pytest.mark.parametrize("value,action", [
    ("add", 1), ("ADD", 1), ("1", 1), ("update", 2), ("Update", 2), ("2", 2), ("delete", 3), ("3", 3),
    ("replace", 4), ("4", 4), ("add_or_update", 6), ("addOrUpdate", 6), ("add-or-update", 6), ("6", 6),
])
def test_actions_by_name_and_number(value: str, action: int) -> None:
    f = ok({"action": value, "entryId": ULID, "referenceId": "r", "url": "m.mp4"})
    assert f.action == action


@pytest.mark.parametrize("value", ["bogus", "5", "0", "add or update"])
def test_bogus_action(value: str) -> None:
    e = bad({"action": value})
    assert (e.reason, e.column) == ("INVALID_ACTION", "action")


def test_action_requirements() -> None:
    assert ok({}).action == c.ADD  # default
    e = row({"url": "m.mp4"}).error
    assert e is not None and (e.reason, e.column) == ("MISSING_VALUE", "name")
    for action in ("update", "delete", "replace"):
        e = row({"action": action, "url": "m.mp4"}).error
        assert e is not None and (e.reason, e.column) == ("MISSING_VALUE", "entry_id")
    e = row({"action": "replace", "entryId": ULID}).error
    assert e is not None and (e.reason, e.column) == ("MISSING_VALUE", "source")
    e = row({"action": "add_or_update", "title": "A"}).error
    assert e is not None and (e.reason, e.column) == ("MISSING_VALUE", "reference_id")
    f = row({"action": "delete", "entryId": ULID.lower()}).fields  # no title needed
    assert f is not None and f.entry_id == ULID


def test_text_limits() -> None:
    for column, canonical, limit in [("title", "name", 256), ("description", "description", 4096),
                                     ("referenceId", "reference_id", 256), ("ownerId", "owner", 128),
                                     ("partnerData", "partner_data", 4096)]:
        assert getattr(ok({column: "x" * limit}), canonical) == "x" * limit
        e = bad({column: "y" * (limit + 1)})
        assert (e.reason, e.column) == ("VALUE_TOO_LONG", canonical)
        assert e.message.startswith(column) and "yyy" not in e.message


def test_values_are_trimmed_and_empty_means_not_given() -> None:
    f = ok({"title": " \t A clip\xa0 ", "description": "   ", "priority": ""})
    assert (f.name, f.description, f.priority) == ("A clip", "", 0)


def test_tags() -> None:
    assert ok({"tags": " a , b,a,,c, "}).tags == ["a", "b", "c"]
    assert ok({"tags": "solo"}).tags == ["solo"]
    assert ok({"tags": ",".join(f"t{i}" for i in range(32)) + ",t0"}).tags == [f"t{i}" for i in range(32)]
    e = bad({"tags": ",".join(f"t{i}" for i in range(33))})
    assert (e.reason, e.column) == ("INVALID_VALUE", "tags")
    e = bad({"tags": "ok," + "z" * 65})
    assert (e.reason, e.column) == ("INVALID_VALUE", "tags")


def test_source() -> None:
    assert ok({}).source == ""
    assert ok({"url": "incoming/clip.mov"}).source == "incoming/clip.mov"
    assert ok({"url": "file:///srv/media/a.mp4"}).source == "file:///srv/media/a.mp4"
    assert ok({"url": "C:\\media\\a.mp4"}).source == "C:\\media\\a.mp4"  # kept; the applier resolves it
    for url in ("http://example.com/a.mp4", "HTTPS://example.com/a.mp4", "ftp://h/a.mp4", "s3://bucket/a.mp4"):
        e = bad({"url": url})
        assert (e.reason, e.column) == ("SOURCE_SCHEME_UNSUPPORTED", "source")
        assert "storage root" in e.message and "not supported yet" in e.message
    for url in ("sftp://h/a.mp4", "scp:h:/a.mp4", "SFTP:x"):
        e = bad({"url": url})
        assert e.reason == "SOURCE_SCHEME_UNSUPPORTED" and "SSH" in e.message


def test_content_type() -> None:
    assert ok({"contentType": "Video"}).content_type == "video"
    assert ok({"contentType": "IMAGE"}).content_type == "image"
    assert ok({}).content_type == ""
    e = bad({"contentType": "movie"})
    assert (e.reason, e.column) == ("INVALID_VALUE", "content_type")


def test_template_id() -> None:
    assert ok({"conversionProfileId": "h264-ladder"}).template_id == "h264-ladder"
    assert ok({"conversionProfileId": "-1"}).template_id == ""
    for value in ("12345", "H264", "ab", "bad_id"):
        e = bad({"conversionProfileId": value})
        assert (e.reason, e.column) == ("INVALID_VALUE", "template_id") and "h264-ladder" in e.message


def test_entry_id() -> None:
    assert ok({"entryId": ULID.lower()}).entry_id == ULID
    e = bad({"entryId": "0_abc123"})  # a Kaltura entry id
    assert (e.reason, e.column) == ("INVALID_VALUE", "entry_id")


def test_schedule_dates() -> None:
    f = ok({"scheduleStartDate": "2026-05-01T10:00:00", "scheduleEndDate": "2026-05-01T14:00:00+02:00"})
    assert (f.schedule_start_time, f.schedule_end_time) == ("2026-05-01T10:00:00Z", "2026-05-01T12:00:00Z")
    f = ok({"scheduleStartDate": "2026-05-01T10:00:00.250Z", "scheduleEndDate": "2026-05-01T09:30:00-02:00"})
    assert (f.schedule_start_time, f.schedule_end_time) == ("2026-05-01T10:00:00Z", "2026-05-01T11:30:00Z")
    for value in ("2026-05-01", "2026-13-01T00:00:00", "2026-05-01 10:00:00", "tomorrow", "2026-05-01T10:00:00+25:00"):
        e = bad({"scheduleStartDate": value})
        assert (e.reason, e.column) == ("INVALID_DATE", "schedule_start_time")
    e = bad({"scheduleStartDate": "2026-05-01T12:00:00+02:00", "scheduleEndDate": "2026-05-01T10:00:00"})
    assert (e.reason, e.column) == ("INVALID_DATE", "schedule_end_time")  # equal: must end after it starts
    e = bad({"scheduleStartDate": "2026-05-02T00:00:00", "scheduleEndDate": "2026-05-01T00:00:00"})
    assert (e.reason, e.column) == ("INVALID_DATE", "schedule_end_time")


def test_priority() -> None:
    assert [ok({"priority": p}).priority for p in ("lowest", "Low", "MEDIUM", "high", "HIGHEST", "1", "5")] == [
        1, 2, 3, 4, 5, 1, 5]
    for value in ("6", "0", "urgent"):
        e = bad({"priority": value})
        assert (e.reason, e.column) == ("INVALID_VALUE", "priority")


def test_labels() -> None:
    assert ok({"label:team": "ops"}).labels == {"team": "ops"}
    e = bad({"label:team": "v" * 4097})
    assert (e.reason, e.column) == ("LABELS_INVALID", "label:team")
    assert "4096" in e.message
    with pytest.raises(FileError) as fe:
        read_layout([b"*title,label:\n"], CsvOptions())
    assert fe.value.reason == "INVALID_HEADER"


def test_errors_echo_only_a_clipped_prefix() -> None:
    secret = "s3cr3t-" * 1000
    e = bad({"contentType": secret})
    assert secret[:200] not in e.message and len(e.message) < 300
    e = bad({"url": "http://user:" + secret})
    assert secret[:200] not in e.message and len(e.message) < 300


# -- columns --------------------------------------------------------------------------------


def test_kaltura_only_columns_become_labels_with_a_warning() -> None:
    names = ["category", "thumbnailUrl", "accessControlProfileId", "entitledUsersEdit", "entitledUsersPublish",
             "entitledUsersView", "templateEntryId"]
    data = ("*title," + ",".join(n.upper() if i == 0 else n for i, n in enumerate(names)) + "\n"
            + "A," + ",".join(f"v{i}" for i in range(len(names))) + "\n").encode()
    layout, [r] = scan(data)
    assert layout.columns[1:] == [f"kaltura.{n}" for n in names]
    assert len(layout.warnings) == 1 and "thumbnailUrl" in layout.warnings[0] and "kaltura." in layout.warnings[0]
    assert r.fields is not None and r.fields.labels == {f"kaltura.{n}": f"v{i}" for i, n in enumerate(names)}


def test_unknown_columns_are_refused_or_kept_as_plugins_data() -> None:
    data = b"*title,url,customField,Other\nA,a.mp4,x,\n"
    with pytest.raises(FileError) as e:
        read_layout([data], CsvOptions())
    assert e.value.reason == "UNKNOWN_COLUMNS"
    assert [v[0] for v in e.value.violations] == ["customField", "Other"]
    assert "title/name" in e.value.message and "label:<key>" in e.value.message
    layout, [r] = scan(data, ignore_unknown_columns=True)
    assert layout.columns == ["name", "source", "plugin:customField", "plugin:Other"]
    assert r.fields is not None and r.fields.plugins_data == {"customField": "x"}
    assert any("customField" in w for w in layout.warnings)


@pytest.mark.parametrize("ignore", [False, True])
def test_ssh_columns_in_a_header_refuse_the_file(ignore: bool) -> None:
    with pytest.raises(FileError) as e:
        read_layout([b"*title,url,sshPrivateKey,SSHPUBLICKEY\n"], CsvOptions(ignore_unknown_columns=ignore))
    assert e.value.reason == "SSH_KEYS_NOT_ACCEPTED"
    assert len(e.value.violations) == 2


@pytest.mark.parametrize("header,reason", [
    (b"name,title\n", "DUPLICATE_COLUMN"),
    (b"*url,source_uri,title\n", "DUPLICATE_COLUMN"),
    (b"*title,ownerId,creatorId\n", "DUPLICATE_COLUMN"),
    (b"*title,label:a,label:a\n", "DUPLICATE_COLUMN"),
    (b"*title,category,label:kaltura.category\n", "DUPLICATE_COLUMN"),
    (b"*title,,url\n", "EMPTY_COLUMN_NAME"),
    (b"*,title\n", "EMPTY_COLUMN_NAME"),
])
def test_bad_headers(header: bytes, reason: str) -> None:
    with pytest.raises(FileError) as e:
        read_layout([header], CsvOptions())
    assert e.value.reason == reason


def test_value_counts_against_the_header() -> None:
    data = b"*title,url,,\nA\nB,b.mp4,,\nC,c.mp4,extra\n"
    layout, (a, b, extra) = scan(data)
    assert layout.columns == ["name", "source"]  # empty names at the end (Excel padding) dropped
    assert a.fields is not None and a.fields.source == ""  # fewer values: not given
    assert b.fields is not None
    assert extra.error is not None and extra.error.reason == "TOO_MANY_VALUES"


def test_ten_thousand_columns() -> None:
    header = ("*" + ",".join(f"c{i}" for i in range(10_000)) + "\n").encode()
    with pytest.raises(FileError) as e:
        read_layout([header], CsvOptions(ignore_unknown_columns=True))
    assert e.value.reason == "TOO_MANY_COLUMNS"
    with pytest.raises(FileError):
        read_layout([(",".join("title" if i == 0 else f"label:k{i}" for i in range(MAX_COLUMNS + 1))).encode()],
                    CsvOptions())
    data = b"*title,url\n" + b",".join([b"x"] * 10_000) + b"\nB,b.mp4\n"
    _, (wide, good) = scan(data)
    assert wide.error is not None and wide.error.reason == "TOO_MANY_VALUES" and "10000" in wide.error.message
    assert good.fields is not None and good.index == 2


def test_canonical_regexes_match_the_services() -> None:
    from mediajobs.server.services import jobs
    from mediajobs.server.store import templates
    assert c.TEMPLATE_ID_RE.pattern == templates.ID_RE.pattern
    assert c.ULID_RE.pattern == jobs.ID_RE.pattern


# -- resume points, offsets, chunking ---------------------------------------------------------

MIXED = (b"\xef\xbb\xbf# exported by a script\r\n"
         b"*title,url,tags,action,entryId\r\n"
         b"A,a.mp4,\"x, y\",,\r\n"
         b"\n"
         b"\"B\r\nline two\",b.mp4,,update," + ULID.encode() + b"\n"
         b"C\x00,c.mp4,,,\n"
         b"#" + b"c" * (MAX_RECORD_BYTES + 10) + b" \"a long comment\n"
         b"D,d.mp4,,bogus,\n"
         b"E\"unbalanced,e.mp4,,,\n"
         b"F,f.mp4,,,\r\n"
         b"G," + b"g" * (MAX_RECORD_BYTES + 5) + b",,,\n"
         b"Caf\xc3\xa9,h.mp4,,,\n"
         b"\xff,i.mp4,,,\n"
         b"\"J\"x,j.mp4,,,\n"
         b"K\rk,k.mp4,,,\n"
         b"\"L\nM\nN\"\r\n"
         b"O,o.mp4,,,")


def describe(records: list[Record]) -> list[tuple[Any, ...]]:
    return [(r.index, r.line_number, r.line_count, r.byte_offset, r.byte_length,
             r.error.reason if r.error else r.fields and r.fields.name) for r in records]


def test_mixed_file_records_offsets_and_line_numbers() -> None:
    layout, records = scan(MIXED)
    assert layout.version == 3 and layout.data_start.line_number == 3
    assert [(r.index, r.line_number, r.line_count, r.error.reason if r.error else r.fields and r.fields.name)
            for r in records] == [
        (1, 3, 1, "A"), (2, 5, 2, "B\r\nline two"), (3, 7, 1, "NUL_BYTE"), (4, 9, 1, "INVALID_ACTION"),
        (5, 10, 1, "UNBALANCED_QUOTE"), (6, 11, 1, "F"), (7, 12, 1, "RECORD_TOO_LARGE"), (8, 13, 1, "Café"),
        (9, 14, 1, "INVALID_UTF8"), (10, 15, 1, "MALFORMED_CSV"), (11, 16, 1, "MALFORMED_CSV"),
        (12, 17, 3, "L\nM\nN"), (13, 20, 1, "O"),
    ]
    slices = [MIXED[r.byte_offset:r.byte_offset + r.byte_length] for r in records]
    assert slices[0] == b"A,a.mp4,\"x, y\",,\r\n"
    assert slices[1] == b"\"B\r\nline two\",b.mp4,,update," + ULID.encode() + b"\n"
    assert slices[4] == b"E\"unbalanced,e.mp4,,,\n"
    assert slices[6] == b"G," + b"g" * (MAX_RECORD_BYTES + 5) + b",,,\n"
    assert slices[11] == b"\"L\nM\nN\"\r\n"
    assert slices[12] == b"O,o.mp4,,,"
    assert records[-1].end.byte_offset == len(MIXED)
    # every byte between records is a comment or a blank line
    for prev, nxt in zip(records, records[1:]):
        gap = MIXED[prev.end.byte_offset:nxt.byte_offset]
        assert all(not line.strip() or line.lstrip().startswith(b"#") for line in gap.split(b"\n"))


@pytest.mark.parametrize("size", [1, 7, 4096, None])
def test_chunk_boundaries_do_not_change_anything(size: int | None) -> None:
    expected_layout, expected = scan(MIXED)
    layout, records = scan(MIXED, size)
    assert layout == expected_layout
    assert describe(records) == describe(expected)
    assert [r.fields for r in records] == [r.fields for r in expected]


@pytest.mark.parametrize("seed", range(40))
def test_random_files_any_chunking_and_resume(seed: int) -> None:
    rnd = random.Random(seed)
    pieces = [b"a", b"bc", b",", b'"', b'""', b"\n", b"\r\n", b"\r", b" ", b"#", b"*", b"\xc3\xa9", b"\xff", b"\x00"]
    data = b"".join(rnd.choices(pieces, [20, 10, 8, 3, 1, 5, 3, 1, 3, 1, 1, 1, 1, 1], k=rnd.randint(0, 600)))
    options = CsvOptions(header="absent")
    layout, records = scan(data, header="absent")
    for size in (1, rnd.randint(2, 40)):
        assert scan(data, size, header="absent") == (layout, records)
    for i, r in enumerate(records):
        assert list(scan_records([data[r.end.byte_offset:]], options, layout, r.end)) == records[i + 1:]
        if i:
            assert r.byte_offset >= records[i - 1].end.byte_offset


def test_resume_from_every_record_end() -> None:
    options = CsvOptions()
    layout, records = scan(MIXED)
    starts = [layout.data_start] + [r.end for r in records]
    for i, start in enumerate(starts):
        rest = list(scan_records(chunked(MIXED[start.byte_offset:], 5), options, layout, start))
        assert rest == records[i:]
    # a start at byte 0 skips a BOM, as a scan from data_start does
    data = b"\xef\xbb\xbfA,,,a.mp4,video\nB,,,b.mp4,video\n"
    layout, records = scan(data)
    assert layout.data_start == Position(3, 1, 1)
    assert list(scan_records([data], options, layout, Position(0, 1, 1))) == records


# -- hostile input --------------------------------------------------------------------------


def test_unbalanced_quote_among_good_lines() -> None:
    lines = [b"*title,url"] + [b"Good %d,g%d.mp4" % (i, i) for i in range(10_000)]
    lines.insert(5001, b"Bad \"quote,b.mp4")
    _, records = scan(b"\n".join(lines) + b"\n")
    assert errors(records) == [(5002, "UNBALANCED_QUOTE")]
    assert len(records) == 10_001 and sum(r.fields is not None for r in records) == 10_000
    # a quote that opens a value and never closes: one error, not one swallowed file
    _, records = scan(b"*title,url\n\"Open,a.mp4\nB,b.mp4\nC,c.mp4\n")
    assert errors(records) == [(2, "UNBALANCED_QUOTE")] and len(records) == 3


def test_record_line_limit() -> None:
    inner = b"\n".join(b"line %d" % i for i in range(MAX_RECORD_LINES - 1))
    fits = b"*title,description\nA,\"" + inner + b"\nend\"\nB,x\n"
    _, (a, b) = scan(fits)
    assert a.line_count == MAX_RECORD_LINES and a.fields is not None and b.fields is not None
    too_long = b"*title,description\nA,\"" + inner + b"\nmore\nend\"\nB,x\n"
    _, records = scan(too_long)
    # the first line is the error; the next lines are read again as records,
    # and the closing quote's line opens a quote that never closes
    assert errors(records) == [(2, "UNBALANCED_QUOTE"), (MAX_RECORD_LINES + 2, "UNBALANCED_QUOTE")]
    assert records[-1].fields is not None and records[-1].fields.name == "B"


def test_record_byte_limit() -> None:
    def line(n: int) -> bytes:  # a record of exactly n bytes, LF included
        return b"A," + b"x" * (n - 3) + b"\n"
    _, (r,) = scan(b"*title,blob\n" + line(MAX_RECORD_BYTES), ignore_unknown_columns=True)
    assert r.fields is not None and r.byte_length == MAX_RECORD_BYTES
    _, (r, after) = scan(b"*title,blob\n" + line(MAX_RECORD_BYTES + 1) + b"B,b\n", ignore_unknown_columns=True)
    assert r.error is not None and r.error.reason == "RECORD_TOO_LARGE" and r.byte_length == MAX_RECORD_BYTES + 1
    assert after.fields is not None and after.line_number == 3
    # quoted over several lines: still open past the limit -> one error on its first line
    big = b"A,\"" + b"y" * 40_000 + b"\n" + b"z" * 40_000 + b"\"\nB,b\n"
    _, records = scan(b"*title,blob\n" + big, ignore_unknown_columns=True)
    assert errors(records) == [(2, "UNBALANCED_QUOTE"), (3, "UNBALANCED_QUOTE")]
    assert records[-1].fields is not None and records[-1].line_number == 4


def test_nul_and_lone_cr() -> None:
    data = b"*title,url\nA\x00,a.mp4\nB\rX,b.mp4\n\"C\"\rX,c.mp4\n\"D\rX\",d.mp4\nE,e.mp4\r\n"
    _, records = scan(data)
    assert errors(records) == [(2, "NUL_BYTE"), (3, "MALFORMED_CSV"), (4, "MALFORMED_CSV")]
    assert [r.fields.name for r in records if r.fields] == ["D\rX", "E"]


def test_a_ten_mib_line_is_skipped_with_flat_memory() -> None:
    head = b"*title,url\nA,a.mp4\n"
    options = CsvOptions()
    layout = read_layout([head], options)

    def chunks() -> Any:
        yield head + b"B,"
        for _ in range(10):
            yield b"x" * MiB
        yield b",b.mp4\nC,c.mp4\n"

    tracemalloc.start()
    try:
        records = list(scan_records(chunks(), options, layout))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(r.line_number, r.error.reason if r.error else "ok") for r in records] == [
        (2, "ok"), (3, "RECORD_TOO_LARGE"), (4, "ok")]
    assert records[1].byte_length == 2 + 10 * MiB + len(b",b.mp4\n")
    assert peak < 2 * MiB, peak


def test_twenty_thousand_stray_quotes_in_100k_lines() -> None:
    lines = [b"*title,url"]
    for i in range(100_000):
        lines.append(b"Cl\"ip %d,m/%d.mp4" % (i, i) if i % 5 == 4 else b"Clip %d,m/%d.mp4" % (i, i))
    data = b"\n".join(lines) + b"\n"
    _, records = scan(data, 1 * MiB)
    assert len(records) == 100_000
    errs = errors(records)
    # every stray quote is one error on its own line (a pair of them a few lines
    # apart balances, but does not make one CSV record); every other line is read
    assert len(errs) == 20_000
    assert {line for line, _ in errs} == {i + 2 for i in range(100_000) if i % 5 == 4}
    assert {reason for _, reason in errs} == {"UNBALANCED_QUOTE"}
    good = [r for r in records if r.fields is not None]
    assert len(good) == 80_000
    assert all(r.fields is not None and r.fields.name == "Clip %d" % (r.line_number - 2) for r in good)
    assert [r.index for r in records] == list(range(1, 100_001))
