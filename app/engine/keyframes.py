"""Finding keyframes near a time, for tolerant grabs (a keyframe costs one decode, the frames after it more).

Where they come from, best first: the container's full index (an MP4's sample table, an AVI's idx1),
Matroska's Cues (read on a first seek), the keyframe packets after a seek (read, not decoded), and
last, for streams timed by decode order, probing: decoding the first keyframe after a seek.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from fractions import Fraction
from typing import Any, cast

import av
import av.error

from app.engine.container import indexed_keyframes
from app.engine.cursor import Decoded, PacketKey
from app.engine.decode import Playhead
from app.engine.options import GrabOptions

Keyframe = int | Decoded | PacketKey  # an index timestamp, a frame decoded already, or a keyframe packet


class KeyframeFinder:
    """The keyframes of one open asset's video stream, and single keyframes decoded on request."""

    def __init__(self, playhead: Playhead, index: list[int]) -> None:
        self.playhead = playhead
        # The keyframe index (timestamps, sorted): the container's, where it lists the whole stream, or
        # Matroska's Cues once read; empty otherwise.
        self.index = index
        self.cues_read = False  # Matroska: whether a seek has loaded its Cues (see read_cues)

    def candidates(
        self, seconds: Fraction, low: Fraction | None, high: Fraction | None, duration: Fraction | None
    ) -> list[Keyframe]:
        """Keyframes to try, nearest to t first: index timestamps to decode, or frames already decoded
        while probing a container that has no index."""
        playhead = self.playhead
        if playhead.synthetic_pts:
            return []
        margin = Fraction(1, 2)  # index timestamps can be DTS: the decoded PTS is checked afterwards
        keys: list[Keyframe]
        shift = 0
        if not self.index and not self.cues_read and playhead.container.format.name.startswith("matroska"):
            self.read_cues()
        if self.index:
            # The index is sorted: the 4 nearest to t are among the 4 on either side of it (a film has
            # thousands of entries, too many to sort by Fraction distance on every grab).
            at = bisect.bisect_left(self.index, playhead.pts_at(seconds))
            keys = [*self.index[max(0, at - 4) : at + 4]]
            if keys and not playhead.dts_clock:
                shift = self._index_shift(self.index[max(0, at - 1)])
        elif playhead.dts_clock:
            keys = [*self._probe(seconds, duration)]
        else:
            keys = [*self._packets_around(seconds, duration)]

        def time_of(key: Keyframe) -> Fraction:
            return playhead.time_of(key + shift if isinstance(key, int) else key.pts)

        window = [
            k
            for k in keys
            if (low is None or time_of(k) >= low - margin) and (high is None or time_of(k) <= high + margin)
        ]
        return sorted(window, key=lambda k: abs(time_of(k) - seconds))[:4]

    def keyframe_at(self, key: Keyframe, options: GrabOptions) -> Decoded | None:
        """Decode the keyframe of an index entry or a packet (or take one the probe already decoded)."""
        if isinstance(key, Decoded):
            return key
        playhead, cursor = self.playhead, self.playhead.cursor
        if cursor.last_keyframe is not None and cursor.last_keyframe[0] == key:
            # The same entry as the last keyframe grab: its image, if it is the last one made (taken now,
            # as a render finishing on the helper thread may replace it before it is used).
            pts, last = cursor.last_keyframe[1], cursor.last_image
            if last is not None and last[0] == (pts, options.render, options.encode):
                return Decoded(cast(av.VideoFrame, None), pts, last[1])
        if isinstance(key, PacketKey):
            decoded = self._decode_keyframe_packet(key)
            cursor.lookahead = None
            cursor.live = False
            cursor.last_keyframe = None if decoded is None else (key, decoded.pts)
            return decoded
        if not self.seek_to_entry(key):
            return None
        # (AVI frames are timed by the DTS the decoder hands out as it goes: no shortcut there.)
        decoded = next(playhead.decode(trust_all=False), None) if playhead.dts_clock else playhead.decode_one_keyframe()
        cursor.lookahead = None
        cursor.live = False
        cursor.last_keyframe = None if decoded is None else (key, decoded.pts)
        if decoded is not None:
            cursor.key_shift = decoded.pts - key
        return decoded

    def read_cues(self) -> None:
        """Matroska lists its keyframes in Cues (ffmpeg and mkvmerge write one per video keyframe), which
        FFmpeg reads on the first seek: from then on they are the keyframe index. Reading the packets
        between keyframes instead would fetch a GOP or two of a remote file for each grab."""
        self.cues_read = True
        with contextlib.suppress(av.error.FFmpegError):
            self.playhead.seek(self.playhead.pts_at(Fraction(0)))
        keys = indexed_keyframes(self.playhead.stream)
        if len(keys) > 1:
            self.index = keys

    def seek_to_entry(self, timestamp: int) -> bool:
        """Seek so that the next keyframe read is that of this index entry. Index entries carry DTS while
        demuxers such as mov seek by PTS, so seeking to the entry itself can land one GOP early: aim just
        before the next keyframe entry instead."""
        keys = self.index
        after = bisect.bisect_right(keys, timestamp)
        if after < len(keys):
            aim = keys[after] - 1
        elif self.cues_read:  # the last cue: Matroska seeks by presentation time, and reads on to the aim
            aim = timestamp
        else:  # the last keyframe: anywhere after it
            aim = timestamp + math.ceil(Fraction(3600) / self.playhead.time_base)
        try:
            self.playhead.seek(aim, backward=True)
        except av.error.FFmpegError:
            return False
        return True

    def _index_shift(self, entry: int) -> int:
        """How far the keyframe a grab of an index entry gets is from the entry's timestamp, so that
        "nearest to t" goes by what will be shown: the index holds decode times (B-frames show a
        keyframe some frames later), and where an edit list starts before the first keyframe, the seek
        for an entry can land a keyframe further on. Learnt from one keyframe packet (its pts), then
        from every keyframe decoded."""
        cursor = self.playhead.cursor
        if cursor.key_shift is None:
            found = self._keyframe_packet_pts(entry)
            cursor.key_shift = 0 if found is None else found - entry
        return cursor.key_shift

    def _keyframe_packet_pts(self, entry: int) -> int | None:
        """The pts of the keyframe packet of an index entry (read, not decoded)."""
        if not self.seek_to_entry(entry):
            return None
        packet = next(self.playhead.keyframe_packets(), None)
        return None if packet is None else int(packet.pts)

    def _clamped_target(self, seconds: Fraction, duration: Fraction | None) -> int:
        clamped = max(min(seconds, duration) if duration is not None else seconds, Fraction(0))
        return self.playhead.pts_at(clamped)

    def _probe(self, seconds: Fraction, duration: Fraction | None) -> list[Decoded]:
        """Without an index: the keyframe before t and the one after it, found by seeking.

        Demuxers without an index (MPEG-TS) seek by bisection and may land past the target, so the
        backward probe backs off until it lands at or before t, as exact grabs do.
        """
        playhead = self.playhead
        target = self._clamped_target(seconds, duration)
        found: dict[int, Decoded] = {}

        def land(aim: int | None) -> bool | None:
            frames = playhead.frames_from_start() if aim is None else playhead.frames_after_seek(aim)
            first = next(frames, None)
            if first is not None:
                found[first.pts] = first
                if first.pts <= target:
                    return True
            return None

        playhead.seek_back(target, land)
        with contextlib.suppress(av.error.FFmpegError):
            playhead.seek(target, backward=False)
            after = next(playhead.decode(trust_all=False), None)
            if after is not None:
                found[after.pts] = after
        playhead.cursor.live = False
        return list(found.values())

    def _packets_around(self, seconds: Fraction, duration: Fraction | None) -> list[PacketKey]:
        """Without a full index: the last keyframe at or before t and the first after it, from the
        packets after a seek (read, not decoded). A seek may land on an earlier keyframe than the one
        before t (sparse cues, MPEG-TS bisection), hence the reading on to t; one that lands past t
        backs off as exact grabs do."""
        playhead = self.playhead
        target = self._clamped_target(seconds, duration)

        def land(aim: int | None) -> list[PacketKey] | None:
            try:
                if aim is None or aim < playhead.pts_at(Fraction(0)):
                    playhead.reopen()
                    aim = None
                else:
                    playhead.seek(aim)
            except av.error.FFmpegError:
                return None
            playhead.cursor.at_start = False
            before, after = self._scan_keyframe_packets(target)
            if before is not None or aim is None:
                return [PacketKey(pts) for pts in (before, after) if pts is not None]
            return None

        return playhead.seek_back(target, land) or []

    def _scan_keyframe_packets(self, target: int) -> tuple[int | None, int | None]:
        """From the demuxer's position: the pts of the last keyframe at or before target, of the first after."""
        before: int | None = None
        for packet in self.playhead.keyframe_packets():
            if packet.pts > target:
                return before, int(packet.pts)
            before = int(packet.pts)
        return before, None

    def _decode_keyframe_packet(self, key: PacketKey) -> Decoded | None:
        """The keyframe whose packet has this pts: seek to it, read on to its packet, decode that one."""
        playhead = self.playhead

        def land(aim: int | None) -> list[Decoded] | None:
            try:
                playhead.seek(cast(int, aim))
            except av.error.FFmpegError:
                return None
            packet: Any = next((p for p in playhead.keyframe_packets() if p.pts >= key.pts), None)
            if packet is None or packet.pts > key.pts:
                return None  # landed past it: back off
            decoded = playhead.decode_keyframe_packet(packet)
            return [] if decoded is None else [decoded]

        found = playhead.seek_back(key.pts, land, to_start=False)
        return found[0] if found else None
