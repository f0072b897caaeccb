"""The image response headers shared by /v1/frame and job results: If-None-Match matching."""

from __future__ import annotations

import pytest

from app.api.images import entity_tag, none_match

ETAG = entity_tag(b"an image")


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (ETAG, True),
        (f"W/{ETAG}", True),  # weak comparison: the W/ prefix is ignored on either side
        (f'"a", {ETAG}', True),
        (f'"a" ,W/{ETAG} , "b"', True),
        ("*", True),
        (" * ", True),
        ('"a", "b"', False),
        (ETAG.strip('"'), False),  # unquoted: not an entity tag
        (f'"{ETAG}"', False),  # quoted twice: another tag
        ('"a,b"', False),  # a comma inside a tag does not split it
        ("", False),
        (None, False),
    ],
)
def test_if_none_match_compares_weakly(header: str | None, matches: bool) -> None:
    assert none_match(header, ETAG) is matches
    assert none_match(header, f"W/{ETAG}") is matches  # a weak validator matches the same way


def test_a_tag_with_a_comma_is_one_tag() -> None:
    assert none_match('"x", "a,b"', '"a,b"')
    assert not none_match('"a,b"', '"a"')


def test_no_tag_matches_only_any() -> None:
    assert none_match("*", None)
    assert not none_match('""', None)


def test_entity_tag_is_strong_and_stable() -> None:
    assert ETAG == entity_tag(b"an image") != entity_tag(b"another image")
    assert ETAG.startswith('"') and ETAG.endswith('"') and not ETAG.startswith("W/")
