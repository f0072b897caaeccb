"""Helpers for the job and webhook tests: clips, a real server process, SSE, and a webhook receiver."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.live_server import REPO, free_port
from tests.media import make_h264_clip

WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes


def make_clip(path: Path, *, size: str = "320x240", seconds: int = 4, gop: int = 25) -> Path:
    """A 25 fps H.264 clip (testsrc2) made with the ffmpeg CLI."""
    return make_h264_clip(path, size=size, rate=25, seconds=seconds, gop=gop, extra=["-preset", "ultrafast"])


class JobServer:
    """``uvicorn app.main:app`` in its own process group, restartable on the same data directory."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> JobServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: kill -9 takes the decoders too
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not become ready:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill9(self) -> None:
        """kill -9 of the whole server: the API process and its decoder processes, all at once."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def sigterm(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # decoders left behind by a killed parent
                os.killpg(self.process.pid, signal.SIGKILL)

    def url(self, path: str) -> str:
        return self.base_url + path


def wait_job(base_url: str, job_id: str, *, timeout: float = 60, until: Callable[[dict[str, Any]], bool] | None = None):
    """Poll until the job ends (or ``until`` holds); returns the job document."""
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=10).json()
        if until(job) if until else job["status"] in ("completed", "cancelled", "failed"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']}: {job['progress']}")
        time.sleep(0.05)


@dataclass
class SSEEvent:
    id: int | None
    event: str
    data: dict[str, Any]


def read_sse(
    base_url: str,
    job_id: str,
    *,
    last_event_id: int | None = None,
    stop_after: int | None = None,
    timeout: float = 60,
    sink: list[SSEEvent] | None = None,
) -> list[SSEEvent]:
    """Read the job's event stream (until it ends, or ``stop_after`` events, then hang up); events
    also go to ``sink`` as they arrive."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    events: list[SSEEvent] = [] if sink is None else sink
    with httpx.stream("GET", f"{base_url}/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    events.append(
                        SSEEvent(int(fields["id"]) if "id" in fields else None, fields.get("event", "message"),
                                 json.loads(fields["data"]))
                    )  # fmt: skip
                    if stop_after is not None and len(events) >= stop_after:
                        break
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
    return events


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    at: float


@dataclass
class WebhookReceiver:
    """A real HTTP receiver on loopback. ``behaviour(path, n)`` gives the status to answer for the
    n-th request (from 1) to ``path``; every request is recorded. ``start()`` may come late: until
    then the port refuses connections (the receiver is "down")."""

    behaviour: Callable[[str, int], int] = lambda path, n: 200
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    count = sum(1 for r in receiver.received if r.path == self.path) + 1
                    status = receiver.behaviour(self.path, count)
                    receiver.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status, time.time())
                    )
                extra = b"ok"
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", receiver.url("/redirected"))
                self.send_header("Content-Length", str(len(extra)))
                self.end_headers()
                self.wfile.write(extra)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path == path]


def wait_for(condition: Callable[[], bool], timeout: float = 30, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {message}")
        time.sleep(0.05)


def server_env(media_root: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "STILLFRAME_MEDIA_ROOT": str(media_root),
        "STILLFRAME_DATA_DIR": str(data_dir),
        "STILLFRAME_WORKERS": "1",
        **extra,
    }


def module_server(media_root: Path, tmp_path_factory: Any, **env: str) -> Iterator[JobServer]:
    """For a module's ``server`` fixture (``yield from``): a JobServer on a fresh data directory."""
    data = tmp_path_factory.mktemp("jobs-data")
    live = JobServer(server_env(media_root, data, **env), data / "server.log").start()
    try:
        yield live
    finally:
        live.stop()


def iter_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file())
