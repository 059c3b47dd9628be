"""Cue points: XML import (Kaltura `annotation.addFromBulk`) and export
(Kaltura `annotation.serveBulk`).

XML format
----------

ExportCuePoints writes this format and ImportCuePoints reads it back::

    <?xml version="1.0" encoding="UTF-8"?>
    <scenes>
      <scene-annotation entryId="01J9ZQ..." systemName="chapter-1">
        <sceneStartTime>00:00:05.000</sceneStartTime>
        <sceneEndTime>00:00:10.500</sceneEndTime>
        <tags><tag>intro</tag><tag>recap</tag></tags>
        <title>Chapter 1</title>
        <sceneText>Welcome</sceneText>
        <description>The opening</description>
        <partnerData>{"k": 1}</partnerData>
      </scene-annotation>
      <scene-ad-cue-point entryId="01J9ZQ...">
        <sceneStartTime>00:01:00.000</sceneStartTime>
        <title>Mid-roll</title>
        <sourceUrl>https://ads.example.com/vast.xml</sourceUrl>
        <adType>VIDEO</adType>
      </scene-ad-cue-point>
      <scene-code-cue-point entryId="01J9ZQ...">
        <sceneStartTime>90000</sceneStartTime>
        <code>SHOW_POLL</code>
        <description>Poll 3</description>
      </scene-code-cue-point>
      <scene-thumb-cue-point entryId="01J9ZQ...">
        <sceneStartTime>00:02:00.000</sceneStartTime>
        <title>Slide 4</title>
        <subType>SLIDE</subType>
      </scene-thumb-cue-point>
      <scene-event-cue-point entryId="01J9ZQ...">
        <sceneStartTime>00:00:00.000</sceneStartTime>
      </scene-event-cue-point>
    </scenes>

- The root element is `<scenes>`; each child is one cue point, and its name
  gives CuePoint.type: `scene-annotation` ANNOTATION, `scene-ad-cue-point`
  AD, `scene-code-cue-point` CODE, `scene-thumb-cue-point` THUMB,
  `scene-event-cue-point` EVENT.
- Attributes: `entryId` (required; the entry must exist), `systemName`
  (optional, CuePoint.system_name). Export also writes `sceneId` (the cue
  point's id); import ignores it and every other attribute, and gives each
  created cue point a new id.
- `sceneStartTime` (required) and `sceneEndTime` (optional, at least the
  start; absent = a point, not a range): `HH:MM:SS.mmm` (hours may have more
  digits, 1-3 fraction digits, the fraction is optional) or an integer
  number of milliseconds.
- Optional text elements, allowed on every kind (the usual ones are in the
  example): `title` (title), `sceneText` (text), `description`, `code`,
  `sourceUrl` (source_url), `subType` (sub_type; `adType` on ads),
  `partnerData` (partner_data). Their text is kept exactly, whitespace
  included; elements inside them are an error.
- `tags`: `<tag>` children; surrounding whitespace is stripped, duplicates are
  dropped.
- Kaltura's read-only `createdAt`, `updatedAt` and `userId` elements are
  ignored; any other element is an error of that item.

Limits
------

A whole document is rejected (INVALID_ARGUMENT on field `xml`, nothing
created) when it is larger than 8 MiB, not well-formed, has a DTD (so no
entities and no external references), nests elements more than 16 deep,
holds more than 10,000 cue-point elements, has one tag, comment or other
markup construct larger than 256 KiB, or its root is not `<scenes>`.

Each cue point is checked on its own; an invalid one is reported in
ImportCuePointsResponse.errors (index, line, entryId, what is wrong) and the
valid ones are created, in one transaction. Per item: `entryId` present and
an existing entry, times valid and end >= start, no unknown elements, and at
most 256 characters for title, systemName and subType, 4096 for sceneText,
description and partnerData, 1024 for code, 2048 for sourceUrl, and at most
32 tags of at most 64 characters each.

Export pages hold at most `page_size` cue points (default 500, at most
10,000) and end early rather than grow past MAX_EXPORT_DOCUMENT_BYTES (4 MiB
less 64 KiB), so every page fits a client with gRPC's default 4 MiB receive
limit and can be imported as it is. Characters XML 1.0 cannot hold (import
never stores them) are exported as U+FFFD.

Replies fit a 4 MiB client
--------------------------

The import reply repeats every created cue point and lists every refused
item. When that would pass payloads.MAX_REPLY_BYTES (a document of a few MiB
of text), each created cue point is returned in short form (id, entryId,
type, start and end only) and each error message is cut to
200 characters. A document whose reply would not fit even so (thousands of
refused items with long messages) is rejected as a whole before anything is
created.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re
import xml.sax
import xml.sax.handler
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import defusedxml
import peewee
from defusedxml.expatreader import DefusedExpatParser

from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc

from . import payloads
from .errors import clip, invalid_argument
from .store import Store, WriteTx
from .store import cue_points as store_cp
from .store.jobs import decode_token, encode_token, list_fingerprint, page_size

log = logging.getLogger("mediajobs.cue_points")

CuePoint = mres.CuePoint

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
# An export page is one reply: it must fit a client's default 4 MiB limit.
MAX_EXPORT_DOCUMENT_BYTES = payloads.MAX_REPLY_BYTES
# The short form of an import reply (see "Replies fit a 4 MiB client").
SHORT_ERROR_CHARS = 200
SHORT_ENTRY_ID_CHARS = 32
MAX_DEPTH = 16
MAX_ITEMS = 10_000
# Largest single markup construct (a start tag with its attributes, a
# comment, ...): expat hands a start tag over only once it is complete, so
# this bounds what one element can make the parser hold.
MAX_TOKEN_BYTES = 256 * 1024
FEED_CHUNK = 64 * 1024
# Expat remembers every distinct element and attribute name (about 70 bytes
# each); a document of nothing but distinct names would make it hold ~7x its
# size. The format uses about 25.
MAX_NAMES = 1000

DEFAULT_EXPORT_PAGE = 500
MAX_EXPORT_PAGE = 10_000
MAX_FILTER_VALUES = 1000
EXPORT_BATCH = 1000  # rows read per query while filling an export page

MAX_TAGS = 32
MAX_TAG_CHARS = 64
_MAX_TAG_ELEMENTS = 1000  # read at most this many <tag>s (duplicates included)
MAX_SYSTEM_NAME_CHARS = 256
MAX_TIME_MS = 10**15  # about 31,700 years; keeps times far inside int64

ROOT = "scenes"
ELEMENT_TYPES: dict[str, int] = {
    "scene-annotation": CuePoint.ANNOTATION,
    "scene-ad-cue-point": CuePoint.AD,
    "scene-code-cue-point": CuePoint.CODE,
    "scene-thumb-cue-point": CuePoint.THUMB,
    "scene-event-cue-point": CuePoint.EVENT,
}
TYPE_ELEMENTS: dict[int, str] = {t: name for name, t in ELEMENT_TYPES.items()}

# Text element -> (CuePoint field, most characters).
TEXT_ELEMENTS: dict[str, tuple[str, int]] = {
    "title": ("title", 256),
    "sceneText": ("text", 4096),
    "description": ("description", 4096),
    "code": ("code", 1024),
    "sourceUrl": ("source_url", 2048),
    "subType": ("sub_type", 256),
    "partnerData": ("partner_data", 4096),
}
AD_TYPE = "adType"  # the name of sub_type on ads
TEXT_FIELDS: tuple[str, ...] = tuple(f for f, _ in TEXT_ELEMENTS.values())
IGNORED_ELEMENTS = frozenset({"createdAt", "updatedAt", "userId"})
KNOWN_CHILDREN = ", ".join(["sceneStartTime", "sceneEndTime", "tags", *TEXT_ELEMENTS, AD_TYPE])

# Characters XML 1.0 cannot hold (C0 controls other than tab/newline/CR,
# lone surrogates, U+FFFE, U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_CLOCK_TIME = re.compile(r"(\d{1,9}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?")
_MILLIS = re.compile(r"\d{1,16}")


# -- time values ----------------------------------------------------------------------


def parse_time_ms(value: str) -> int:
    """`HH:MM:SS[.mmm]` or integer milliseconds -> milliseconds; ValueError
    with a message that says what to send instead."""
    s = value.strip()
    ms: int | None = None
    if _MILLIS.fullmatch(s):
        ms = int(s)
    elif m := _CLOCK_TIME.fullmatch(s):
        h, mi, sec, frac = int(m[1]), int(m[2]), int(m[3]), m[4] or ""
        if mi < 60 and sec < 60:
            ms = ((h * 60 + mi) * 60 + sec) * 1000 + int(frac.ljust(3, "0") or 0)
    if ms is None:
        raise ValueError(f"{clip(s, 40)} is not a time: use HH:MM:SS.mmm (e.g. 00:01:05.250) or integer milliseconds")
    if ms > MAX_TIME_MS:
        raise ValueError(f"{clip(s)} is too large: at most {MAX_TIME_MS} ms")
    return ms


def format_time_ms(ms: int) -> str:
    """Milliseconds -> `HH:MM:SS.mmm`."""
    seconds, millis = divmod(ms, 1000)
    minutes, sec = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    return f"{hours:02d}:{mins:02d}:{sec:02d}.{millis:03d}"


# -- parsing ----------------------------------------------------------------------------


class DocumentError(Exception):
    """The document as a whole is not acceptable."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return f"{self.message} (line {self.line})" if self.line else self.message


