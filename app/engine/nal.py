"""H.264 packets that no other picture needs, read from their NAL unit headers.

An exact grab does not need the pictures before its target that nothing refers to. The decoder can
skip them itself (``skip_frame=NONREF``), but only after it has taken the packet, and with frame threads
every packet taken holds a thread: a skipped B-frame then stalls the reference chain that two threads
would otherwise decode side by side. Packets this module calls disposable are never handed to the
decoder at all.

A packet is disposable only when every NAL unit in it is a slice of a non-IDR picture with
``nal_ref_idc == 0`` (H.264 7.4.1: such a picture is never used for inter prediction), an access unit
delimiter or filler data, and it has at least one slice. Anything else (parameter sets, SEI such as a
recovery point, SVC prefixes, IDR slices, data we cannot parse) keeps the packet.
"""

from __future__ import annotations

_SLICE = 1  # coded slice of a non-IDR picture
_AUD = 9
_FILLER = 12


class H264Disposable:
    """``disposable(packet_bytes)`` for one H.264 stream, in AVCC (MP4/MKV: length-prefixed NAL
    units, the length size read from the extradata) or Annex B (MPEG-TS, raw: start codes)."""

    def __init__(self, extradata: bytes | None) -> None:
        # avcC starts with configurationVersion = 1; Annex B extradata (if any) starts with 0x00.
        if extradata and len(extradata) >= 7 and extradata[0] == 1:
            self.length_size: int | None = (extradata[4] & 3) + 1
        else:
            self.length_size = None

    def __call__(self, data: bytes) -> bool:
        headers = self._length_prefixed(data) if self.length_size else self._annex_b(data)
        if not headers:
            return False
        slices = 0
        for header in headers:
            kind, ref_idc = header & 0x1F, (header >> 5) & 3
            if header & 0x80:  # forbidden_zero_bit: not a NAL unit header after all
                return False
            if kind == _SLICE and ref_idc == 0:
                slices += 1
            elif kind not in (_AUD, _FILLER):
                return False
        return slices > 0

    def _length_prefixed(self, data: bytes) -> list[int]:
        size = self.length_size
        assert size is not None
        headers, at, end = [], 0, len(data)
        while at < end:
            length = int.from_bytes(data[at : at + size], "big")
            if length == 0 or at + size + length > end:
                return []  # not what the extradata promised: keep the packet
            headers.append(data[at + size])
            at += size + length
        return headers

    @staticmethod
    def _annex_b(data: bytes) -> list[int]:
        headers = []
        at = data.find(b"\x00\x00\x01")
        if at != 0 and data[:at].strip(b"\x00"):
            return []  # bytes before the first start code: not Annex B
        while at != -1:
            if at + 3 >= len(data):
                break
            headers.append(data[at + 3])
            at = data.find(b"\x00\x00\x01", at + 3)
        return headers
