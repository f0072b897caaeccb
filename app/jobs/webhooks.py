"""Webhook delivery: Standard Webhooks signatures, at least once, with a stable ``webhook-id``.

Deliveries are rows in the job store, written in the same transaction as the event they carry, so
they survive a restart. The dispatcher sends what is due through the SSRF-guarded client (the URL is
checked again at every attempt, redirects are not followed, each attempt has a short timeout and
reads at most a few KiB of the answer) and retries failures with exponential backoff and jitter
until ``webhook_retry_window`` has passed since the first attempt (the last retry lands at or after
the window's end). An endpoint that answers ``410 Gone`` gets nothing more.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from standardwebhooks import Webhook

from app.config import Settings
from app.engine.errors import EngineError
from app.jobs.model import Delivery
from app.jobs.storage import result_storage
from app.jobs.store import JobStore
from app.metrics import WEBHOOK_ATTEMPTS
from app.net.client import GuardedClient

log = logging.getLogger("stillframe.webhooks")

_USER_AGENT = "stillframe-webhooks/0.1"


def signer(secret: str) -> Webhook:
    """A Standard Webhooks signer for a ``whsec_...`` secret; ValueError when it is not one."""
    if not secret.startswith("whsec_"):
        raise ValueError("STILLFRAME_WEBHOOK_SECRET must be a Standard Webhooks secret: whsec_<base64>")
    try:
        return Webhook(secret)
    except Exception as exc:  # the package raises plain errors for bad base64
        raise ValueError("STILLFRAME_WEBHOOK_SECRET is not valid base64 after whsec_") from exc


def backoff_delay(attempts: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before the next try after ``attempts`` failed ones: doubling from the base delay up to
    the cap, with "equal jitter" (half fixed, half random) so retries of many events spread out."""
    uniform = (rng or random).uniform
    ceiling = min(settings.webhook_retry_max_delay, settings.webhook_retry_base * 2 ** min(attempts - 1, 60))
    return ceiling / 2 + uniform(0, ceiling / 2)


def next_attempt(attempts: int, first_attempt_at: float, now: float, settings: Settings) -> float | None:
    """When to try again after ``attempts`` failures, or None when the retry window is over. The
    last retry is scheduled at the window's end, so deliveries are tried for the whole window."""
    deadline = first_attempt_at + settings.webhook_retry_window
    if now >= deadline:
        return None
    return min(now + backoff_delay(attempts, settings), deadline)


@dataclass(frozen=True)
class Attempt:
    status: int | None  # HTTP status, None when nothing came back
    error: str  # what went wrong ("" on success)

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


def build_body(delivery: Delivery, settings: Settings) -> bytes:
    """The JSON body: the stored payload, with the image inlined (base64) where the job asked for it
    and the file still exists."""
    if delivery.image_file is None:
        return delivery.payload.encode()
    image = result_storage(settings).read_bytes(delivery.image_file)
    if image is None:
        return delivery.payload.encode()
    payload = json.loads(delivery.payload)
    payload["data"]["image"] = base64.b64encode(image).decode("ascii")
    return json.dumps(payload, separators=(",", ":")).encode()


def send(delivery: Delivery, settings: Settings, webhook: Webhook) -> Attempt:
    """One delivery attempt (blocking): sign, POST through the guard, read a capped answer."""
    body = build_body(delivery, settings)
    now = datetime.now(UTC)
    headers = {
        "webhook-id": delivery.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": webhook.sign(delivery.id, now, body.decode()),
        "Content-Type": "application/json",
        "User-Agent": _USER_AGENT,
    }
    policy = replace(
        settings.fetch_policy(),
        max_redirects=0,  # a redirect is an error, never followed
        connect_timeout=min(settings.fetch_connect_timeout, settings.webhook_timeout),
        read_timeout=settings.webhook_timeout,
        total_timeout=settings.webhook_timeout,
    )
    try:
        with GuardedClient(policy) as client:  # a fresh client: the URL is checked (and resolved) again
            response = client.open(
                delivery.url,
                method="POST",
                headers=headers,
                content=body,
                accept_statuses=range(300, 600),
                max_bytes=2**62,
            )
            try:
                read = 0
                with contextlib.suppress(EngineError):
                    for chunk in response.iter_chunks(2**62):
                        read += len(chunk)
                        if read >= settings.webhook_max_response_bytes:
                            break  # the answer is not ours to read in full
            finally:
                response.close()
    except EngineError as exc:
        return Attempt(None, f"{exc.code}: {exc.detail}")
    except Exception as exc:  # never let one endpoint take the dispatcher down
        return Attempt(None, f"error: {type(exc).__name__}")
    status = response.status_code
    return Attempt(status, "" if 200 <= status < 300 else f"HTTP {status}")


class WebhookDispatcher:
    """Sends due deliveries from the store, a few at a time, until stopped."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.webhook = signer(settings.webhook_secret) if settings.webhook_secret else None
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def enabled(self) -> bool:
        return self.webhook is not None

    def poke(self) -> None:
        """New deliveries were stored: look now rather than at the next scheduled time."""
        self._wake.set()

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._loop(), name="webhook-dispatcher")

    async def stop(self, grace: float = 2.0) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._in_flight:  # attempts under way finish (they are short); the rest stay pending
            await asyncio.wait(list(self._in_flight.values()), timeout=grace)

    async def _loop(self) -> None:
        limit = self.settings.webhook_concurrency
        while not self._stopping:
            self._wake.clear()
            free = limit - len(self._in_flight)
            if free > 0:
                try:
                    due = await self.store.due_deliveries(time.time(), free, exclude=list(self._in_flight))
                except Exception:
                    log.exception("reading due webhook deliveries failed")
                    due = []
                for delivery in due:
                    self._in_flight[delivery.id] = asyncio.create_task(self._attempt(delivery))
            wait = 5.0
            if len(self._in_flight) < limit:
                with contextlib.suppress(Exception):
                    next_at = await self.store.next_delivery_at()
                    if next_at is not None:
                        wait = max(0.0, min(wait, next_at - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.01))

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            assert self.webhook is not None
            started = time.time()
            attempt = await asyncio.to_thread(send, delivery, self.settings, self.webhook)
            if attempt.delivered:
                WEBHOOK_ATTEMPTS.labels("delivered").inc()
                await self.store.delivery_succeeded(delivery.id)
            elif attempt.gone:
                WEBHOOK_ATTEMPTS.labels("gone").inc()
                log.info("webhook endpoint answered 410 Gone: no more deliveries to it")
                await self.store.stop_endpoint(delivery.url)
            else:
                first = delivery.first_attempt_at or started
                now = time.time()
                retry_at = next_attempt(delivery.attempts + 1, first, now, self.settings)
                WEBHOOK_ATTEMPTS.labels("gave_up" if retry_at is None else "retry").inc()
                if retry_at is None:
                    log.warning("webhook %s: giving up after %d attempts", delivery.id, delivery.attempts + 1)
                    await self.store.delivery_gave_up(delivery.id, started, attempt.error)
                else:
                    await self.store.delivery_retry(delivery.id, started, retry_at, attempt.error)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)
        finally:
            self._in_flight.pop(delivery.id, None)
            self._wake.set()