@dataclass
class ParsedItem:
    """One cue-point element: a CuePoint to create, or why not."""

    index: int
    line: int
    entry_id: str
    cue_point: CuePoint | None
    errors: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return "; ".join(self.errors)


class _Text:
    """Character data of one element, kept up to a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def add(self, s: str) -> None:
        if self.size <= self.limit:
            self.parts.append(s)
        self.size += len(s)

    @property
    def too_long(self) -> bool:
        return self.size > self.limit

    def value(self) -> str:
        return "".join(self.parts)


@dataclass
class _ItemBuilder:
    """What has been read of the cue-point element being parsed."""

    index: int
    line: int
    element: str
    type: int  # 0: unknown element
    attrs: dict[str, str]
    texts: dict[str, tuple[str, _Text]] = field(default_factory=dict)  # element name -> (field, text)
    start: _Text | None = None
    end: _Text | None = None
    tags: list[_Text] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        if len(self.errors) < 5 and message not in self.errors:
            self.errors.append(message)


class _ScenesHandler(xml.sax.handler.ContentHandler, xml.sax.handler.LexicalHandler):
    """SAX handler that enforces the document limits as events arrive and
    collects the cue points, without building a tree."""

    def __init__(self) -> None:
        super().__init__()
        self.locator: Any = None
        self.depth = 0
        self.items: list[ParsedItem] = []
        self.item: _ItemBuilder | None = None
        self.text: _Text | None = None  # where character data goes
        self.child: str = ""  # depth-3 element being read
        self.events = 0  # bumped by every callback; the feed loop watches it
        self.names: set[str] = set()  # distinct element and attribute names

    # -- helpers
    def _line(self) -> int:
        return int(self.locator.getLineNumber()) if self.locator is not None else 0

    # -- elements
    def startElement(self, name: str, attrs: Any) -> None:  # noqa: N802
        self.events += 1
        self.depth += 1
        self.names.add(name)
        self.names.update(attrs.getNames())
        if len(self.names) > MAX_NAMES:
            raise DocumentError(
                f"more than {MAX_NAMES} distinct element and attribute names; this is not a cue point document",
                self._line(),
            )
        if self.depth > MAX_DEPTH:
            raise DocumentError(f"elements are nested more than {MAX_DEPTH} deep", self._line())
        if self.depth == 1:
            if name != ROOT:
                raise DocumentError(f"the root element must be <{ROOT}>, not <{name[:64]}>", self._line())
        elif self.depth == 2:
            if len(self.items) >= MAX_ITEMS:
                raise DocumentError(
                    f"more than {MAX_ITEMS} cue-point elements; split the document into several imports", self._line()
                )
            self._start_item(name, attrs)
        elif self.item is not None:
            self._start_child(self.item, name)

    def _start_item(self, name: str, attrs: Any) -> None:
        t = ELEMENT_TYPES.get(name, 0)
        item = _ItemBuilder(len(self.items), self._line(), name, t, {k: attrs[k] for k in ("entryId", "systemName") if k in attrs})
        if not t:
            item.error(f"unknown element <{name[:64]}>: use one of {', '.join('<' + n + '>' for n in ELEMENT_TYPES)}")
        self.item = item
        self.text = None

    def _start_child(self, item: _ItemBuilder, name: str) -> None:
        self.text = None
        if self.depth == 3:
            self.child = name
            if name == "sceneStartTime" or name == "sceneEndTime":
                if (item.start if name == "sceneStartTime" else item.end) is not None:
                    item.error(f"<{name}> appears more than once")
                self.text = _Text(64)
                if name == "sceneStartTime":
                    item.start = self.text
                else:
                    item.end = self.text
            elif name in TEXT_ELEMENTS or (name == AD_TYPE and item.type == CuePoint.AD):
                fld, limit = TEXT_ELEMENTS["subType" if name == AD_TYPE else name]
                if any(f == fld for f, _ in item.texts.values()):
                    item.error(f"<{name}> appears more than once" if name in item.texts else f"<{name}> repeats the {fld} given before")
                self.text = _Text(limit)
                item.texts[name] = (fld, self.text)
            elif name == "tags" or name in IGNORED_ELEMENTS:
                pass
            else:
                item.error(f"unknown element <{name[:64]}> in <{item.element}>: use {KNOWN_CHILDREN}")
        elif self.depth == 4 and self.child == "tags":
            if name != "tag":
                item.error(f"<tags> holds only <tag> elements, not <{name[:64]}>")
            else:
                if len(item.tags) < _MAX_TAG_ELEMENTS:
                    self.text = _Text(MAX_TAG_CHARS)
                    item.tags.append(self.text)
                else:
                    item.error(f"more than {MAX_TAGS} tags")
        elif self.child not in IGNORED_ELEMENTS:
            item.error(f"<{self.child}> must hold only text, not <{name[:64]}>")

    def endElement(self, name: str) -> None:  # noqa: N802
        self.events += 1
        if self.depth == 2 and self.item is not None:
            self.items.append(_finish_item(self.item))
            self.item = None
        elif self.depth == 3:
            self.child = ""
        self.depth -= 1
        self.text = None

    def characters(self, content: str) -> None:
        self.events += 1
        if self.text is not None:
            self.text.add(content)
        elif self.item is not None and content.strip() and self.child not in IGNORED_ELEMENTS:
            if self.depth == 2:
                self.item.error(f"text directly inside <{self.item.element}>; put it in <sceneText> or another element")
            elif self.depth == 3 and self.child == "tags":
                self.item.error("text directly inside <tags>; put each tag in a <tag> element")

    # -- everything else only counts as progress
    def ignorableWhitespace(self, whitespace: str) -> None:  # noqa: N802
        self.events += 1

    def processingInstruction(self, target: str, data: str) -> None:  # noqa: N802
        self.events += 1

    def comment(self, content: str) -> None:
        self.events += 1

    def startCDATA(self) -> None:  # noqa: N802
        self.events += 1

    def endCDATA(self) -> None:  # noqa: N802
        self.events += 1

    def startPrefixMapping(self, prefix: str | None, uri: str) -> None:  # noqa: N802
        self.events += 1

    def endPrefixMapping(self, prefix: str | None) -> None:  # noqa: N802
        self.events += 1


def _finish_item(b: _ItemBuilder) -> ParsedItem:
    """Check a fully read cue-point element and build its CuePoint."""
    entry_id = b.attrs.get("entryId", "").strip()
    system_name = b.attrs.get("systemName", "")
    if not b.type:  # an unknown element: its other problems do not matter
        return ParsedItem(b.index, b.line, entry_id[:128], None, b.errors)
    cp = CuePoint(entry_id=entry_id, type=b.type, system_name=system_name)  # type: ignore[arg-type]
    if not entry_id:
        b.error("missing entryId attribute: the id of the entry the cue point belongs to")
    if len(system_name) > MAX_SYSTEM_NAME_CHARS:
        b.error(f"systemName is {len(system_name)} characters; at most {MAX_SYSTEM_NAME_CHARS}")
    if b.start is None:
        b.error("missing <sceneStartTime>: the start, as HH:MM:SS.mmm or milliseconds")
    else:
        try:
            cp.start_time_ms = parse_time_ms(b.start.value())
        except ValueError as e:
            b.error(f"<sceneStartTime>: {e}")
    if b.end is not None:
        try:
            cp.end_time_ms = parse_time_ms(b.end.value())
            if cp.end_time_ms < cp.start_time_ms:
                b.error(
                    f"<sceneEndTime> {format_time_ms(cp.end_time_ms)} is before <sceneStartTime> "
                    f"{format_time_ms(cp.start_time_ms)}; leave it out for a point in time"
                )
        except ValueError as e:
            b.error(f"<sceneEndTime>: {e}")
    for name, (fld, text) in b.texts.items():
        if text.too_long:
            b.error(f"<{name}> is {text.size} characters; at most {text.limit}")
        else:
            setattr(cp, fld, text.value())
    seen: set[str] = set()
    for text in b.tags:
        tag = text.value().strip()
        if text.too_long or len(tag) > MAX_TAG_CHARS:
            b.error(f"a <tag> is {len(tag) if not text.too_long else text.size} characters; at most {MAX_TAG_CHARS}")
        elif not tag:
            b.error("empty <tag>; leave it out")
        elif tag not in seen:
            seen.add(tag)
            cp.tags.append(tag)
    if len(cp.tags) > MAX_TAGS:
        b.error(f"more than {MAX_TAGS} tags")
    for fld in ("entry_id", "system_name", *TEXT_FIELDS):
        if _NOT_XML.search(getattr(cp, fld)):
            b.error(f"{fld} holds a control character that XML 1.0 cannot represent")
    if any(_NOT_XML.search(t) for t in cp.tags):
        b.error("a tag holds a control character that XML 1.0 cannot represent")
    return ParsedItem(b.index, b.line, entry_id[:128], None if b.errors else cp, b.errors)


def parse_document(data: bytes) -> list[ParsedItem]:
    """Parse a cue-point document with defusedxml (no DTD, entities or
    external references) inside the limits; DocumentError when the document
    as a whole is not acceptable. Runs in a worker thread."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(
            f"the document is {len(data)} bytes; at most {MAX_DOCUMENT_BYTES} (8 MiB): split it into several imports"
        )
    if not data:
        raise DocumentError("the document is empty; send a <scenes> document")
    handler = _ScenesHandler()
    parser = DefusedExpatParser(forbid_dtd=True, forbid_entities=True, forbid_external=True)
    parser.setContentHandler(handler)
    handler.locator = parser  # the expat reader is its own locator (feed() sets none)
    parser.setProperty(xml.sax.handler.property_lexical_handler, handler)
    parser.setFeature(xml.sax.handler.feature_external_ges, False)
    parser.setFeature(xml.sax.handler.feature_external_pes, False)
    stalled = 0  # bytes fed since the last chunk in which an event arrived
    try:
        view = memoryview(data)
        for offset in range(0, len(data), FEED_CHUNK):
            before = handler.events
            chunk = view[offset:offset + FEED_CHUNK]
            parser.feed(bytes(chunk))
            stalled = 0 if handler.events != before else stalled + len(chunk)
            if stalled > MAX_TOKEN_BYTES:
                raise DocumentError(
                    f"a single tag, comment or other markup construct is larger than {MAX_TOKEN_BYTES // 1024} KiB",
                    _safe_line(parser),
                )
        parser.close()
    except DocumentError:
        raise
    except defusedxml.DTDForbidden:
        raise DocumentError("a DTD (<!DOCTYPE ...>) is not allowed; remove it", _safe_line(parser)) from None
    except defusedxml.EntitiesForbidden:
        raise DocumentError("entity declarations are not allowed", _safe_line(parser)) from None
    except defusedxml.ExternalReferenceForbidden:
        raise DocumentError("external references are not allowed", _safe_line(parser)) from None
    except LookupError as e:  # an encoding Python does not know
        raise DocumentError(f"unsupported encoding ({e}); use UTF-8", _safe_line(parser)) from None
    except xml.sax.SAXParseException as e:
        raise DocumentError(f"not well-formed XML: {e.getMessage()}", e.getLineNumber() or 0) from None
    return handler.items


