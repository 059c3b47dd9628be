"""Reading a bulk-upload CSV: bytes in, a header layout and one typed item per
data record out (design: bulk-uploads.md sections 2.1, 5.5 and 5.8).

Kaltura's entry CSV is accepted in all its versions (V1: 5 positional
values, V2: 12 positional values, V3: a header whose first name starts with
`*`), plus a plain header of Kaltura or mediajobs column names (version 0).

Hostile input cannot make the reader buffer without bound or lose good
records around a bad one:

- Records are split on bytes before any CSV parsing: on LF (a CR before it
  belongs to the terminator); a record is complete when its count of `"` is
  even. A record still open after MAX_RECORD_BYTES or MAX_RECORD_LINES (or at
  the end of the file), or one whose quotes balance but whose lines do not
  form one CSV record (two stray quotes a few lines apart), is one
  UNBALANCED_QUOTE error on its first physical line only, and splitting
  restarts at its second line. A physical line longer than MAX_RECORD_BYTES
  is one RECORD_TOO_LARGE error, skipped to the next LF without being held in
  memory.
- Each record is decoded and parsed on its own (`csv.reader([text],
  strict=True)` when it holds a quote, a plain split otherwise, which reads
  an unquoted record exactly as csv.reader does), so an error never leaks into
  the next record.
- Memory is bounded by the chunk size plus about 2 x MAX_RECORD_BYTES, however
  large the file or its lines.

Every byte offset is an offset into the file as stored (a UTF-8 BOM
included), so `Record.byte_offset` / `byte_length` slice the original bytes
exactly and `Record.end` is a resume point for `scan_records`.

Lines whose first non-blank byte is `#` are comments, whatever follows (a
quote in a comment opens nothing; a comment longer than a record is skipped
like any other comment), and so are records whose first value starts with
`#`; blank lines and lines of only delimiters and blanks are skipped. Neither
gets a record index (Kaltura's lineIndex), but physical line numbers count
every line.

Header detection (header "auto"): a first record whose first value starts
with `*` is a Kaltura V3 header; one whose values are all known column names
is a plain header (version 0), and so is one where at least half of the
non-empty values are known names (so that a header with a misspelt or custom
column is refused by name, or kept as plugins_data, instead of turning every
record into a "wrong number of values" error); else the file has no header
and each record is V1 or V2 by its count of values.
Empty names at the end of a header and empty values after the last column
are ignored (Excel pads rows to the widest one).

Errors never echo more than a clipped prefix of a value (errors.clip): rows
may carry personal data.
"""
from __future__ import annotations

import codecs
import csv
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator

from ..errors import clip
from ..payloads import MAX_METADATA_ENTRIES, metadata_violations

MAX_RECORD_BYTES = 64 * 1024
"""A record, all its physical lines and their terminators."""
MAX_RECORD_LINES = 64
"""Physical lines in one (quoted, multi-line) record."""
MAX_COLUMNS = 64
"""Columns in a header, values in a data record."""

# Kaltura's KalturaBulkUploadAction numbers.
ADD, UPDATE, DELETE, REPLACE, ADD_OR_UPDATE = 1, 2, 3, 4, 6
ACTION_NAMES = {ADD: "ADD", UPDATE: "UPDATE", DELETE: "DELETE", REPLACE: "REPLACE", ADD_OR_UPDATE: "ADD_OR_UPDATE"}

# The same syntax as store/templates.ID_RE and services/jobs.ID_RE (tests check
# they stay equal); copied so that this module imports no store or service code.
TEMPLATE_ID_RE = re.compile(r"^[a-z][a-z0-9-]{3,62}$")
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")

MAX_NAME_CHARS = 256
MAX_DESCRIPTION_CHARS = 4096
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_REFERENCE_ID_CHARS = 256
MAX_OWNER_CHARS = 128
MAX_PARTNER_DATA_CHARS = 4096

DELIMITERS = (",", ";", "\t", "|")
ENCODINGS = {"utf-8": "utf-8", "utf8": "utf-8", "windows-1252": "windows-1252", "cp1252": "windows-1252"}
HEADER_MODES = ("auto", "present", "absent")

_TRIM = " \t\r\n\x00\x0b\xa0"
"""What values are trimmed of (Kaltura: spaces, tabs, CR/LF, NUL, vertical tab, NBSP)."""


# -- public types ------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvOptions:
    delimiter: str = ","
    encoding: str = "utf-8"
    header: str = "auto"
    ignore_unknown_columns: bool = False

    def __post_init__(self) -> None:
        if self.delimiter not in DELIMITERS:
            raise ValueError(f"delimiter {self.delimiter!r} is not supported; use one of , ; tab |")
        enc = ENCODINGS.get(self.encoding.lower().replace("_", "-"))
        if enc is None:
            raise ValueError(f"encoding {clip(self.encoding)} is not supported; use utf-8 or windows-1252")
        object.__setattr__(self, "encoding", enc)
        if self.header not in HEADER_MODES:
            raise ValueError(f"header {clip(self.header)} is not supported; use auto, present or absent")


