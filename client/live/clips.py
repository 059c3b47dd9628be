"""Live-to-VOD clips: the LIVE_CLIP jobs the live worker runs.

A clip is the segments of one rendition's media playlist whose
[program date-time, + duration) overlaps the asked window (segment-accurate,
as Brightcove's and Google's live clips start out), written as a VOD
playlist next to the live output, and the same segments remuxed into one
MP4 by stream copy (no re-encoding: tens of milliseconds for minutes of
media). Segments are read one by one, and timestamps that go back (a
discontinuity: the publisher reconnected, or another worker took over) are
shifted to continue, so the MP4 plays straight through.
"""
from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from typing import Any

import av

from .ladder import PlaylistSegment, read_playlist

CLIP_PLAYLIST = "clip.m3u8"
CLIP_MP4 = "clip.mp4"


class ClipError(ValueError):
    """The clip cannot be made (no playlist, nothing in the window): the job
    fails for good with this message."""


def _pdt_us(seg: PlaylistSegment) -> int | None:
    if not seg.program_date_time:
        return None
    text = seg.program_date_time.strip().replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":  # +0000 -> +00:00
        text = text[:-2] + ":" + text[-2:]
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1_000_000)


def select(segments: list[PlaylistSegment], start_us: int, end_us: int) -> list[PlaylistSegment]:
    """The segments overlapping [start_us, end_us); a segment without a
    date-time follows the one before it."""
    out = []
    t: int | None = None
    for seg in segments:
        pdt = _pdt_us(seg)
        t = pdt if pdt is not None else t
        if t is None:
            continue
        if t < end_us and t + int(seg.duration * 1_000_000) > start_us:
            out.append(seg)
        t += int(seg.duration * 1_000_000)
    return out


def write_playlist(path: Path, segments: list[PlaylistSegment], source_dir: Path) -> None:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3",
             f"#EXT-X-TARGETDURATION:{max(1, math.ceil(max(s.duration for s in segments)))}",
             "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-MEDIA-SEQUENCE:0"]
    for i, seg in enumerate(segments):
        if i and seg.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        if seg.program_date_time:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{seg.program_date_time}")
        lines.append(f"#EXTINF:{seg.duration:.6f},")
        lines.append(os.path.relpath(source_dir / seg.uri, path.parent))
    lines.append("#EXT-X-ENDLIST")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def remux(files: list[Path], out_path: Path) -> None:
    """Stream-copy the segments into one MP4 (faststart), timestamps made
    continuous where a segment starts before the last one ended."""
    tmp = out_path.with_name(out_path.name + ".part")
    with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        outs: dict[int, Any] = {}
        offset: dict[int, int] = {}  # per stream, added to every timestamp
        last: dict[int, int] = {}  # per stream, the last dts written
        for f in files:
            with av.open(str(f)) as inp:
                if not outs:
                    for st in inp.streams:
                        if st.type in ("video", "audio"):
                            outs[st.index] = out.add_stream_from_template(st)
                checked: set[int] = set()
                for packet in inp.demux():
                    i = packet.stream.index
                    if packet.dts is None or i not in outs:
                        continue
                    if i not in checked:  # the file's first packet of this stream
                        checked.add(i)
                        at = packet.dts + offset.get(i, 0)
                        if i in last and at <= last[i]:
                            offset[i] = offset.get(i, 0) + last[i] + (packet.duration or 1) - at
                    shift = offset.get(i, 0)
                    packet.dts += shift
                    if packet.pts is not None:
                        packet.pts += shift
                    if i in last and packet.dts <= last[i]:
                        continue  # a duplicate at a boundary
                    last[i] = packet.dts
                    packet.stream = outs[i]
                    out.mux(packet)
    tmp.replace(out_path)


def cut(storage_root: Path, playlist: str, start_us: int, end_us: int, output_dir: str) -> dict[str, Any]:
    """Make the clip; returns the LIVE_CLIP job's result."""
    source = storage_root / playlist
    pl = read_playlist(source)
    if pl is None:
        raise ClipError(f"the rendition playlist {playlist} does not exist (has the live job run yet?)")
    chosen = select(pl.segments, start_us, end_us)
    if not chosen:
        raise ClipError("no segment of the playlist overlaps the window; the playlist covers "
                        f"{pl.segments[0].program_date_time if pl.segments else 'nothing yet'} on")
    out_dir = storage_root / output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_playlist(out_dir / CLIP_PLAYLIST, chosen, source.parent)
    remux([source.parent / s.uri for s in chosen], out_dir / CLIP_MP4)
    return {"playlist": f"{output_dir}/{CLIP_PLAYLIST}", "mp4": f"{output_dir}/{CLIP_MP4}",
            "duration_s": round(sum(s.duration for s in chosen), 3), "segments": len(chosen),
            "first_segment_time": chosen[0].program_date_time or ""}