def _safe_line(parser: DefusedExpatParser) -> int:
    try:
        return int(parser.getLineNumber() or 0)
    except Exception:  # noqa: BLE001 - only used to decorate an error
        return 0


def parse_or_reject(data: bytes) -> list[ParsedItem]:
    """parse_document, with every failure turned into INVALID_ARGUMENT on
    field `xml` (an unexpected exception too: a hostile document must not
    produce INTERNAL)."""
    try:
        return parse_document(data)
    except DocumentError as e:
        raise invalid_argument([("xml", str(e))], reason="INVALID_CUE_POINT_XML") from None
    except Exception as e:  # noqa: BLE001
        log.warning("cue point XML rejected by an unexpected parser error", exc_info=True)
        raise invalid_argument(
            [("xml", f"the document could not be parsed ({type(e).__name__}); check that it is well-formed XML")],
            reason="INVALID_CUE_POINT_XML",
        ) from None


# -- rendering --------------------------------------------------------------------------

_ATTR_ENTITIES = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
_TEXT_ENTITIES = {"\r": "&#13;"}  # a raw CR would come back as LF


def _xml_safe(s: str) -> str:
    """Replace what XML 1.0 cannot hold (import never stores it) with U+FFFD,
    so an export is always a well-formed document."""
    return _NOT_XML.sub("\ufffd", s)


