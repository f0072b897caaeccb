"""Shared checks for the attack suites: a response is a safe problem, and leaks nothing."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# What must never reach a client: paths, temp names, tracebacks, Python or FFmpeg internals.
_LEAK_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"/tmp/",
        r"/etc/",
        r"/proc/",
        r"/home/",
        r"/root/",
        r"/work/",
        r"/usr/",
        r"pytest-of-",
        r"\.partial",
        r"traceback",
        r'file "',
        r"\bline \d+",
        r"errno",
        r"invalid data found",
        r"av\.error",
        r"ffmpeg",
        r"libav",
        r"0x[0-9a-f]{8,}",  # pointers in FFmpeg log prefixes
        r"\[(mov|h264|hevc|matroska|mpegts|hls|png|avi)[^\]]*@",  # "[h264 @ 0x...]"
        r"exception",
        r"pyav",
    )
]


def problem_leaks(body: dict[str, Any], *, allowed: Iterable[str] = ()) -> list[str]:
    """The leaks found in a problem document (empty when it is clean). ``allowed``: substrings the
    client itself sent (a URL may echo the host the client gave, never anything it resolved to)."""
    text = " ".join(str(v) for k, v in body.items() if k not in ("type", "instance"))
    for fragment in allowed:
        text = text.replace(fragment, "")
    return [p.pattern for p in _LEAK_PATTERNS if p.search(text)]


def assert_problem(response: Any, *, allowed_text: Iterable[str] = (), statuses: Iterable[int] = ()) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem (4xx, or one of ``statuses``) with a stable code and no leaks."""
    status = response.status_code
    assert status != 500, f"internal error: {response.text[:500]}"
    if statuses:  # e.g. 502 source_unreachable, where the source's host does not resolve
        assert status in set(statuses), f"status {status} not in {sorted(statuses)}: {response.text[:500]}"
    else:
        assert 400 <= status < 500, f"expected a 4xx problem, got {status}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert re.fullmatch(r"[a-z][a-z0-9_]*", body["code"]), body
    assert body["type"] == f"/problems/{body['code']}"
    assert body["title"]
    leaks = problem_leaks(body, allowed=allowed_text)
    assert not leaks, f"problem leaks {leaks}: {body}"
    return body


def assert_served_or_problem(response: Any, *, allowed_text: Iterable[str] = ()) -> int:
    """An image (200) or a clean 4xx problem: never a 5xx, never a leak."""
    if response.status_code == 200:
        assert response.headers["content-type"].startswith("image/"), response.headers
        assert response.content, "empty image"
        return 200
    assert_problem(response, allowed_text=allowed_text)
    return int(response.status_code)