@dataclass(frozen=True)
class Position:
    """Where the next record starts: a resume point for scan_records."""
    byte_offset: int
    line_number: int
    """1-based physical line."""
    next_index: int
    """1-based index the next data record gets."""


class FileError(Exception):
    """The file as a whole is refused."""

    def __init__(self, reason: str, message: str, violations: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.violations: list[tuple[str, str]] = list(violations)

    def __repr__(self) -> str:
        return f"FileError({self.reason!r}, {self.message!r})"


@dataclass
class Layout:
    version: int
    """3: Kaltura `*` header; 0: plain header of known names; 1 or 2: no header
    (positional; 1 or 2 by the first record's value count, but every record is
    read as V1 or V2 by its own count)."""
    columns: list[str]
    """Canonical names in file order: an EntryFields attribute (`name`,
    `source`, ...), `label:<key>`, `kaltura.<Column>` (a Kaltura-only column
    kept as a label) or `plugin:<name as written>` (an unknown column kept in
    plugins_data). Positional layouts list the 12 V2 columns. Empty names at the
    end of a header (Excel pads rows) are not included."""
    header_names: list[str]
    """The header's names as written (trimmed, `*` removed); empty for positional."""
    warnings: list[str]
    data_start: Position
    """The first byte after the BOM, the header and the comments before it
    (positional: the first record, after the BOM and leading comments)."""


@dataclass
class EntryFields:
    """A valid record, typed."""
    action: int
    name: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    source: str = ""
    content_type: str = ""
    template_id: str = ""
    reference_id: str = ""
    entry_id: str = ""
    owner: str = ""
    partner_data: str = ""
    schedule_start_time: str = ""
    schedule_end_time: str = ""
    priority: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    plugins_data: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordError:
    reason: str
    message: str
    column: str = ""


@dataclass
class Record:
    index: int
    """1-based data record index (Kaltura's lineIndex)."""
    line_number: int
    """1-based physical line where the record starts."""
    line_count: int
    byte_offset: int
    byte_length: int
    """Up to and including its line terminator (none after the last line of a
    file that does not end with one)."""
    fields: EntryFields | None
    error: RecordError | None

    @property
    def end(self) -> Position:
        return Position(self.byte_offset + self.byte_length, self.line_number + self.line_count, self.index + 1)


# -- the record splitter ------------------------------------------------------------------

_REC, _TOO_LARGE, _UNBALANCED = 0, 1, 2
_PIECE = 64 * 1024
"""Chunks are split into pieces of at most this size before a partial record
is joined to them, so no copy is larger than 2 x MAX_RECORD_BYTES."""
_LEADING_BLANKS = frozenset(b" \t\r\x0b#")
_BLANK_BYTES = b" \t\r\x0b"

_Split = tuple[int, int, int, int, int, bytes]
"""(kind, byte offset, line number, line count, byte length, data): data is the
record without its final LF (_REC), else empty."""


def _is_comment(line: bytes) -> bool:
    """Whether a physical line is a `#` comment (looks at its first 1 KiB only,
    so that the answer never depends on how much of a long line was seen)."""
    return line[:1024].lstrip(_BLANK_BYTES)[:1] == b"#"


def _pieces(chunks: Iterable[bytes], skip: int) -> Iterator[tuple[bytes, bool]]:
    """The bytes of `chunks` after the first `skip`, as pieces of about _PIECE
    bytes (large chunks are cut, small ones joined, so that a partial record is
    never joined to a large chunk, and tiny chunks cost no more than large
    ones), then (b"", True)."""
    small: list[bytes] = []
    small_size = 0
    it = iter(chunks)
    got: bytes | None
    while True:
        chunk = got = b""  # let the previous chunk go before the next one is made
        got = next(it, None)
        if got is None:
            break
        chunk, got = (got if type(got) is bytes else bytes(got)), b""
        n = len(chunk)
        p0 = 0
        if skip:
            if n <= skip:
                skip -= n
                continue
            p0, skip = skip, 0
        if n - p0 < _PIECE:
            small.append(chunk[p0:] if p0 else chunk)
            small_size += n - p0
            if small_size >= _PIECE:
                yield b"".join(small), False
                small, small_size = [], 0
            continue
        if small:
            yield b"".join(small), False
            small, small_size = [], 0
        if p0 == 0 and n == _PIECE:
            yield chunk, False
        else:
            for p in range(p0, n, _PIECE):
                yield chunk[p:p + _PIECE], False
    if small:
        yield b"".join(small), False
    yield b"", True


def _structure_ok(data: bytes, delimiter: str) -> bool:
    """Whether a multi-line record whose quotes balance is one CSV record.
    Latin-1 maps every byte to one character, and every byte that matters to
    CSV is ASCII, so the answer is the same for UTF-8 and windows-1252."""
    try:
        rows = list(csv.reader([data.decode("latin-1")], delimiter=delimiter, strict=True))
    except csv.Error:
        return False
    return len(rows) == 1


def _split(chunks: Iterable[bytes], skip: int, offset: int, line: int, delimiter: str) -> Iterator[_Split]:
    """The records of the bytes in `chunks` after their first `skip` bytes,
    which start at file offset `offset` on physical line `line`. Comment lines
    and empty lines are skipped here (they have no record); everything else is
    yielded."""
    limit = MAX_RECORD_BYTES
    max_lines = MAX_RECORD_LINES
    leading = _LEADING_BLANKS
    tail = b""
    skipping = False
    skip_off = skip_line = skip_len = 0
    skip_comment = False
    for sub, final in _pieces(chunks, skip):
        if skipping:
            j = sub.find(b"\n")
            if j < 0 and not final:
                skip_len += len(sub)
                continue
            skip_len += j + 1 if j >= 0 else 0
            if not skip_comment:
                yield (_TOO_LARGE, skip_off, skip_line, 1, skip_len, b"")
            skipping = False
            offset = skip_off + skip_len
            line = skip_line + 1
            if j < 0:
                return
            sub = sub[j + 1:]
        buf = tail + sub if tail else sub
        lines = buf.split(b"\n")
        last = len(lines) - 1  # lines[last] follows the last LF: a partial line (or b"")
        complete = last + 1 if final and lines[last] else last
        i = 0
        pos = 0  # offset of lines[i] in buf
        more = False
        while i < complete:
            ln = lines[i]
            size = len(ln) + 1 if i < last else len(ln)
            if ln:
                if ln[0] in leading and _is_comment(ln):
                    pos += size
                    line += 1
                    i += 1
                    continue
            if size > limit:
                yield (_TOO_LARGE, offset + pos, line, 1, size, b"")
                pos += size
                line += 1
                i += 1
                continue
            if b'"' in ln and ln.count(b'"') & 1:
                # An open quote: the record goes on until its quotes balance.
                total = size
                nl = 1
                k = i
                done = False
                while True:
                    k += 1
                    if k >= complete:
                        if not final and total + len(lines[last]) <= limit:
                            more = True  # decided by bytes not seen yet
                        break
                    lk = lines[k]
                    total += len(lk) + 1 if k < last else len(lk)
                    nl += 1
                    if total > limit:
                        break
                    if b'"' in lk and lk.count(b'"') & 1:
                        data = b"\n".join(lines[i:k + 1])
                        done = _structure_ok(data, delimiter)
                        break
                    if nl >= max_lines:
                        break
                if more:
                    break
                if done:
                    yield (_REC, offset + pos, line, nl, total, data)
                    pos += total
                    line += nl
                    i = k + 1
                else:
                    yield (_UNBALANCED, offset + pos, line, 1, size, b"")
                    pos += size
                    line += 1
                    i += 1
                continue
            if ln and ln != b"\r":
                yield (_REC, offset + pos, line, 1, size, ln)
            pos += size
            line += 1
            i += 1
        if final:
            return
        offset += pos
        tail = buf[pos:]
        if not more and len(tail) > limit:
            # One physical line longer than a record may be: skip it to its LF.
            skipping = True
            skip_off, skip_line, skip_len = offset, line, len(tail)
            skip_comment = _is_comment(tail)
            tail = b""


# -- decoding and parsing one record -------------------------------------------------------

_CP1252_TABLE = "".join(
    bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(256)
)
"""windows-1252 as WHATWG decodes it: the five bytes cp1252 leaves undefined
(0x81, 0x8D, 0x8F, 0x90, 0x9D) map to the C1 controls of the same number."""
_charmap_decode = codecs.charmap_decode


def _decode(data: bytes, utf8: bool) -> str | RecordError:
    if utf8:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            return RecordError(
                "INVALID_UTF8",
                f"invalid UTF-8 at byte {e.start} of the record; save the file as CSV UTF-8, "
                "or upload it with encoding windows-1252",
            )
    return _charmap_decode(data, "strict", _CP1252_TABLE)[0]


def _parse(data: bytes, options: CsvOptions) -> list[str] | RecordError:
    """The trimmed values of one record (data: its bytes without the final LF)."""
    if b"\x00" in data:
        return RecordError("NUL_BYTE", f"a NUL byte at byte {data.index(0)} of the record")
    text = _decode(data, options.encoding == "utf-8")
    if isinstance(text, RecordError):
        return text
    if text[-1:] == "\r":
        text = text[:-1]
    if '"' in text:
        try:
            rows = list(csv.reader([text], delimiter=options.delimiter, strict=True))
        except csv.Error as e:
            if "new-line character" in str(e):
                return RecordError("MALFORMED_CSV", "a CR outside quotes that does not end the line")
            return RecordError("MALFORMED_CSV", f"not a CSV record: {e}")
        if len(rows) != 1:
            return RecordError("MALFORMED_CSV", "not one CSV record")
        raw = rows[0]
    else:
        if "\r" in text:
            return RecordError("MALFORMED_CSV", "a CR outside quotes that does not end the line")
        raw = text.split(options.delimiter)
    return [v.strip(_TRIM) for v in raw]


def _skipped(values: list[str]) -> bool:
    """A comment (first value starts with `#`) or a blank record."""
    first = values[0] if values else ""
    if first:
        return first[0] == "#"
    return not any(values)


# -- columns ---------------------------------------------------------------------------------

_MAPPED: dict[str, str] = {
    "title": "name", "name": "name",
    "description": "description",
    "tags": "tags",
    "url": "source", "source_uri": "source", "source": "source",
    "contenttype": "content_type", "content_type": "content_type",
    "conversionprofileid": "template_id", "template_id": "template_id",
    "referenceid": "reference_id", "reference_id": "reference_id",
    "entryid": "entry_id", "entry_id": "entry_id",
    "action": "action",
    "ownerid": "owner", "creatorid": "owner", "owner": "owner",
    "partnerdata": "partner_data", "partner_data": "partner_data",
    "schedulestartdate": "schedule_start_time", "schedule_start_time": "schedule_start_time",
    "scheduleenddate": "schedule_end_time", "schedule_end_time": "schedule_end_time",
    "priority": "priority",
}
"""Column names (lower-cased Kaltura names and mediajobs aliases) -> EntryFields attribute."""

_KALTURA_ONLY = {
    name.lower(): name
    for name in ("category", "thumbnailUrl", "accessControlProfileId", "entitledUsersEdit",
                 "entitledUsersPublish", "entitledUsersView", "templateEntryId")
}
_SSH = {name.lower(): name for name in ("sshPrivateKey", "sshPublicKey", "sshKeyPassphrase")}
_LABEL_PREFIX = "label:"

ACCEPTED_COLUMNS = (
    "title/name, description, tags, url/source_uri/source, contentType/content_type, "
    "conversionProfileId/template_id, referenceId/reference_id, entryId/entry_id, action, "
    "ownerId/creatorId/owner, partnerData/partner_data, scheduleStartDate/schedule_start_time, "
    "scheduleEndDate/schedule_end_time, priority, label:<key>, and Kaltura's category, thumbnailUrl, "
    "accessControlProfileId, entitledUsersEdit, entitledUsersPublish, entitledUsersView, templateEntryId "
    "(kept as labels kaltura.<column>)"
)

V1_COLUMNS = ("title", "description", "tags", "url", "contentType")
V2_COLUMNS = V1_COLUMNS + (
    "conversionProfileId", "accessControlProfileId", "category", "scheduleStartDate", "scheduleEndDate",
    "thumbnailUrl", "partnerData",
)
"""Kaltura's getV2Columns() lists the three SSH columns after partnerData too,
but VALUES_COUNT_V2 is 12, so a V2 record never reaches them: they are filled
only by a 15-value record, which Kaltura refuses ("Wrong number of values")
and mediajobs refuses as a file holding SSH keys when any of them is set."""
_SSH_POSITIONAL = len(V2_COLUMNS) + 3

_KALTURA_ONLY_WARNING = (
    "are kept as entry labels kaltura.<column>: mediajobs has no categories, thumbnails, access control "
    "profiles, entitlements or template entries yet"
)


def _known(name: str) -> bool:
    low = name.lower()
    return low in _MAPPED or low in _KALTURA_ONLY or low in _SSH or low.startswith(_LABEL_PREFIX)


def _canonical(name: str) -> str:
    low = name.lower()
    if low in _MAPPED:
        return _MAPPED[low]
    if low in _KALTURA_ONLY:
        return "kaltura." + _KALTURA_ONLY[low]
    if low.startswith(_LABEL_PREFIX):
        return _LABEL_PREFIX + name[len(_LABEL_PREFIX):].strip(_TRIM)
    return "plugin:" + name


def _short(name: str) -> str:
    """A header name as a violation's field: as written, cut to 64 characters."""
    return name if len(name) <= 64 else name[:63] + "…"


def _header_layout(names: list[str], version: int, options: CsvOptions, data_start: Position) -> Layout:
    """The layout of a header (names trimmed, `*` removed); raises FileError."""
    while names and not names[-1]:
        names = names[:-1]  # Excel pads rows with empty cells
    if len(names) > MAX_COLUMNS:
        raise FileError("TOO_MANY_COLUMNS", f"the header has {len(names)} columns; at most {MAX_COLUMNS}",
                        [("file", f"{len(names)} columns; at most {MAX_COLUMNS}")])
    if not names:
        raise FileError("NO_HEADER", "the header names no columns", [("file", "the header names no columns")])
    ssh = [n for n in names if n.lower() in _SSH]
    if ssh:
        raise FileError(
            "SSH_KEYS_NOT_ACCEPTED",
            f"the header has SSH key columns ({', '.join(ssh)}): mediajobs does not fetch media over SSH and keeps "
            "no key material; remove these columns (and the keys) from the file",
            [(n, "SSH key columns are not accepted") for n in ssh],
        )
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise FileError("EMPTY_COLUMN_NAME", f"header column {empty[0]} has no name; name every column",
                        [(f"column {i}", "no name") for i in empty])
    for n in names:
        if n.lower().startswith(_LABEL_PREFIX):
            key = n[len(_LABEL_PREFIX):].strip(_TRIM)
            if not key or len(key) > 128:
                raise FileError("INVALID_HEADER", f"column {clip(n)}: a label column is label:<key>, with a key of "
                                "1-128 characters", [(_short(n), "label:<key> with a key of 1-128 characters")])
    unknown = [n for n in names if not _known(n)]
    if unknown and not options.ignore_unknown_columns:
        shown = ", ".join(clip(n, 32) for n in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10
                                                                else "")
        raise FileError(
            "UNKNOWN_COLUMNS",
            f"unknown columns {shown}; accepted: {ACCEPTED_COLUMNS}; or upload with ignore_unknown_columns to keep "
            "them as plugins_data",
            [(_short(n), "not a column mediajobs knows") for n in unknown],
        )
    columns = [_canonical(n) for n in names]
    seen: dict[str, str] = {}
    for n, c in zip(names, columns):
        # label:<key> and a Kaltura-only column both write labels[<key>]
        key = "labels:" + c[len(_LABEL_PREFIX):] if c.startswith(_LABEL_PREFIX) else (
            "labels:" + c if c.startswith("kaltura.") else c)
        if key in seen:
            raise FileError("DUPLICATE_COLUMN", f"columns {clip(seen[key], 32)} and {clip(n, 32)} are the same column "
                            f"({c}); keep one", [(_short(n), f"the same column as {clip(seen[key], 32)}")])
        seen[key] = n
    warnings = []
    kaltura = [n for n, c in zip(names, columns) if c.startswith("kaltura.")]
    if kaltura:
        warnings.append(f"columns {', '.join(kaltura)} {_KALTURA_ONLY_WARNING}")
    if unknown:
        warnings.append(f"columns {', '.join(clip(n, 32) for n in unknown[:10])} are not mediajobs columns; kept as "
                        "plugins_data (ignore_unknown_columns)")
    return Layout(version, columns, names, warnings, data_start)


def _positional_layout(first_count: int, data_start: Position) -> Layout:
    version = 2 if first_count == len(V2_COLUMNS) else 1
    warnings = []
    if version == 2:
        warnings.append("columns accessControlProfileId, category, thumbnailUrl " + _KALTURA_ONLY_WARNING)
    return Layout(version, [_canonical(n) for n in V2_COLUMNS], [], warnings, data_start)


def _looks_like_header(values: list[str]) -> bool:
    """Every value is a column name (a plain header); or at least half of the
    non-empty ones are, so that a header with a misspelt or custom column is
    refused by name (or kept as plugins_data) instead of read as data."""
    known = sum(1 for v in values if v and _known(v))
    named = sum(1 for v in values if v)
    return known == len(values) or (known >= 1 and 2 * known >= named)


# -- the BOM ---------------------------------------------------------------------------------

_UTF8_BOM = b"\xef\xbb\xbf"


def _open(chunks: Iterable[bytes], check_utf16: bool) -> tuple[Iterator[bytes], int]:
    """The chunks (unchanged), and how many bytes of BOM they start with."""
    it = iter(chunks)
    head: list[bytes] = []
    size = 0
    for chunk in it:
        head.append(chunk)
        size += len(chunk)
        if size >= 4:
            break
    first = b"".join(c[:4] for c in head[:4])[:4]
    if check_utf16 and first[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise FileError("UTF16_NOT_SUPPORTED", "the file is UTF-16 (it starts with a UTF-16 byte order mark); save it "
                        "as CSV UTF-8", [("file", "UTF-16; save as CSV UTF-8")])
    return _replay(head, it), 3 if first[:3] == _UTF8_BOM else 0


def _replay(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """head's chunks, then rest's (holding none of head's once it is passed)."""
    head.reverse()
    while head:
        yield head.pop()
    yield from rest


# -- read_layout -------------------------------------------------------------------------------


def read_layout(chunks: Iterable[bytes], options: CsvOptions) -> Layout:
    """The header layout of a file: reads the BOM, comments and blank lines and
    the first record, no further (`chunks` are the file's bytes from byte 0).
    Raises FileError when the file as a whole is refused."""
    stream, start = _open(chunks, True)
    first: tuple[_Split, list[str] | RecordError] | None = None
    for rec in _split(stream, start, start, 1, options.delimiter):
        if rec[0] == _REC:
            parsed = _parse(rec[5], options)
            if isinstance(parsed, list) and _skipped(parsed):
                continue
            first = (rec, parsed)
        else:
            if rec[0] == _UNBALANCED:
                first = (rec, RecordError("UNBALANCED_QUOTE", "a quote opened on it is not closed within "
                                          f"{MAX_RECORD_LINES} lines and {MAX_RECORD_BYTES} bytes"))
            else:
                first = (rec, RecordError("RECORD_TOO_LARGE", f"it has {rec[4]} bytes; a record (a header "
                                          f"included) may have at most {MAX_RECORD_BYTES} bytes (64 KiB)"))
        break
    if first is None:
        if options.header == "present":
            raise FileError("NO_HEADER", "the file has no header (no records at all)", [("file", "no header")])
        return _positional_layout(0, Position(start, 1, 1))
    (_, off, line, nl, size, _), parsed = first
    at = Position(off, line, 1)
    if options.header == "absent":
        return _positional_layout(len(parsed) if isinstance(parsed, list) else 0, at)
    if isinstance(parsed, RecordError):
        why = f"{parsed.reason} ({parsed.message})" if parsed.message else parsed.reason
        raise FileError("INVALID_HEADER", f"the first record (line {line}) cannot be read: {why}; fix it, or upload "
                        "with header absent if the file has no header", [("file", parsed.reason)])
    after = Position(off + size, line + nl, 1)
    if parsed[0].startswith("*"):
        names = [parsed[0][1:].strip(_TRIM)] + parsed[1:]
        return _header_layout(names, 3, options, after)
    if options.header == "present" or _looks_like_header(parsed):
        return _header_layout(parsed, 0, options, after)
    return _positional_layout(len(parsed), at)


# -- validating one record ----------------------------------------------------------------

(_C_TEXT, _C_TAGS, _C_SOURCE, _C_CTYPE, _C_TEMPLATE, _C_ENTRY, _C_ACTION, _C_START, _C_END, _C_PRIORITY,
 _C_LABEL, _C_PLUGIN) = range(12)

_TEXT_LIMITS = {
    "name": MAX_NAME_CHARS, "description": MAX_DESCRIPTION_CHARS, "reference_id": MAX_REFERENCE_ID_CHARS,
    "owner": MAX_OWNER_CHARS, "partner_data": MAX_PARTNER_DATA_CHARS,
}
_CODES = {
    "tags": _C_TAGS, "source": _C_SOURCE, "content_type": _C_CTYPE, "template_id": _C_TEMPLATE,
    "entry_id": _C_ENTRY, "action": _C_ACTION, "schedule_start_time": _C_START, "schedule_end_time": _C_END,
    "priority": _C_PRIORITY,
}

_ACTIONS = {
    "add": ADD, "update": UPDATE, "delete": DELETE, "replace": REPLACE,
    "add_or_update": ADD_OR_UPDATE, "addorupdate": ADD_OR_UPDATE, "add-or-update": ADD_OR_UPDATE,
    "1": ADD, "2": UPDATE, "3": DELETE, "4": REPLACE, "6": ADD_OR_UPDATE,
}
_PRIORITIES = {"lowest": 1, "low": 2, "medium": 3, "high": 4, "highest": 5, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5}
_CONTENT_TYPES = {"video": "video", "audio": "audio", "image": "image"}
_URL_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_DATE_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):(\d{2}))?\Z"
)