def _attr(s: str) -> str:
    return '"' + escape(_xml_safe(s), _ATTR_ENTITIES) + '"'


def _text(s: str) -> str:
    return escape(_xml_safe(s), _TEXT_ENTITIES)


_HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n<scenes>\n'
_TAIL = b"</scenes>\n"


def render_item(cp: CuePoint) -> bytes:
    """One cue-point element (UTF-8), indented, with its trailing newline."""
    element = TYPE_ELEMENTS[cp.type]
    out = [f"  <{element} sceneId={_attr(cp.id)} entryId={_attr(cp.entry_id)}"]
    if cp.system_name:
        out.append(f" systemName={_attr(cp.system_name)}")
    out.append(f">\n    <sceneStartTime>{format_time_ms(cp.start_time_ms)}</sceneStartTime>\n")
    if cp.end_time_ms:
        out.append(f"    <sceneEndTime>{format_time_ms(cp.end_time_ms)}</sceneEndTime>\n")
    if cp.tags:
        out.append("    <tags>" + "".join(f"<tag>{_text(t)}</tag>" for t in cp.tags) + "</tags>\n")
    for name, (fld, _) in TEXT_ELEMENTS.items():
        value = getattr(cp, fld)
        if value:
            if fld == "sub_type" and cp.type == CuePoint.AD:
                name = AD_TYPE
            out.append(f"    <{name}>{_text(value)}</{name}>\n")
    out.append(f"  </{element}>\n")
    return "".join(out).encode("utf-8")


