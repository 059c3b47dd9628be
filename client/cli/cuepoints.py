"""`mediajobs cuepoints`: import and export cue points as XML."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mediajobs.v1 import media_resources_pb2 as mres

from .. import render
from ..client import MediaJobsClient
from ..errors import MediaJobsError
from .common import _group, _leaf, _note, _out, _positive

CUE_POINT_TYPES = [n for n in mres.CuePoint.Type.keys() if n != "TYPE_UNSPECIFIED"]


def add_parser(groups: Any) -> None:
    actions = _group(groups, "cuepoints", "import and export cue points as XML",
                     "Cue points (chapters, ads, codes, thumbs, events) in Kaltura-style XML\n"
                     "(<scenes><scene-annotation entryId=...>...; the README describes the format).\n\n"
                     "  mediajobs cuepoints import chapters.xml\n"
                     "  mediajobs cuepoints export --entry 01J... > chapters.xml")
    p = _leaf(actions, "import", cmd_cuepoints_import, "create cue points from XML files",
              "Send each FILE to ImportCuePoints (at most 8 MiB and 10,000 cue points per file).\n"
              "Valid items are created; every invalid one is listed with its index, line and entry,\n"
              "and the exit status is then 1. A document refused as a whole (not XML, a DTD, too\n"
              "big or too deep) creates nothing and exits 2.\n"
              "With --json: one ImportCuePointsResponse per file, one per line.\n\n"
              "  mediajobs cuepoints import chapters.xml ads.xml\n"
              "  mediajobs cuepoints export --entry 01J... > c.xml && mediajobs cuepoints import c.xml")
    p.add_argument("files", nargs="+", metavar="FILE", help="XML documents ('-' reads standard input)")

    p = _leaf(actions, "export", cmd_cuepoints_export, "write matching cue points as XML",
              "Export matching cue points (ExportCuePoints), ordered by entry, start time and id.\n"
              "One page (up to --page-size, at most 10,000 cue points and 8 MiB) is one XML document\n"
              "that `cuepoints import` takes back. When everything fits in one page it goes to\n"
              "stdout (or --output FILE); when it does not, give --output-dir and each page is\n"
              "written there as cuepoints-0001.xml, cuepoints-0002.xml, ...\n\n"
              "  mediajobs cuepoints export --entry 01J... --type AD --type CODE > cues.xml\n"
              "  mediajobs cuepoints export --tag chapter --from-ms 60000 --to-ms 120000 -o window.xml\n"
              "  mediajobs cuepoints export --output-dir all-cues/")
    p.add_argument("--entry", action="append", default=[], metavar="ID", help="only this entry's (repeatable)")
    p.add_argument("--type", action="append", default=[], choices=CUE_POINT_TYPES, metavar="TYPE",
                   help=f"only this kind (repeatable): {', '.join(CUE_POINT_TYPES)}")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="only cue points with this tag (repeatable: any of them)")
    p.add_argument("--from-ms", type=int, default=0, metavar="MS", help="only those starting at or after MS")
    p.add_argument("--to-ms", type=int, default=0, metavar="MS", help="only those starting at or before MS")
    p.add_argument("--page-size", type=_positive, default=10_000, metavar="N",
                   help="cue points per document (default and maximum 10,000)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="FILE", help="write the document to FILE instead of stdout")
    out.add_argument("--output-dir", metavar="DIR", help="write every page to DIR/cuepoints-NNNN.xml")


# -- cue points ------------------------------------------------------------------------


def _read_document(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    with open(name, "rb") as f:
        return f.read()


def cmd_cuepoints_import(args: argparse.Namespace, c: MediaJobsClient) -> int:
    status = 0
    for name in args.files:
        try:
            data = _read_document(name)
        except OSError as e:
            _note(f"mediajobs: cannot read {name}: {e.strerror}")
            return 1
        try:
            resp = c.import_cue_points(data)
        except MediaJobsError:
            _note(f"mediajobs: {name}: nothing was imported")
            raise
        if args.json:
            _out(render.dumps(render.message_to_dict(resp)))
        else:
            _out(f"{name}: created {len(resp.cue_points)} cue point(s)"
                 + (f", {len(resp.errors)} item(s) refused:" if resp.errors else ""))
            for err in resp.errors:
                where = f"item {err.index}, line {err.line}" + (f", entry {err.entry_id}" if err.entry_id else "")
                _out(f"  {where}: {err.message}")
        if resp.errors:
            status = 1
    return status


def cmd_cuepoints_export(args: argparse.Namespace, c: MediaJobsClient) -> int:
    types = [mres.CuePoint.Type.Value(t) for t in args.type]
    pages: list[bytes] = []
    token = ""
    total = 0
    while True:
        resp = c.export_cue_points(entry_ids=args.entry, types=types, start_time_from_ms=args.from_ms,
                                   start_time_to_ms=args.to_ms, tags=args.tag, page_size=args.page_size,
                                   page_token=token)
        total += resp.count
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            path = os.path.join(args.output_dir, f"cuepoints-{len(pages) + 1:04d}.xml")
            with open(path, "wb") as f:
                f.write(resp.xml)
        pages.append(b"" if args.output_dir else resp.xml)
        token = resp.next_page_token
        if not token:
            break
        if not args.output_dir:
            _note(f"mediajobs: the matching cue points need more than one document (at most "
                  f"{args.page_size} cue points and 8 MiB each); give --output-dir DIR to write every "
                  "page (nothing was written)")
            return 2
    if args.output_dir:
        _note(f"mediajobs: wrote {total} cue point(s) in {len(pages)} file(s) to {args.output_dir}")
    elif args.output:
        with open(args.output, "wb") as f:
            f.write(pages[0])
        _note(f"mediajobs: wrote {total} cue point(s) to {args.output}")
    else:
        sys.stdout.buffer.write(pages[0])
        sys.stdout.flush()
    return 0