_Col = tuple[int, str, int, str, str]
"""(code, attribute or key, character limit, canonical name, name as written)."""


def _plan(columns: Iterable[str], names: Iterable[str]) -> list[_Col]:
    plan: list[_Col] = []
    for c, n in zip(columns, names):
        if c in _TEXT_LIMITS:
            plan.append((_C_TEXT, c, _TEXT_LIMITS[c], c, n))
        elif c in _CODES:
            plan.append((_CODES[c], c, 0, c, n))
        elif c.startswith(_LABEL_PREFIX):
            plan.append((_C_LABEL, c[len(_LABEL_PREFIX):], 0, c, n))
        elif c.startswith("kaltura."):
            plan.append((_C_LABEL, c, 0, c, n))
        elif c.startswith("plugin:"):
            plan.append((_C_PLUGIN, c[len("plugin:"):], 0, c, n))
        else:
            raise ValueError(f"layout column {c!r} is not a canonical column name")
    return plan


def _date(value: str) -> datetime | None:
    m = _DATE_RE.match(value)
    if m is None:
        return None
    y, mo, d, h, mi, s, z, sign, oh, om = m.groups()
    try:
        if sign is not None:
            if int(oh) > 23 or int(om) > 59:
                return None
            delta = timedelta(hours=int(oh), minutes=int(om))
            tz = timezone(delta if sign == "+" else -delta)
        else:
            tz = timezone.utc
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=tz).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def _fail(reason: str, col: _Col, message: str) -> RecordError:
    return RecordError(reason, f"{col[4]}: {message}", col[3])