class DocumentWriter:
    """Builds an export document that stays within `limit` bytes, so that
    every exported page can be imported again."""

    def __init__(self, limit: int = MAX_EXPORT_DOCUMENT_BYTES) -> None:
        self.limit = limit
        self.parts: list[bytes] = [_HEAD]
        self.size = len(_HEAD) + len(_TAIL)
        self.count = 0

    def add(self, cp: CuePoint) -> bool:
        """Append `cp`; False (and nothing appended) when it does not fit."""
        item = render_item(cp)
        if self.size + len(item) > self.limit and self.count:
            return False
        self.parts.append(item)
        self.size += len(item)
        self.count += 1
        return True

    def finish(self) -> bytes:
        return b"".join([*self.parts, _TAIL])


def render_document(cue_points: list[CuePoint]) -> bytes:
    """The XML document (UTF-8) holding all of `cue_points`, in the import
    format (no size limit)."""
    return b"".join([_HEAD, *map(render_item, cue_points), _TAIL])


# -- import -----------------------------------------------------------------------------


def _create(tx: WriteTx, items: list[ParsedItem]) -> dict[int, CuePoint]:
    """In the writer: insert the valid items whose entry exists; return the
    created cue points by item index."""
    valid = [it for it in items if it.cue_point is not None]
    existing = store_cp.existing_entry_ids(tx.db, tx.project, {it.entry_id for it in valid})
    by_index: dict[int, CuePoint] = {}
    for it in valid:
        if it.cue_point is not None and it.entry_id in existing:
            cp = CuePoint()
            cp.CopyFrom(it.cue_point)
            by_index[it.index] = cp
    store_cp.insert_cue_points(tx, list(by_index.values()))
    return by_index


