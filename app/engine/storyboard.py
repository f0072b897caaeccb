"""Storyboards: tiles of an asset at regular times, one sprite sheet, and its index (WebVTT, JSON).

The plan (which times, what grid) is exact arithmetic on Fractions; the tiles themselves are grabs
(one ``images_for`` pass over the asset in time order), composed here with Pillow.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from PIL import Image

from app.engine.errors import InvalidParameter
from app.engine.timeparse import format_fraction

DEFAULT_TILES = 50  # a short video: about this many tiles
LONG_VIDEO_INTERVAL = Fraction(5)  # a long one: a tile every this many seconds (up to the tile cap)
MAX_SHEET_SIDE = 16383  # WebP's limit on either side, and far within JPEG's and PNG's
SHEET_CONTENT_TYPES = {"jpg": "image/jpeg", "webp": "image/webp", "png": "image/png"}


@dataclass(frozen=True)
class StoryboardPlan:
    """The tiles' requested times and their grid. Tile ``i`` covers the cue ``[times[i], ends[i])``."""

    times: tuple[Fraction, ...]
    ends: tuple[Fraction, ...]
    columns: int
    rows: int
    tile_width: int
    tile_height: int

    @property
    def sheet_size(self) -> tuple[int, int]:
        return self.columns * self.tile_width, self.rows * self.tile_height

    def position(self, index: int) -> tuple[int, int]:
        """The top left corner of tile ``index`` on the sheet."""
        return (index % self.columns) * self.tile_width, (index // self.columns) * self.tile_height


def default_interval(span: Fraction, max_tiles: int) -> Fraction:
    """About ``DEFAULT_TILES`` tiles over a short span, one every ``LONG_VIDEO_INTERVAL`` over a long
    one, never more than ``max_tiles``."""
    return max(min(span / DEFAULT_TILES, LONG_VIDEO_INTERVAL), span / max_tiles)


def tile_size(display: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """A tile's size from the asset's displayed size: both given, as given; one given, the other from
    the aspect ratio; neither, 160 wide."""
    display_w, display_h = max(1, display[0]), max(1, display[1])
    if width is not None and height is not None:
        return width, height
    if height is not None:
        return max(1, round(Fraction(display_w * height, display_h))), height
    width = width or 160
    return width, max(1, round(Fraction(display_h * width, display_w)))


def plan_storyboard(
    *,
    start: Fraction,
    end: Fraction,
    interval: Fraction | None,
    count: int | None,
    columns: int | None,
    tile: tuple[int, int],
    max_tiles: int,
    max_sheet_pixels: int,
) -> StoryboardPlan:
    """The tiles for ``[start, end)``: ``count`` of them evenly spread, or one each ``interval``, or
    the default spacing. Raises ``InvalidParameter`` (naming the parameter) past any bound."""
    if end <= start:
        raise InvalidParameter("end must be after start (and start within the asset)", parameter="end")
    span = end - start
    if count is not None:
        step = span / count
    else:
        step = interval if interval is not None else default_interval(span, max_tiles)
        if step <= 0:
            raise InvalidParameter("interval must be more than 0", parameter="interval")
        if span / step > max_tiles:
            raise InvalidParameter(f"interval: more than {max_tiles} tiles; ask for a longer one", parameter="interval")
    n = max(1, math.ceil(span / step))
    if n > max_tiles:
        raise InvalidParameter(f"count: at most {max_tiles} tiles", parameter="count")
    times = tuple(start + i * step for i in range(n))
    ends = (*times[1:], end)
    columns = min(columns or 10, n)
    rows = math.ceil(n / columns)
    plan = StoryboardPlan(times, ends, columns, rows, tile[0], tile[1])
    sheet_w, sheet_h = plan.sheet_size
    if sheet_w > MAX_SHEET_SIDE or sheet_h > MAX_SHEET_SIDE or sheet_w * sheet_h > max_sheet_pixels:
        raise InvalidParameter(
            f"the sheet would be {sheet_w}x{sheet_h} pixels, over the limit ({max_sheet_pixels} pixels, "
            f"{MAX_SHEET_SIDE} a side); ask for fewer or smaller tiles",
            parameter="tile_width",
        )
    return plan


def compose_sheet(plan: StoryboardPlan, tiles: Sequence[bytes], sheet_format: str, quality: int | None) -> bytes:
    """The sprite sheet: each tile (an encoded image, in plan order) pasted at its place."""
    sheet = Image.new("RGB", plan.sheet_size)
    cell = (plan.tile_width, plan.tile_height)
    for index, data in enumerate(tiles):
        with Image.open(io.BytesIO(data)) as tile:
            picture = tile.convert("RGB")
        if picture.size != cell:  # a stream whose size changes midway: every cell stays the same size
            picture = picture.resize(cell, Image.Resampling.BILINEAR)
        sheet.paste(picture, plan.position(index))
    out = io.BytesIO()
    if sheet_format == "jpg":
        sheet.save(out, "JPEG", quality=quality or 80, optimize=False)
    elif sheet_format == "webp":
        sheet.save(out, "WEBP", quality=quality or 75, method=2)
    else:
        sheet.save(out, "PNG", compress_level=1)
    return out.getvalue()


def _vtt_time(seconds: Fraction) -> str:
    """``hh:mm:ss.ttt``, truncated to the millisecond so that a cue never starts after its time."""
    millis = math.floor(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def storyboard_vtt(plan: StoryboardPlan, sheet_url: str) -> str:
    """WebVTT cues from each tile's time to the next (the last to the end), without gaps, each naming
    its tile on the sheet as a media fragment ``#xywh=x,y,w,h``."""
    lines = ["WEBVTT", ""]
    for index, (begin, end) in enumerate(zip(plan.times, plan.ends, strict=True)):
        x, y = plan.position(index)
        lines.append(f"{_vtt_time(begin)} --> {_vtt_time(end)}")
        lines.append(f"{sheet_url}#xywh={x},{y},{plan.tile_width},{plan.tile_height}")
        lines.append("")
    return "\n".join(lines)


def seconds_text(value: Fraction) -> str:
    """An exact time as text ``parse_time`` reads back exactly (decimal when it terminates)."""
    text = format_fraction(value)
    return text if Fraction(text) == value else f"{value.numerator}/{value.denominator}"