_template_ids: dict[str, None] = {}
"""Template ids already checked (most files name a handful); bounded."""


def _column(plan: list[_Col], canonical: str) -> _Col | None:
    for col in plan:
        if col[3] == canonical:
            return col
    return None


def _convert(values: list[str], plan: list[_Col]) -> EntryFields | RecordError:
    """The typed fields of one record (values beyond the plan are ignored)."""
    f = EntryFields(ADD)
    labels: dict[str, str] | None = None
    action_given = False
    start: datetime | None = None
    end: datetime | None = None
    for v, col in zip(values, plan):
        if not v:
            continue
        code = col[0]
        if code == _C_TEXT:
            if len(v) > col[2]:
                return _fail("VALUE_TOO_LONG", col, f"at most {col[2]} characters, got {len(v)}")
            setattr(f, col[1], v)
        elif code == _C_SOURCE:
            if ":" in v:
                low = v[:8].lower()
                if low.startswith(("sftp:", "scp:")):
                    return _fail("SOURCE_SCHEME_UNSUPPORTED", col, f"{clip(v)}: mediajobs does not fetch media over "
                                 "SSH; put the file under the storage root and give its relative path")
                if not low.startswith("file://") and _URL_SCHEME_RE.match(v):
                    return _fail("SOURCE_SCHEME_UNSUPPORTED", col, f"{clip(v)}: URL imports are not supported yet; "
                                 "put the file under the storage root and give its relative path")
            f.source = v
        elif code == _C_TAGS:
            if "," in v:
                tags = list(dict.fromkeys(t for t in (t.strip(_TRIM) for t in v.split(",")) if t))
            else:
                tags = [v]
            for t in tags:
                if len(t) > MAX_TAG_CHARS:
                    return _fail("INVALID_VALUE", col, f"tag {clip(t)} is longer than {MAX_TAG_CHARS} characters")
            if len(tags) > MAX_TAGS:
                return _fail("INVALID_VALUE", col, f"at most {MAX_TAGS} tags, got {len(tags)}")
            f.tags = tags
        elif code == _C_CTYPE:
            ct = _CONTENT_TYPES.get(v) or _CONTENT_TYPES.get(v.lower())
            if ct is None:
                return _fail("INVALID_VALUE", col, f"{clip(v)} is not a content type; use video, audio or image")
            f.content_type = ct
        elif code == _C_TEMPLATE:
            if v not in _template_ids:
                if v == "-1":
                    continue
                if not TEMPLATE_ID_RE.match(v):
                    return _fail("INVALID_VALUE", col, f"{clip(v)} is not a template id: template ids look like "
                                 "h264-ladder (4-63 lowercase letters, digits or '-', starting with a letter; "
                                 "Kaltura's numeric conversion profile ids are not template ids)")
                if len(_template_ids) >= 1024:
                    _template_ids.clear()
                _template_ids[v] = None
            f.template_id = v
        elif code == _C_ENTRY:
            u = v.upper()
            if not ULID_RE.match(u):
                return _fail("INVALID_VALUE", col, f"{clip(v)} is not an entry id (a 26-character ULID such as "
                             "01HA255YE6H6DEETJ5M6595ZDA)")
            f.entry_id = u
        elif code == _C_ACTION:
            a = _ACTIONS.get(v) or _ACTIONS.get(v.lower())
            if a is None:
                return _fail("INVALID_ACTION", col, f"{clip(v)} is not an action; use add, update, delete, replace, "
                             "add_or_update or Kaltura's numbers 1, 2, 3, 4, 6")
            f.action = a
            action_given = True
        elif code == _C_START or code == _C_END:
            when = _date(v)
            if when is None:
                return _fail("INVALID_DATE", col, f"{clip(v)} is not a date; use YYYY-MM-DDTHH:MM:SS (UTC) or "
                             "RFC 3339 with an offset, such as 2026-05-01T09:30:00+02:00")
            text = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            if code == _C_START:
                start, f.schedule_start_time = when, text
            else:
                end, f.schedule_end_time = when, text
        elif code == _C_PRIORITY:
            p = _PRIORITIES.get(v) or _PRIORITIES.get(v.lower())
            if p is None:
                return _fail("INVALID_VALUE", col, f"{clip(v)} is not a priority; use LOWEST, LOW, MEDIUM, HIGH, "
                             "HIGHEST or 1-5")
            f.priority = p
        elif code == _C_LABEL:
            if labels is None:
                labels = f.labels
            labels[col[1]] = v
        else:  # _C_PLUGIN
            f.plugins_data[col[1]] = v
    action = f.action
    if action == ADD:
        if not f.name:
            return RecordError("MISSING_VALUE", "title (name): required to add an entry" + (
                "" if action_given else " (the action is add when none is given)"), "name")
    elif action == ADD_OR_UPDATE:
        if not f.reference_id:
            return RecordError("MISSING_VALUE", "referenceId (reference_id): required for add_or_update, which matches "
                               "entries by reference id", "reference_id")
    elif not f.entry_id:
        return RecordError("MISSING_VALUE", f"entryId (entry_id): required for {ACTION_NAMES[action].lower()}",
                           "entry_id")
    elif action == REPLACE and not f.source:
        return RecordError("MISSING_VALUE", "url (source): replace needs the new media file", "source")
    if start is not None and end is not None and end <= start:
        end_col = _column(plan, "schedule_end_time")
        assert end_col is not None
        return _fail("INVALID_DATE", end_col, "the schedule must end after it starts")
    if labels is not None:
        return _label_error(labels, plan) or f
    return f