def _missing_entry(it: ParsedItem) -> str:
    return f"entry {clip(it.entry_id)} does not exist in this project; create it first (CreateEntry) or fix entryId"


def _import_error(it: ParsedItem) -> msvc.CuePointImportError:
    """Why item `it` was not created (its own problems, else a missing entry)."""
    return msvc.CuePointImportError(index=it.index, line=it.line, entry_id=it.entry_id,
                                    message=it.message or _missing_entry(it))


def _short_cue_point(cp: CuePoint) -> CuePoint:
    return CuePoint(id=cp.id, entry_id=cp.entry_id, type=cp.type, start_time_ms=cp.start_time_ms,
                    end_time_ms=cp.end_time_ms)


def _short_error(e: msvc.CuePointImportError) -> msvc.CuePointImportError:
    return msvc.CuePointImportError(index=e.index, line=e.line, entry_id=payloads.cut(e.entry_id, SHORT_ENTRY_ID_CHARS),
                                    message=payloads.cut(e.message, SHORT_ERROR_CHARS))


def _short_reply_bytes(items: list[ParsedItem]) -> int:
    """The most the short form of the import reply can take, known before
    anything is created: a valid item becomes a cue point (of an existing
    entry, whose id is a 26-character ULID) or, if its entry does not
    exist, an error."""
    total = 0
    for it in items:
        size = _short_error(_import_error(it)).ByteSize()
        if it.cue_point is not None:
            cp = _short_cue_point(it.cue_point)
            cp.id = cp.entry_id = "0" * 26
            size = max(size, cp.ByteSize())
        total += size + payloads.ITEM_FRAMING_BYTES
    return total


