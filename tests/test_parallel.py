"""The helper threads that share one picture's work run on other cores than the thread asking."""

from __future__ import annotations

import os
import threading

import pytest

from app.engine.parallel import HelperThreads

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux CPU affinity and at least two allowed cores",
)


def _where() -> tuple[int, frozenset[int]]:
    return threading.get_native_id(), frozenset(os.sched_getaffinity(0))


def test_helpers_are_kept_off_the_submitting_threads_core() -> None:
    helpers = HelperThreads(max_workers=2, name="test-helper")
    allowed = frozenset(os.sched_getaffinity(0))
    first = next(iter(allowed))
    others = allowed - {first}
    try:
        for core in (first, next(iter(others)), first):
            os.sched_setaffinity(0, {core})  # the asking thread, on that core alone
            try:
                _, affinity = helpers.submit(_where).result()
                assert affinity == allowed - {core}
            finally:
                os.sched_setaffinity(0, allowed)
        # Every helper thread follows, not only the one that ran last.
        os.sched_setaffinity(0, {first})
        try:
            started = threading.Barrier(3)
            seen = [helpers.submit(lambda: (started.wait(), _where())[1]) for _ in range(2)]
            started.wait()
            placements = [future.result() for future in seen]
        finally:
            os.sched_setaffinity(0, allowed)
        assert len({thread for thread, _ in placements}) == 2
        assert all(affinity == others for _, affinity in placements)
    finally:
        helpers.shutdown()


def test_helpers_run_the_work() -> None:
    helpers = HelperThreads(max_workers=3, name="test-helper")
    try:
        assert [helpers.submit(pow, 2, n).result() for n in range(5)] == [1, 2, 4, 8, 16]
    finally:
        helpers.shutdown()


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_in_parallel_gives_every_result_in_item_order(threads: int) -> None:
    """Shares go to helper threads (every n-th item each); the results come back in the items' order."""
    from app.engine.parallel import in_parallel

    seen: set[int] = set()

    def work(item: int) -> int:
        seen.add(threading.get_native_id())
        return item * item

    assert in_parallel(work, list(range(11)), threads) == [item * item for item in range(11)]
    assert in_parallel(work, [], threads) == []
    assert threading.get_native_id() in seen  # the asking thread takes the first share
    assert (len(seen) > 1) is (threads > 1)  # and helpers the others
