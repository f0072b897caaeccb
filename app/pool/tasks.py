"""Decoder-worker tasks other than grabs: describe an asset.

It opens the asset afresh rather than through the worker's open assets: it reads and decodes the
container in its own way, which would leave a kept generator's decoder state behind its back.
"""

from __future__ import annotations

import dataclasses

from app.config import Settings
from app.engine import ImageGenerator
from app.engine.info import AssetInfo, describe
from app.engine.options import GrabOptions, SourceLimits
from app.engine.sources import resolve_source
from app.pool.base import GrabTask


def run_asset_task(task: GrabTask, settings: Settings, limits: SourceLimits, threads: int) -> AssetInfo:
    """The one answer of a non-grab task (``task.kind``); raises EngineError."""
    source = resolve_source(task.url, settings.source_policy())
    with ImageGenerator(
        source,
        GrabOptions(stream=task.options.stream),
        max_output_pixels=settings.max_output_pixels,
        limits=limits,
        decode_threads=threads,
    ) as generator:
        info = describe(generator, keyframes=task.kind == "info_keyframes")
        return dataclasses.replace(info, source_identity=source.identity)