def _parse_for_import(data: bytes) -> list[ParsedItem]:
    """In a worker thread: parse the document and make sure its reply can
    fit a client with gRPC's default 4 MiB limit."""
    items = parse_or_reject(data)
    short = _short_reply_bytes(items)
    if short > payloads.MAX_REPLY_BYTES:
        raise invalid_argument(
            [("xml", f"the reply to this document would take {short} bytes even with every cue point and error in "
                     f"short form; at most {payloads.MAX_REPLY_BYTES}: split the document, or fix the refused items")],
            reason="INVALID_CUE_POINT_XML",
        )
    return items


async def import_cue_points(store: Store, request: msvc.ImportCuePointsRequest) -> msvc.ImportCuePointsResponse:
    """Create the valid cue points of an XML document; report the others.
    The reply is in short form when the full one would pass
    payloads.MAX_REPLY_BYTES (see "Replies fit a 4 MiB client")."""
    size = len(request.xml)
    if not size:
        raise invalid_argument([("xml", "required: a <scenes> document of cue points")], reason="INVALID_CUE_POINT_XML")
    if size > MAX_DOCUMENT_BYTES:
        raise invalid_argument(
            [("xml", f"the document is {size} bytes; at most {MAX_DOCUMENT_BYTES} (8 MiB): split it into several imports")],
            reason="INVALID_CUE_POINT_XML",
        )
    items = await asyncio.to_thread(_parse_for_import, request.xml)
    created: dict[int, CuePoint] = {}
    if any(it.cue_point is not None for it in items):
        created = await store.write(functools.partial(_create, items=items))
    resp = msvc.ImportCuePointsResponse()
    for it in items:
        cp = created.get(it.index)
        if cp is not None:
            resp.cue_points.append(cp)
        else:
            resp.errors.append(_import_error(it))
    if resp.ByteSize() > payloads.MAX_REPLY_BYTES:
        resp = msvc.ImportCuePointsResponse(
            cue_points=[_short_cue_point(cp) for cp in resp.cue_points],
            errors=[_short_error(e) for e in resp.errors],
        )
    return resp


