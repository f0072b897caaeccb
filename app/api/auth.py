"""Access control: API keys, signed URLs, CORS and per-caller rate limiting.

* API keys come as ``Authorization: Bearer <key>``. Only their SHA-256 digests are kept, compared in
  constant time. A key's id (for logs and ownership) is the first 8 hex digits of its digest.
* A signed URL lets a GET of ``SIGNED_PATHS`` (``/v1/frame``, storyboards, ...) or of a job's results
  and events through without a key (an ``<img src>`` or an ``EventSource`` on a web page): the
  query carries ``kid`` (which signing key), ``exp`` (unix seconds) and ``sig``, the base64url
  HMAC-SHA256 of the canonical path and query (see :func:`canonical_message`).
* With no API keys configured the service is open (and says so loudly in its log at startup).
* ``STILLFRAME_RATE_LIMIT`` gives each caller a token bucket: by key id, or by client address for
  open access and signed URLs.

Routers use :func:`caller_identity` (``Depends``) to learn who calls: a key id, ``url:<kid>`` for a
signed URL, or ``None`` when the service is open; it also sets ``request.state.owner`` to the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final
from urllib.parse import quote, unquote_to_bytes, urlsplit, urlunsplit

from fastapi import Depends, FastAPI, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import problem_handler, problem_responses
from app.api.ratelimit import MemoryRateLimiter, RateDecision, RateLimiter, parse_rate
from app.config import Settings
from app.errors import ProblemError

__all__ = [
    "AUTH_RESPONSES",
    "SECURITY",
    "AccessControl",
    "AccessDenied",
    "ApiKeyring",
    "Caller",
    "UrlSigner",
    "authenticate",
    "caller_identity",
    "canonical_message",
    "install_access_control",
    "key_id",
    "log_access_mode",
]

log = logging.getLogger("stillframe.auth")

SIGNED_PATHS: Final = frozenset(  # GET (and HEAD) only: what an <img>, a <video> track or a player loads
    {"/v1/frame", "/v1/info", "/v1/animated.gif", "/v1/animated.webp"}
    | {f"/v1/storyboard.{ext}" for ext in ("vtt", "json", "jpg", "webp", "png")}
)
# A job's result images and event stream, for an <img> and an EventSource: the signature covers the
# job's id, so it stands for its owner (see app.api.jobs.get_owner).
SIGNED_JOB_PATH: Final = re.compile(r"/v1/jobs/[^/]+/(results/[0-9]+|events)\Z")


def signable(path: str) -> bool:
    return path in SIGNED_PATHS or SIGNED_JOB_PATH.fullmatch(path) is not None


SIGNATURE_PARAMS: Final = ("kid", "exp", "sig")
_SCOPE_KEY: Final = "stillframe.signed_url"
_MIN_KEY_LENGTH: Final = 16
_EXP_DIGITS: Final = 12  # an exp with more digits is refused as it is read
_MAX_TTL: Final = 10 * 366 * 86400  # ten years
EXPOSED_HEADERS: Final = (
    "X-Actual-Time",
    "X-Actual-Time-Rational",
    "X-Requested-Time",
    "ETag",
    "Server-Timing",
    "Retry-After",
    "Content-Disposition",
    "WWW-Authenticate",
    "Location",
    "Content-Length",
)
# Request headers the API documents, for a browser's preflight.
ALLOWED_HEADERS: Final = (
    "Authorization",
    "Content-Type",
    "Accept",
    "If-None-Match",
    "Idempotency-Key",
    "Prefer",
    "Last-Event-ID",
)


class AccessDenied(ProblemError):
    """A refusal (401, 403 or 429): a problem response like any other :class:`app.errors.ProblemError`."""


def _unauthorized(detail: str, *, invalid: bool) -> AccessDenied:
    challenge = 'Bearer realm="stillframe"' + (', error="invalid_token"' if invalid else "")
    return AccessDenied("unauthorized", detail, headers={"WWW-Authenticate": challenge})


def _signature_invalid(detail: str) -> AccessDenied:
    return AccessDenied("signature_invalid", detail)


# --------------------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------------------


def key_id(key: str) -> str:
    """The public id of an API key: the first 8 hex digits of its SHA-256 (safe to log and store)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class ApiKeyring:
    """The configured API keys, kept only as SHA-256 digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests: list[tuple[bytes, str]] = []
        for key in keys:
            digest = hashlib.sha256(key.encode()).digest()
            self._digests.append((digest, digest.hex()[:8]))
            if len(key) < _MIN_KEY_LENGTH:
                log.warning(
                    "API key %s is shorter than %d characters: easy to guess", digest.hex()[:8], _MIN_KEY_LENGTH
                )

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, presented: str) -> str | None:
        """The key id of ``presented`` if it is a configured key. Every digest is compared, each in
        constant time, so the time taken says nothing about which key (or how much of one) matched."""
        candidate = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for digest, ident in self._digests:
            if hmac.compare_digest(candidate, digest):
                found = ident
        return found


# --------------------------------------------------------------------------------------------------
# Signed URLs
# --------------------------------------------------------------------------------------------------


def _split_query(raw: str) -> list[tuple[bytes, bytes]]:
    """``a=1&b=x%20y`` -> [(b"a", b"1"), (b"b", b"x y")], exactly as bytes ('+' is a space)."""
    pairs: list[tuple[bytes, bytes]] = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote_to_bytes(name.replace("+", " ")), unquote_to_bytes(value.replace("+", " "))))
    return pairs


def _without_signature(raw: str) -> list[str]:
    """The ``name=value`` parts of a query, as received, minus ``kid``, ``exp`` and ``sig``."""
    return [p for p in raw.split("&") if p and _split_query(p)[0][0].decode("latin-1") not in SIGNATURE_PARAMS]


def _quote(data: bytes) -> str:
    return quote(data, safe="-._~")


def canonical_message(path: str, raw_query: str) -> bytes:
    """What a signature covers: the path, then every query parameter but ``sig`` (``kid`` and ``exp``
    included), decoded and re-encoded the one RFC 3986 way, sorted by name then value::

        /v1/frame?exp=1767225600&kid=web&t=2.5&url=clips%2Fa.mp4

    So a signature survives re-ordering and re-encoding of the query, and nothing else.
    """
    pairs = sorted((k, v) for k, v in _split_query(raw_query) if k != b"sig")
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs)
    return f"{path}?{query}".encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class UrlSigner:
    """HMAC-SHA256 signed URLs with key ids (``kid:secret`` pairs from the settings) and expiry."""

    def __init__(self, keys: Mapping[str, str], *, clock: Callable[[], float] = time.time) -> None:
        self._keys = {kid: secret.encode() for kid, secret in keys.items()}
        self._clock = clock

    def __bool__(self) -> bool:
        return bool(self._keys)

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def signature(self, kid: str, path: str, raw_query: str) -> str:
        return _b64url(hmac.new(self._keys[kid], canonical_message(path, raw_query), hashlib.sha256).digest())

    def sign(self, url: str, *, kid: str | None = None, ttl: float = 3600, expires: int | None = None) -> str:
        """``url`` (absolute, or a path with a query) with ``kid``, ``exp`` and ``sig`` appended;
        any of those already in it are replaced."""
        if not self._keys:
            raise ValueError("no URL signing keys configured (STILLFRAME_URL_SIGNING_KEYS)")
        kid = kid if kid is not None else next(iter(self._keys))
        if kid not in self._keys:
            raise ValueError(f"unknown signing key id {kid!r}; configured: {', '.join(self._keys)}")
        if expires is None and not 0 < ttl <= _MAX_TTL:
            raise ValueError(f"ttl must be more than 0 and at most {_MAX_TTL} seconds")
        exp = int(expires if expires is not None else self._clock() + ttl)
        if expires is not None and not self._clock() < exp < 10**_EXP_DIGITS:
            raise ValueError("expires must be a unix time in seconds, in the future")
        parts = urlsplit(url)
        path = parts.path or "/"
        if not any(path.endswith(signed) for signed in SIGNED_PATHS) and not SIGNED_JOB_PATH.search(path):
            raise ValueError("only GET /v1/frame (SIGNED_PATHS) and a job's results and events can be signed")
        kept = _without_signature(parts.query)
        kept += [f"kid={_quote(kid.encode())}", f"exp={exp}"]
        query = "&".join(kept)
        sig = self.signature(kid, parts.path or "/", query)
        return urlunsplit(parts._replace(query=f"{query}&sig={sig}", fragment=""))

    def verify(self, path: str, raw_query: str) -> str:
        """The key id that signed this request; raises :class:`AccessDenied` (403) when the signature
        is missing, malformed, wrong or expired."""
        found: dict[str, list[bytes]] = {name: [] for name in SIGNATURE_PARAMS}
        raw_sig = b""
        for part in raw_query.split("&"):
            if not part:
                continue
            ((name, value),) = _split_query(part)
            text = name.decode("latin-1")
            if text in found:
                found[text].append(value)
            if text == "sig":
                raw_sig = part.partition("=")[2].encode("latin-1")  # as sent: no other spelling verifies
        if any(len(values) != 1 for values in found.values()):
            raise _signature_invalid("a signed URL needs exactly one each of kid, exp and sig")
        kid = found["kid"][0].decode("utf-8", "replace")
        exp_text = found["exp"][0]
        if kid not in self._keys:
            raise _signature_invalid("unknown signing key")
        if not exp_text.isdigit() or len(exp_text) > _EXP_DIGITS:
            raise _signature_invalid("exp must be a unix time in seconds")
        expected = self.signature(kid, path, raw_query).encode()
        # the one spelling sign() writes: unpadded base64url, compared as text (a decoder would also take
        # padding, other bits in the last character, and characters it skips)
        if not hmac.compare_digest(raw_sig, expected):
            raise _signature_invalid("the signature does not match this URL")
        if int(exp_text) < self._clock():
            raise AccessDenied("signature_expired", "the signed URL has expired")
        return kid


@dataclass(frozen=True)
class _SignedRequest:
    path: str
    raw_query: str  # as received, signature parameters included


class SignedUrlMiddleware:
    """Moves ``kid``, ``exp`` and ``sig`` out of the query of ``GET /v1/frame`` (the route's own
    parameters stay as they were), keeping the query as received for :func:`caller_identity` to
    verify. Nothing is decided here: a request whose signature is bad is refused by the dependency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            root = scope.get("root_path", "")
            route_path = path[len(root) :] if root and path.startswith(root) else path
            raw: bytes = scope.get("query_string", b"")
            if signable(route_path) and raw:
                query = raw.decode("latin-1")
                kept = _without_signature(query)
                if len(kept) != len([p for p in query.split("&") if p]):
                    # (in place: outer middleware, app.api.observe, reads the route the router adds here)
                    scope["query_string"] = "&".join(kept).encode("latin-1")
                    scope[_SCOPE_KEY] = _SignedRequest(path, query)
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------------------------------
# The dependency
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    identity: str | None  # key id, "url:<kid>", or None (open service)
    rate_key: str  # the bucket this request draws from


