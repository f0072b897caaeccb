"""The search's state on one open asset: what was asked for, what was decoded, and where decoding stands.

One ``Cursor`` is shared by the generator's exact and tolerant searches, the keyframe finder and the
decode loop (``Playhead``). Each field says what it means and who sets it; the fields under "per open"
hold for one opening of the container only and are cleared by ``forget_open`` when it is reopened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import av

from app.engine.options import EncodeOptions, RenderOptions
from app.engine.results import Rendered


@dataclass
class Decoded:
    """A decoded frame with its exact timestamp (synthesised only where the stream has none)."""

    frame: av.VideoFrame
    pts: int
    image: Rendered | None = None  # its image, when it was made already (then no frame is kept)


# Given out by the decoder before a packet that can only show after the target, once the frame on
# screen at the target is out: the answer is certain without decoding on to the next frame.
ANSWER_KNOWN = Decoded(cast(av.VideoFrame, None), -1)


@dataclass(frozen=True)
class PacketKey:
    """A keyframe known by its packet's pts (where the container has no full index)."""

    pts: int


ImageKey = tuple[int, RenderOptions, EncodeOptions]  # a frame (pts) and what it was made into


@dataclass
class Cursor:
    """Where the search stands on the open stream (see the module docstring)."""

    # The pts being looked for, while one is. Set by the search before it reads frames, cleared by a
    # seek; the decode loop reads it at each packet, as a decode that goes on serves the next target.
    target: int | None = None
    # The frame answered last (the exact search), and the first frame past its target, still usable
    # (or the answer itself, when it was certain before the next frame: see ANSWER_KNOWN). A seek
    # clears the lookahead.
    previous: Decoded | None = None
    lookahead: Decoded | None = None
    # The decoder state follows on from the last target: set when a decode starts (Playhead.decode),
    # cleared by a seek, the stream's end and single keyframe decodes.
    live: bool = False
    # Nothing demuxed since the open: decoding now starts at the stream's start (Playhead).
    at_start: bool = True
    # The stream's last frame, once a decode has reached the end (the exact search).
    last_frame: Decoded | None = None

    # Per open:
    # The last keyframe decoded since a seek (pts), and the longest run between two keyframes decoded
    # in a row (the decode loop): how far decoding on may go without an index (see can_continue).
    key_seen: int | None = None
    longest_gop: int = 0
    # The last keyframe grab (index entry or packet, and the pts it got) and a keyframe's pts less its
    # index timestamp (the keyframe finder).
    last_keyframe: tuple[int | PacketKey, int] | None = None
    key_shift: int | None = None
    # The last image made, by frame and options (the generator): a grab that lands on the same frame
    # again gets that image (no decoded pixels are kept).
    last_image: tuple[ImageKey, Rendered] | None = None

    def forget_open(self) -> None:
        """Clear what held for the previous opening of the container (the search keeps its place)."""
        self.target = None
        self.key_seen = None
        self.longest_gop = 0
        self.last_keyframe = None
        self.key_shift = None
        self.last_image = None
