"""A representative poster frame (``t=auto``): not black, not a fade, not blurred, chosen by a simple
deterministic score over keyframes spread through the asset, decoded at a reduced size.

Keyframes, because each decodes on its own (one packet, no run of frames to the target), and one
``images_for`` pass visits them all in time order.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

POSTER_TIME = "auto"
CANDIDATE_WIDTH = 160  # the size candidates are scored at: plenty to tell black, flat and blurred apart
# Where to look, as percentages of the duration: past the opening (often black, a logo, a fade in)
# and short of the end (credits, a fade out), a few early ones too for short clips.
CANDIDATE_PERCENTS = (3, 7, 12, 18, 25, 32, 40, 48, 56, 64, 72, 80, 88)
# Where no duration is known (a raw stream): seconds from the start; those past the end just fail.
FALLBACK_SECONDS = ("0.5", "1", "2", "3", "5", "8", "13", "21", "34", "55", "89")
_DARK = 28.0  # mean luma (0-255) below this: black or nearly, whatever its detail
_BRIGHT = 235.0  # above: white (a flash, a blank card)
_FLAT = 12.0  # luma standard deviation below this: a fade, a solid card


def candidate_times() -> list[str]:
    return [f"{p}%" for p in CANDIDATE_PERCENTS]


def poster_score(image: bytes) -> float:
    """Higher is a better poster. A picture that is dark, washed out or flat scores below every one that
    is not (their order among themselves: the most contrast first); otherwise the sharper and the more
    contrasted, the better (variance of the Laplacian, plus the luma's spread)."""
    with Image.open(io.BytesIO(image)) as picture:
        luma = np.asarray(picture.convert("L"), dtype=np.float32)
    mean, spread = float(luma.mean()), float(luma.std())
    if mean < _DARK or mean > _BRIGHT or spread < _FLAT:
        return -1000.0 + spread
    laplacian = (
        luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]
        if luma.shape[0] > 2 and luma.shape[1] > 2
        else np.zeros((1, 1), dtype=np.float32)
    )
    sharpness = float(np.log1p(laplacian.var()))
    exposure = 1.0 - abs(mean - 118.0) / 118.0  # mid-grey best, either extreme worst
    return sharpness + spread / 32.0 + exposure


def best_candidate(scores: Sequence[float]) -> int:
    """The index of the best score; the earliest on a tie (deterministic)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