class AccessControl:
    """The access rules of one app, built from its settings."""

    def __init__(self, settings: Settings, *, limiter: RateLimiter | None = None) -> None:
        self.keyring = ApiKeyring(key.get_secret_value() for key in settings.api_keys)
        self.signer = UrlSigner({kid: secret.get_secret_value() for kid, secret in settings.url_signing_keys.items()})
        if limiter is None and settings.rate_limit:
            limiter = MemoryRateLimiter(parse_rate(settings.rate_limit))
        self.limiter = limiter
        # failed guesses of keys and signatures, per client address
        self.failures = (
            MemoryRateLimiter(parse_rate(settings.auth_failure_limit)) if settings.auth_failure_limit else None
        )

    @property
    def open(self) -> bool:
        return not self.keyring

    def authenticate(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
        client = request.client.host if request.client else "unknown"
        signed: _SignedRequest | None = request.scope.get(_SCOPE_KEY)
        guessing = signed is not None or (credentials is not None and not self.open)
        if not guessing or self.failures is None:
            return self._authenticate(client, signed, credentials)
        # An address over its failures is refused whatever it presents: a right guess must look like a wrong one.
        if not (locked := self.failures.peek(f"addr:{client}")).allowed:
            raise _rate_limited(locked, "too many failed authentications from this address; retry later")
        try:
            return self._authenticate(client, signed, credentials)
        except AccessDenied as exc:
            if exc.code in ("unauthorized", "signature_invalid"):
                self.failures.hit(f"addr:{client}")
            raise

    def _authenticate(
        self, client: str, signed: _SignedRequest | None, credentials: HTTPAuthorizationCredentials | None
    ) -> Caller:
        if signed is not None:
            kid = self.signer.verify(signed.path, signed.raw_query)
            caller = Caller(f"url:{kid}", f"url:{kid}:{client}")
        elif self.open:
            caller = Caller(None, f"addr:{client}")
        elif credentials is None:
            raise _unauthorized("an API key is required (Authorization: Bearer <key>)", invalid=False)
        else:
            ident = self.keyring.identify(credentials.credentials)
            if ident is None:
                raise _unauthorized("the API key is not valid", invalid=True)
            caller = Caller(ident, f"key:{ident}")
        if self.limiter is not None:
            decision = self.limiter.hit(caller.rate_key)
            if not decision.allowed:
                raise _rate_limited(decision, "the rate limit for this caller is exhausted; retry later")
        return caller


def _rate_limited(decision: RateDecision, detail: str) -> AccessDenied:
    headers = {"Retry-After": decision.retry_after_header, "RateLimit-Limit": str(decision.limit)}
    return AccessDenied("rate_limited", detail, headers=headers)


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `STILLFRAME_API_KEYS`, as `Authorization: Bearer <key>`.",
)
_signed_url = APIKeyQuery(
    name="sig",
    auto_error=False,
    scheme_name="SignedURL",
    description=(
        "GET of `/v1/frame`, `/v1/info`, storyboards, animated previews and a job's results and events: "
        "`kid`, `exp` (unix seconds) and `sig`, the base64url HMAC-SHA256 of the "
        "canonical path and query (every parameter but `sig`, sorted), made by `stillframe sign`."
    ),
)