# -- export -----------------------------------------------------------------------------


def export_filter(req: msvc.ExportCuePointsRequest) -> store_cp.ExportFilter:
    """Validate the filters of an export request."""
    bad: list[tuple[str, str]] = []
    if len(req.entry_ids) > MAX_FILTER_VALUES:
        bad.append(("entry_ids", f"{len(req.entry_ids)} ids; at most {MAX_FILTER_VALUES} per request"))
    for i, e in enumerate(req.entry_ids):
        if not e:
            bad.append((f"entry_ids[{i}]", "empty; remove it"))
    if len(req.types) > MAX_FILTER_VALUES:
        bad.append(("types", f"{len(req.types)} values; at most {MAX_FILTER_VALUES}"))
    for i, t in enumerate(req.types):
        if t not in TYPE_ELEMENTS:
            bad.append((f"types[{i}]", f"{t} is not a cue point type; use ANNOTATION, AD, CODE, THUMB or EVENT"))
    if req.start_time_from_ms < 0:
        bad.append(("start_time_from_ms", "must not be negative"))
    if req.start_time_to_ms < 0:
        bad.append(("start_time_to_ms", "must not be negative (0 means no upper bound)"))
    elif req.start_time_to_ms and req.start_time_to_ms < req.start_time_from_ms:
        bad.append(("start_time_to_ms", "is before start_time_from_ms; swap them, or 0 for no upper bound"))
    if len(req.tags) > MAX_FILTER_VALUES:
        bad.append(("tags", f"{len(req.tags)} tags; at most {MAX_FILTER_VALUES}"))
    for i, tag in enumerate(req.tags):
        if not tag.strip():
            bad.append((f"tags[{i}]", "empty; remove it"))
    if bad:
        raise invalid_argument(bad[:20])
    return store_cp.ExportFilter(
        entry_ids=list(dict.fromkeys(req.entry_ids)),
        types=sorted(set(req.types)),
        start_time_from_ms=req.start_time_from_ms,
        start_time_to_ms=req.start_time_to_ms,
        tags=list(dict.fromkeys(t.strip() for t in req.tags)),
    )


def _decode_key(token: str, fingerprint: str) -> store_cp.ExportKey:
    values = decode_token(token, fingerprint)
    try:
        entry_id, start, cue_id = values
        if not (isinstance(entry_id, str) and isinstance(start, int) and isinstance(cue_id, str)):
            raise ValueError
    except ValueError:
        raise invalid_argument([("page_token", "not a page token this server issued; start again without one")]) from None
    return entry_id, start, cue_id


def _export_page(
    db: peewee.Database, project: str, flt: store_cp.ExportFilter, after: store_cp.ExportKey | None, size: int, fingerprint: str
) -> msvc.ExportCuePointsResponse:
    """In a read thread: one page of the export, rendered. The page ends at
    `size` cue points or when the next would take the document over
    MAX_EXPORT_DOCUMENT_BYTES,
    whichever comes first; rows are read in batches, so a page never holds
    more than a batch beyond what it returns."""
    doc = DocumentWriter()
    key = after
    more = False
    while not more:
        want = min(EXPORT_BATCH, size + 1 - doc.count)
        rows = store_cp.export_rows(db, project, flt, key, want)
        for row_key, cp in rows:
            if doc.count == size or not doc.add(cp):
                more = True
                break
            key = row_key
        if len(rows) < want:
            break
    resp = msvc.ExportCuePointsResponse(xml=doc.finish(), count=doc.count)
    if more and key is not None:
        resp.next_page_token = encode_token(list(key), fingerprint)
    return resp


async def export_cue_points(store: Store, request: msvc.ExportCuePointsRequest) -> msvc.ExportCuePointsResponse:
    """One page of matching cue points as an importable XML document."""
    size = page_size(request.page_size, default=DEFAULT_EXPORT_PAGE, maximum=MAX_EXPORT_PAGE)
    flt = export_filter(request)
    fingerprint = list_fingerprint(request)
    after = _decode_key(request.page_token, fingerprint) if request.page_token else None
    return await store.read(_export_page, flt, after, size, fingerprint)
