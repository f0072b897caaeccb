"""The decoder pool interface: the API and the job runner only ever talk to this."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from app.engine import FrameFailure, FrameResult
from app.engine.options import GrabOptions

TaskKind = Literal["grab", "info", "info_keyframes"]


@dataclass(frozen=True)
class GrabTask:
    """One unit of decode work: a source (as the client named it) and the times wanted from it.

    The worker resolves ``url`` itself (under the same media-root and SSRF rules), so a task is
    plain data that crosses process boundaries and, later, a Redis queue.
    """

    url: str
    times: tuple[str, ...]
    options: GrabOptions = field(default_factory=GrabOptions)
    # Which span of a job this is: lanes other than 0 keep worker affinity of their own, so the spans
    # of one job decode on different workers side by side.
    lane: int = 0
    # What the worker does: decode ``times`` (a grab), or describe the asset (``info``; with its
    # keyframe times: ``info_keyframes``; see app.pool.tasks).
    kind: TaskKind = "grab"

    @property
    def affinity(self) -> str:
        return self.url if self.lane == 0 else f"{self.url}\x00lane{self.lane}"


class DecoderPool(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def grab(self, task: GrabTask) -> FrameResult:
        """The image for ``task.times[0]``; raises EngineError (``queue_full``, ``decode_timeout``,
        ``decode_failed`` when a worker dies, or the engine's own codes)."""
        ...

    def grab_many(self, task: GrabTask) -> AsyncIterator[FrameResult | FrameFailure]:
        """Every time of ``task``, each result as soon as it exists (ascending time, not request
        order: each carries its request ``index``). Closing the iterator cancels what is left."""
        ...

    def ready(self) -> bool:
        """Whether the pool can take work now (for /readyz)."""
        ...

    def memory(self) -> dict[str, int | list[int]]:
        """Resident and open-asset bytes of the pool's processes against the budget (for /readyz)."""
        ...

    def over_memory_budget(self) -> bool:
        """Whether this process and the pool's are over ``memory_limit`` together."""
        ...
