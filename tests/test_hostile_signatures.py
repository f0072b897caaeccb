"""Signatures are canonical: exactly one ``sig`` string verifies per signed URL, and ``stillframe sign``
refuses to sign what the server would refuse."""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

import pytest

from app.api.auth import AccessDenied, UrlSigner
from app.cli import main as cli_main
from app.config import get_settings

NOW = 1_000_000.0


def signer() -> UrlSigner:
    return UrlSigner({"web": "web-secret-0123456789"}, clock=lambda: NOW)


def variants(sig: str) -> list[str]:
    """Other spellings of the same 32 bytes (or of bytes a lax decoder reads the same)."""
    raw = base64.urlsafe_b64decode(sig + "=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    same_bytes = [sig[:-1] + alphabet[(last & ~3) | low] for low in range(4) if (last & ~3) | low != last]
    standard = base64.b64encode(raw).decode()  # '+' and '/' instead of '-' and '_'
    return [
        sig + "=",
        sig + "==",
        sig + "%3D",
        "%" + format(ord(sig[0]), "02X") + sig[1:],  # one character percent-encoded
        sig[:10] + "." + sig[10:],  # characters a lax decoder drops
        sig[:10] + "%0A" + sig[10:],
        " " + sig,
        sig + "+",
        *same_bytes,
        *([standard.rstrip("=")] if standard.rstrip("=") != sig else []),
    ]


def test_only_the_signers_own_sig_string_verifies() -> None:
    s = signer()
    url = s.sign("https://frames.example/v1/frame?url=a.mp4&t=2.5", ttl=60)
    parts = urlsplit(url)
    assert s.verify(parts.path, parts.query) == "web"
    signed, sig = parts.query.rsplit("&sig=", 1)
    for other in variants(sig):
        with pytest.raises(AccessDenied) as info:
            s.verify(parts.path, f"{signed}&sig={other}")
        assert info.value.code == "signature_invalid", other


@pytest.mark.parametrize(
    "url, kwargs, message",
    [
        ("/v1/jobs?url=a.mp4", {}, "GET /v1/frame"),
        ("https://frames.example/healthz", {}, "GET /v1/frame"),
        ("/v1/frame?url=a.mp4", {"ttl": 0}, "ttl"),
        ("/v1/frame?url=a.mp4", {"ttl": -5}, "ttl"),
        ("/v1/frame?url=a.mp4", {"ttl": 1e13}, "ttl"),
        ("/v1/frame?url=a.mp4", {"expires": int(NOW) - 1}, "expires"),
        ("/v1/frame?url=a.mp4", {"expires": 10**13}, "expires"),
    ],
)
def test_sign_refuses_what_the_server_would_refuse(url: str, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        signer().sign(url, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "http://h/v1/frame?url=a.mp4&t=nonsense",
        "http://h/v1/frame?url=a.mp4&t=" + "9" * 30,
        "http://h/v1/frame?t=1",
        "http://h/v1/frame?url=a.mp4&width=0",
        "http://h/v1/frame?url=a.mp4&background=rgb(999,0,0)",
        "http://h/v1/frame?url=a.mp4&colour=red",
        "http://h/v1/jobs?url=a.mp4",
    ],
)
def test_the_cli_refuses_to_sign_a_url_the_server_would_refuse(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STILLFRAME_URL_SIGNING_KEYS", "web:web-secret-0123456789")
    get_settings.cache_clear()
    try:
        assert cli_main(["sign", url]) == 2
        captured = capsys.readouterr()
        assert not captured.out and captured.err.startswith("error:")
        assert cli_main(["sign", "http://h/v1/frame?url=a.mp4&t=1"]) == 0
    finally:
        get_settings.cache_clear()
