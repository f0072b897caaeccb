"""Where decoding runs: off the event loop, behind one small interface (``DecoderPool``)."""

from app.pool.base import DecoderPool, GrabTask

__all__ = ["DecoderPool", "GrabTask"]
