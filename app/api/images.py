"""The headers of an image response, for ``/v1/frame`` and a job's result images alike: the frame's
times, its file name, and its entity tag (made and matched here)."""

from __future__ import annotations

import hashlib
import re
from fractions import Fraction

from app.engine.timeparse import format_fraction

_EXPOSED = "X-Actual-Time, X-Actual-Time-Rational, X-Requested-Time, ETag"
_ENTITY_TAG = re.compile(r'(?:W/)?"([^"]*)"')


def image_headers(
    actual_time: Fraction, actual_time_rational: str, requested_time: Fraction, image_format: str
) -> dict[str, str]:
    """The time headers and file name of an image of the frame at ``actual_time``."""
    actual = format_fraction(actual_time)
    extension = "jpg" if image_format == "jpeg" else image_format
    return {
        "X-Actual-Time": actual,
        "X-Actual-Time-Rational": actual_time_rational,
        "X-Requested-Time": format_fraction(requested_time),
        "Content-Disposition": f'inline; filename="frame-{actual}.{extension}"',
        "Access-Control-Expose-Headers": _EXPOSED,
    }


def entity_tag(blob: bytes) -> str:
    """A strong entity tag for ``blob`` (the bytes of an image, or of whatever determines one)."""
    return '"' + hashlib.sha256(blob).hexdigest()[:32] + '"'


def none_match(if_none_match: str | None, etag: str | None) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag``, so a GET answers 304: ``*``, or a listed
    tag equal to it by the weak comparison (RFC 9110 §13.1.2: ``W/"x"`` matches ``"x"``)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    if not etag:
        return False
    wanted = _ENTITY_TAG.fullmatch(etag.strip())
    if wanted is None:
        return False
    return wanted.group(1) in _ENTITY_TAG.findall(if_none_match)
