"""The engine: "this asset, at this time" -> an image, knowing nothing of HTTP or the service's settings.

Its face: ``ImageGenerator`` (build one from an asset and ``GrabOptions``, then ``image_at`` /
``images_for``), which gives ``FrameResult`` or ``FrameFailure`` per time, and raises ``EngineError``.

The generator's names load on first use (PEP 562), so that importing a light part of the engine (its
options, errors, time parsing) does not load the decoder (PyAV, FFmpeg).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from app.engine.errors import EngineError
from app.engine.options import EncodeOptions, GrabOptions, RenderOptions, SourceLimits
from app.engine.results import FrameFailure, FrameResult

if TYPE_CHECKING:
    from app.engine.decode import DEFAULT_DECODE_THREADS, DecodeStats
    from app.engine.generator import ImageGenerator

__all__ = [
    "DEFAULT_DECODE_THREADS",
    "DecodeStats",
    "EncodeOptions",
    "EngineError",
    "FrameFailure",
    "FrameResult",
    "GrabOptions",
    "ImageGenerator",
    "RenderOptions",
    "SourceLimits",
]

_LOADED_ON_USE = {
    "ImageGenerator": "app.engine.generator",
    "DecodeStats": "app.engine.decode",
    "DEFAULT_DECODE_THREADS": "app.engine.decode",
}


def __getattr__(name: str) -> Any:
    module = _LOADED_ON_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