async def caller_identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _sig: Annotated[str | None, Depends(_signed_url)] = None,  # documents the scheme; verified from the scope
) -> str | None:
    """Who calls: an API key id (8 hex digits), ``url:<kid>`` for a signed URL, or ``None`` when the
    service is open. Raises 401 ``unauthorized``, 403 ``signature_invalid`` / ``signature_expired``
    or 429 ``rate_limited`` (with ``Retry-After``). FastAPI caches it per request, so routers may
    depend on it again for ownership without a second rate-limit hit."""
    return _identify(request, credentials)


async def authenticate(request: Request) -> str | None:
    """:func:`caller_identity` for ``GET /v1/frame``, which binds nothing through FastAPI (see
    app.api.frames): the same checks on the same credentials."""
    return _identify(request, await _bearer(request))


def _identify(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    access: AccessControl = request.app.state.access_control
    identity = access.authenticate(request, credentials).identity
    request.state.owner = identity  # what the jobs router files jobs under (app.api.jobs.get_owner)
    return identity


CallerId = Annotated[str | None, Depends(caller_identity)]
# What a route that depends on caller_identity gets in its OpenAPI operation: either scheme will do.
SECURITY: list[dict[str, list[str]]] = [{_bearer.scheme_name: []}, {_signed_url.scheme_name: []}]

AUTH_RESPONSES = problem_responses(
    "unauthorized",
    "signature_invalid",
    "signature_expired",
    "source_forbidden",
    "rate_limited",
    "queue_full",
    notes={401: "no or an invalid API key, with `WWW-Authenticate`", 429: "with `Retry-After`"},
)


# --------------------------------------------------------------------------------------------------
# Wiring
# --------------------------------------------------------------------------------------------------


def install_access_control(app: FastAPI, settings: Settings, *, limiter: RateLimiter | None = None) -> AccessControl:
    """Keys, signed URLs, rate limiting and (when origins are configured) CORS for ``app``. Routers
    opt in with ``dependencies=[Depends(caller_identity)]``; health endpoints stay open."""
    access = AccessControl(settings, limiter=limiter)
    app.state.access_control = access
    app.add_exception_handler(AccessDenied, problem_handler)  # (also when no other problem handler is installed)
    app.add_middleware(SignedUrlMiddleware)
    if settings.cors_origins:  # outermost: refusals carry CORS headers too, and preflights need no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    return access


def log_access_mode(settings: Settings) -> None:
    """Say at startup how the service is protected; loudly when it is not."""
    if not settings.api_keys:
        log.warning(
            "!!! NO API KEYS CONFIGURED (STILLFRAME_API_KEYS): THIS SERVICE IS OPEN, anyone who can reach it can "
            "make it fetch and decode media. Set STILLFRAME_API_KEYS before exposing it. !!!"
        )
    else:
        log.info("access: %d API key(s), %d URL signing key(s)", len(settings.api_keys), len(settings.url_signing_keys))
    if settings.rate_limit:
        log.info("rate limit per caller: %s", settings.rate_limit)
    if settings.cors_origins:
        log.info("CORS allowed origins: %s", ", ".join(settings.cors_origins))
