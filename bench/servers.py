"""The servers in a benchmark run: stillframe itself (the real uvicorn process and its decoder workers),
and a Range-capable origin with added latency that counts what it is asked for. Plus /proc helpers
for the CPU and memory of a process tree (no psutil needed)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from bench.media import REPO

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (live ones; reaped children are not counted)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _TICKS


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have been busy (every core; /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / _TICKS


class TreeMonitor:
    """Samples a process tree's resident memory every ``interval`` s; CPU seconds at start and stop."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu0 = 0.0
        self._busy0 = 0.0
        self.machine_busy = 0.0
        self._t0 = 0.0
        self.cpu = 0.0
        self.wall = 0.0

    def __enter__(self) -> TreeMonitor:
        self._cpu0 = cpu_seconds(process_tree(self.root))
        self._busy0 = machine_busy_seconds()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(process_tree(self.root))
            self.samples.append(rss)
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.wall = time.perf_counter() - self._t0
        self.cpu = cpu_seconds(process_tree(self.root)) - self._cpu0
        self.machine_busy = machine_busy_seconds() - self._busy0

    @property
    def cores_used(self) -> float:
        return self.cpu / self.wall if self.wall else 0.0

    @property
    def machine_cores_busy(self) -> float:
        return self.machine_busy / self.wall if self.wall else 0.0


# ---------------------------------------------------------------------------------------------- stillframe


class Stillframe:
    """``python -m uvicorn app.main:app`` on a free port, with the media root and the origin allowed."""

    def __init__(
        self,
        media_root: Path,
        *,
        origin_port: int | None,
        log_path: Path,
        workers: int | None = None,
        data_dir: Path | None = None,
        cpus: set[int] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """``cpus``: the cores the server (its decoder workers included: they inherit it) may run on."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "STILLFRAME_MEDIA_ROOT": str(media_root), "STILLFRAME_SERVER_TIMING": "true"}
        if origin_port is not None:
            env["STILLFRAME_ALLOWED_NETWORKS"] = "127.0.0.0/8"
            env["STILLFRAME_ALLOWED_PORTS"] = f"80,443,{origin_port}"
        if workers is not None:
            env["STILLFRAME_WORKERS"] = str(workers)
        env.update(extra_env or {})
        if data_dir is not None:  # the job store: not the repository's ./data
            data_dir.mkdir(parents=True, exist_ok=True)
            env["STILLFRAME_DATA_DIR"] = str(data_dir)
        self._log = log_path.open("ab")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if cpus is not None:  # now, long before its decoder workers start (they inherit it)
            os.sched_setaffinity(self.process.pid, cpus)
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"stillframe exited with {self.process.returncode}; see {log_path}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"stillframe not ready after 90 s; see {log_path}")
            time.sleep(0.05)
        self.start_seconds = time.perf_counter() - started  # spawn to /readyz answering 200

    @property
    def pid(self) -> int:
        return self.process.pid

    def has_path(self, path: str, method: str = "post") -> bool:
        try:
            spec = httpx.get(self.base_url + "/openapi.json", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return False
        return method in spec.get("paths", {}).get(path, {})

    def openapi(self) -> dict:
        return httpx.get(self.base_url + "/openapi.json", timeout=10).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


# ---------------------------------------------------------------------------------------------- origin


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    origin: Origin


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.origin.serve(self, head=False)

    def do_HEAD(self) -> None:
        self.server.origin.serve(self, head=True)


class Origin:
    """A threaded HTTP/1.1 file server over ``root`` with single-range ``Range`` support, ETag and
    Last-Modified, that waits ``latency`` seconds before answering each request (a far-away origin or
    object store) and counts requests and body bytes sent, per path."""

    def __init__(self, root: Path, latency: float = 0.020) -> None:
        self.root = root.resolve()
        self.latency = latency
        self.requests: dict[str, int] = {}
        self.bytes_sent: dict[str, int] = {}
        self.ranges: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.origin = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, rel: str) -> str:
        return f"http://127.0.0.1:{self.port}/{rel}"

    def counts(self, rel: str) -> tuple[int, int]:
        path = "/" + rel
        with self._lock:
            return self.requests.get(path, 0), self.bytes_sent.get(path, 0)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests[path] = self.requests.get(path, 0) + 1
            self.ranges.setdefault(path, []).append(h.headers.get("Range") or "-")
        if self.latency:
            time.sleep(self.latency)
        target = (self.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.root) or not target.is_file():
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        st = target.stat()
        size = st.st_size
        first, last, status = 0, size - 1, 200
        spec = h.headers.get("Range")
        if spec and spec.startswith("bytes=") and "," not in spec:
            a, _, b = spec[6:].strip().partition("-")
            try:
                if a:
                    first, last = int(a), min(int(b), size - 1) if b else size - 1
                else:
                    first, last = max(0, size - int(b)), size - 1
                status = 206
            except ValueError:
                first, last, status = 0, size - 1, 200
            if status == 206 and first >= size:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        h.send_response(status)
        h.send_header("Content-Type", "video/mp4" if target.suffix in (".mp4", ".mov") else "application/octet-stream")
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{size:x}-{st.st_mtime_ns:x}"')
        h.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))
        h.send_header("Content-Length", str(last - first + 1))
        if status == 206:
            h.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        h.end_headers()
        if head:
            return
        sent = 0
        try:
            with target.open("rb") as f:
                f.seek(first)
                remaining = last - first + 1
                while remaining > 0:
                    chunk = f.read(min(remaining, 256 * 1024))
                    if not chunk:
                        break
                    h.wfile.write(chunk)
                    sent += len(chunk)
                    remaining -= len(chunk)
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True
        finally:
            with self._lock:
                self.bytes_sent[path] = self.bytes_sent.get(path, 0) + sent