def _label_error(labels: dict[str, str], plan: list[_Col]) -> RecordError | None:
    if len(labels) > MAX_METADATA_ENTRIES:
        return RecordError("LABELS_INVALID", f"at most {MAX_METADATA_ENTRIES} labels, got {len(labels)}", "labels")
    found = metadata_violations(labels, "labels")
    if not found:
        return None
    path, why = found[0]
    column = "labels"
    for col in plan:
        if col[0] == _C_LABEL and path == f"labels[{clip(col[1], 32)}]":
            column = col[3]
            path = col[4]
    return RecordError("LABELS_INVALID", f"{path}: {why}", column)


# -- scan_records ------------------------------------------------------------------------------


def _wrong_count(n: int, line: int) -> RecordError:
    return RecordError(
        "WRONG_NUMBER_OF_VALUES",
        f"Wrong number of values on line {line} (expected {len(V1_COLUMNS)} or {len(V2_COLUMNS)} without a header, "
        f"got {n})",
    )


def scan_records(
    chunks: Iterable[bytes], options: CsvOptions, layout: Layout, start: Position | None = None,
    check_fields: bool = True,
) -> Iterator[Record]:
    """Every data record of the file, in order, from `start`.

    With `start` None, `chunks` are the whole file from byte 0 and the scan
    begins at `layout.data_start` (the bytes before it are read and dropped).
    With a `start` (a Record.end, or layout.data_start), `chunks` are the file's
    bytes from `start.byte_offset` on; the records yielded are exactly those a
    scan from the beginning yields after that point, with the same indexes,
    line numbers and offsets.

    Raises FileError for a file-level problem found in the data: a positional
    record of 15 values (Kaltura's V2 names including the three SSH columns)
    with an SSH key value set.

    With check_fields False, records are found and numbered exactly the same
    but their values are not converted or checked (fields and error None,
    except for errors of the record itself): counting a file's records at
    the end of its upload costs a third as much."""
    skip = 0
    if start is None:
        start = layout.data_start
        skip = start.byte_offset
    elif start.byte_offset == 0:
        chunks, skip = _open(chunks, False)
        start = Position(skip, start.line_number, start.next_index)
    delimiter = options.delimiter
    utf8 = options.encoding == "utf-8"
    trim = _TRIM
    positional = layout.version in (1, 2)
    if positional:
        v2 = _plan(layout.columns, V2_COLUMNS)
        plans = {len(V1_COLUMNS): v2[: len(V1_COLUMNS)], len(V2_COLUMNS): v2}
        plan: list[_Col] = v2
        ncols = len(v2)
    else:
        plan = _plan(layout.columns, layout.header_names)
        plans = {}
        ncols = len(plan)
    index = start.next_index
    for kind, off, line, nl, size, data in _split(chunks, skip, start.byte_offset, start.line_number, delimiter):
        if kind != _REC:
            if kind == _TOO_LARGE:
                err = RecordError("RECORD_TOO_LARGE", f"a line of {size} bytes; a record may have at most "
                                  f"{MAX_RECORD_BYTES} bytes")
            else:
                err = RecordError("UNBALANCED_QUOTE", "a quote opened on this line is not closed within "
                                  f"{MAX_RECORD_LINES} lines and {MAX_RECORD_BYTES} bytes, or not where a value "
                                  "ends; the next line is read as a new record")
            yield Record(index, line, 1, off, size, None, err)
            index += 1
            continue
        # Decode and split (the common case inline; _parse for the rest).
        if b"\x00" in data or b'"' in data or not utf8:
            parsed = _parse(data, options)
            if isinstance(parsed, RecordError):
                yield Record(index, line, nl, off, size, None, parsed)
                index += 1
                continue
            values = parsed
        else:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                bad = _decode(data, True)
                assert isinstance(bad, RecordError)
                yield Record(index, line, nl, off, size, None, bad)
                index += 1
                continue
            if "\r" in text:
                if text[-1] == "\r":
                    text = text[:-1]
                if "\r" in text:
                    yield Record(index, line, nl, off, size, None,
                                 RecordError("MALFORMED_CSV", "a CR outside quotes that does not end the line"))
                    index += 1
                    continue
            values = [v.strip(trim) for v in text.split(delimiter)]
        first = values[0]
        if first:
            if first[0] == "#":
                continue
        elif not any(values):
            continue
        n = len(values)
        result: EntryFields | RecordError
        if not check_fields and not positional:
            yield Record(index, line, nl, off, size, None, None)
            index += 1
            continue
        if n > MAX_COLUMNS:
            result = RecordError("TOO_MANY_VALUES", f"{n} values; a record may have at most {MAX_COLUMNS}")
        elif positional:
            p = plans.get(n)
            if p is not None:
                result = _convert(values, p)
            elif n == _SSH_POSITIONAL and any(values[len(V2_COLUMNS):]):
                raise FileError(
                    "SSH_KEYS_NOT_ACCEPTED",
                    f"line {line} has values in Kaltura's SSH key columns (sshPrivateKey, sshPublicKey, "
                    "sshKeyPassphrase): mediajobs does not fetch media over SSH and keeps no key material; remove "
                    "the keys from the file",
                    [(f"line {line}", "SSH key values are not accepted")],
                )
            else:
                result = _wrong_count(n, line)
        elif n > ncols and any(values[ncols:]):
            result = RecordError("TOO_MANY_VALUES", f"{n} values, but the header has {ncols} columns")
        else:
            result = _convert(values, plan)
        if type(result) is EntryFields:
            yield Record(index, line, nl, off, size, result, None)
        else:
            assert isinstance(result, RecordError)
            yield Record(index, line, nl, off, size, None, result)
        index += 1
