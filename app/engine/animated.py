"""Animated previews (GIF, WebP): the frame on screen at each tick of a frame rate, as one animation.

The frames themselves are exact grabs (``images_for`` in one pass); here they are timed and encoded.
A frame shown for several ticks (a source slower than the preview's rate) becomes one longer frame.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from fractions import Fraction

from PIL import Image

from app.engine.errors import InvalidParameter

ANIMATED_CONTENT_TYPES = {"gif": "image/gif", "webp": "image/webp"}
_PALETTE_SAMPLE_FRAMES = 16  # frames the shared GIF palette is learnt from, spread over the animation


def frame_times(start: Fraction, end: Fraction, fps: int) -> list[Fraction]:
    """The ticks ``start + k / fps`` before ``end``."""
    if end <= start:
        raise InvalidParameter("end must be after start (and start within the asset)", parameter="end")
    count = math.ceil((end - start) * fps)
    return [start + Fraction(k, fps) for k in range(count)]


def _durations_ms(starts: Sequence[Fraction], end: Fraction, unit_ms: int) -> list[int]:
    """Each frame's display time in ms, rounded on the cumulative clock so that rounding never drifts
    (GIF counts in 10 ms units: a 30 fps preview alternates 30 and 40 ms)."""
    marks = [*starts, end]
    clock = [round((t - starts[0]) * 1000 / unit_ms) * unit_ms for t in marks]
    return [max(unit_ms, b - a) for a, b in itertools.pairwise(clock)]


def encode_animation(
    frames: Sequence[tuple[bytes, Fraction]], ticks: Sequence[Fraction], end: Fraction, image_format: str
) -> bytes:
    """``frames[i]`` (an encoded picture and its frame's time) is what is on screen at ``ticks[i]``;
    the animation shows each distinct frame from its first tick to the next distinct frame's."""
    pictures: list[Image.Image] = []
    starts: list[Fraction] = []
    last_time: Fraction | None = None
    for (data, actual), tick in zip(frames, ticks, strict=True):
        if actual == last_time:
            continue  # the same frame still on screen: the previous picture lasts longer
        last_time = actual
        with Image.open(io.BytesIO(data)) as picture:
            pictures.append(picture.convert("RGB"))
        starts.append(tick)
    if image_format == "gif":
        durations = _durations_ms(starts, end, 10)
        return _gif(pictures, durations)
    durations = _durations_ms(starts, end, 1)
    out = io.BytesIO()
    pictures[0].save(
        out, "WEBP", save_all=True, append_images=pictures[1:], duration=durations, loop=0, quality=75, method=2
    )
    return out.getvalue()


def _gif(pictures: list[Image.Image], durations: list[int]) -> bytes:
    """One palette for every frame, learnt from frames spread over the animation (median cut), and
    Floyd-Steinberg dithering against it: no colour flicker between frames, no banding on gradients."""
    step = max(1, len(pictures) // _PALETTE_SAMPLE_FRAMES)
    sample = pictures[::step][:_PALETTE_SAMPLE_FRAMES]
    width, height = sample[0].size
    montage = Image.new("RGB", (width, height * len(sample)))
    for index, picture in enumerate(sample):
        montage.paste(
            picture.resize((width, height)) if picture.size != (width, height) else picture, (0, index * height)
        )
    palette = montage.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    frames = [picture.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG) for picture in pictures]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False)
    return out.getvalue()
