"""`mediajobs mediainfo`: what the probe found in an entry's files."""
from __future__ import annotations

import argparse
from typing import Any

from .. import render
from ..client import MediaJobsClient
from .common import _FMT, _add_globals, _note, _out


def add_parser(groups: Any) -> None:
    p = groups.add_parser(
        "mediainfo", help="show what the probe found in an entry's files",
        description="Show the media-info records of an entry: its source first, then its flavor assets.\n"
                    "Each record is a block with the container (format, duration, bit rate), the video\n"
                    "stream (codec, WxH, fps, bit rate, display aspect ratio, rotation, scan type, max GOP,\n"
                    "fast start), the audio stream (codec, channels, sampling rate, bit rate), the file size\n"
                    "and the library that wrote the file. With --json: one record per line, every field.\n\n"
                    "  mediajobs mediainfo 01HA255YE6H6DEETJ5M6595ZDA\n"
                    "  mediajobs mediainfo 01HA255YE6H6DEETJ5M6595ZDA --flavor-asset 720p --json",
        formatter_class=_FMT)
    _add_globals(p, sub=True)
    p.add_argument("entry_id", metavar="ENTRY_ID", help="entry id")
    p.add_argument("--flavor-asset", default="", metavar="ID",
                   help="only this flavor asset's records: its id or output name (e.g. 720p), or `source`")
    p.set_defaults(func=cmd_mediainfo, parser=p)


def cmd_mediainfo(args: argparse.Namespace, c: MediaJobsClient) -> int:
    entry = c.get_entry(args.entry_id)  # also: NOT_FOUND for a wrong id rather than an empty list
    names = {fa.id: fa.output_name for fa in entry.flavor_assets}
    flavor = args.flavor_asset
    by_name = {fa.output_name: fa.id for fa in entry.flavor_assets}
    if flavor and flavor != "source" and flavor not in names and flavor in by_name:
        flavor = by_name[flavor]
    infos = list(c.iter_media_infos(entry.id, flavor_asset_id=flavor))
    # The source first, then the flavor assets in the entry's order (sort is stable: oldest first within each).
    order = {fa.id: i + 1 for i, fa in enumerate(entry.flavor_assets)}
    infos.sort(key=lambda mi: order.get(mi.flavor_asset_id, len(order) + 1) if mi.flavor_asset_id else 0)
    if args.json:
        for mi in infos:
            _out(render.dumps_line(render.message_to_dict(mi)))
        return 0
    if not infos:
        which = f" (flavor asset {args.flavor_asset})" if flavor else ""
        _note(f"mediajobs: no media info for entry {entry.id}{which} yet "
              f"(the entry is {render.entry_state_name(entry.state)})")
        return 0
    blocks = []
    for mi in infos:
        if mi.flavor_asset_id:
            title = f"flavor asset {names.get(mi.flavor_asset_id, '?')} ({mi.flavor_asset_id})"
        else:
            title = f"source {entry.source_uri}".rstrip()
        blocks.append(render.media_info_details(mi, f"{title}  [media info {mi.id}]"))
    _out("\n\n".join(blocks))
    return 0
