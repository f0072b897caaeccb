"""The printed table, the issue's targets as PASS/FAIL lines, and the machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from typing import Any

from bench.media import REPO, ffmpeg_exe
from bench.stats import ratio


def machine() -> dict[str, Any]:
    import av
    import PIL

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": affinity,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu or platform.processor(),
        "mem_total_gib": _mem_total_gib(),
        "loadavg": list(os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyav": av.__version__,
        "pyav_libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
        "pillow": PIL.__version__,
        "ffmpeg_cli": run([ffmpeg_exe(), "-hide_banner", "-version"]).splitlines()[0] if ffmpeg_exe() else "",
        "git_commit": run(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty_files": len([line for line in run(["git", "status", "--porcelain"]).splitlines() if line]),
    }


def _mem_total_gib() -> float | None:
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


# ---------------------------------------------------------------------------------------------- table


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _keyframe_p50(block: dict[str, Any]) -> float | None:
    decoded = block.get("stillframe_warm_decoded") or {}
    return decoded.get("p50_ms") if decoded.get("n") else block["stillframe_warm"]["p50_ms"]


def table(results: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, ...]] = []
    header = ("scenario", "asset", "method", "n", "p50 ms", "p90 ms", "p99 ms", "x CLI", "x floor")
    sc = results.get("scenarios", {})
    for name, cli_key in (("exact", "ffmpeg_cli"), ("keyframe", "ffmpeg_cli_nokey")):
        for asset, block in (sc.get(name) or {}).items():
            if not isinstance(block, dict):
                continue
            cli = (block.get(cli_key) or {}).get("p50_ms")
            floor = (block.get("floor") or {}).get("p50_ms")
            methods = (
                "stillframe_warm",
                "stillframe_warm_decoded",
                "stillframe_one_core",
                "stillframe_cold",
                "naive_pyav",
                cli_key,
            )
            for method in (*methods, "floor", "floor_threads"):
                m = block.get(method)
                if not m:
                    continue
                mine = method not in (cli_key, "floor")
                rows.append(
                    (
                        name,
                        asset,
                        method,
                        str(m.get("n")),
                        _fmt(m.get("p50_ms")),
                        _fmt(m.get("p90_ms")),
                        _fmt(m.get("p99_ms")),
                        _fmt(ratio(m.get("p50_ms"), cli), 2) if mine else "",
                        _fmt(ratio(m.get("p50_ms"), floor), 2) if mine else "",
                    )
                )
    formats = sc.get("formats")
    for asset, by_format in (formats.get("http") or {}).items() if isinstance(formats, dict) else []:
        jpeg = (by_format.get("jpeg") or {}).get("p50_ms")
        for fmt, m in by_format.items():
            rows.append(
                (
                    "formats",
                    asset,
                    f"{fmt} keyframe grab, {m.get('bytes_p50')} B",
                    str(m.get("n")),
                    _fmt(m.get("p50_ms")),
                    _fmt(m.get("p90_ms")),
                    _fmt(m.get("p99_ms")),
                    "",
                    f"{_fmt(ratio(m.get('p50_ms'), jpeg), 2)} x jpeg",
                )
            )
    batch = sc.get("batch")
    if isinstance(batch, dict) and "span_decode" in batch:
        span = batch["span_decode"]["seconds"]
        cli_all = batch["ffmpeg_cli"]["seconds_for_all"]
        asset = batch["asset"]["rel"].rsplit("/", 1)[-1]
        for method in ("engine_sorted", "engine_shuffled", "jobs_api_sorted", "jobs_api_shuffled"):
            m = batch.get(method)
            if isinstance(m, dict) and not m.get("seconds"):
                rows.append(
                    (
                        "batch",
                        asset,
                        f"{method}: FAILED {m.get('failed') or m.get('error')}"[:60],
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                    )
                )
                continue
            if isinstance(m, dict) and m.get("seconds"):
                rows.append(
                    (
                        "batch",
                        asset,
                        f"{method} ({batch['times']} t)",
                        "1",
                        _fmt(m["seconds"] * 1000, 0),
                        "",
                        "",
                        _fmt(ratio(m["seconds"], cli_all), 3),
                        _fmt(ratio(m["seconds"], span), 2),
                    )
                )
        rows.append(
            (
                "batch",
                asset,
                f"{batch['times']} x ffmpeg CLI" + (" (est.)" if batch["ffmpeg_cli"]["extrapolated"] else ""),
                str(batch["ffmpeg_cli"]["calls_made"]),
                _fmt((cli_all or 0) * 1000, 0),
                "",
                "",
                "",
                "",
            )
        )
        rows.append(
            (
                "batch",
                asset,
                f"span decode ({batch['span_decode']['frames']} fr)",
                "1",
                _fmt(span * 1000, 0),
                "",
                "",
                "",
                "",
            )
        )
    for scenario, asset, block in _remote_blocks(sc):
        cli = block["ffmpeg_cli"].get("p50_ms")
        for method in ("stillframe_exact", "stillframe_keyframe", "ffmpeg_cli"):
            m = block[method]
            extra = f" [{_fmt(m.get('requests_per_grab_p50'), 0)} req, {_kib(m.get('bytes_per_grab_p50'))}]"
            rows.append(
                (
                    scenario,
                    asset,
                    method + extra,
                    str(m.get("n")),
                    _fmt(m.get("p50_ms")),
                    _fmt(m.get("p90_ms")),
                    _fmt(m.get("p99_ms")),
                    _fmt(ratio(m.get("p50_ms"), cli), 2) if method != "ffmpeg_cli" else "",
                    "",
                )
            )
    tp = sc.get("throughput")
    if isinstance(tp, dict):
        for level in tp.values():
            if isinstance(level, dict) and "clients" in level:
                rows.append(
                    (
                        "throughput",
                        f"{level['clients']} clients",
                        f"{level['ok_per_s']} ok/s, {level['server_cores_used']} cores, "
                        f"{level['server_peak_rss_mib']} MiB",
                        str(level["n"]),
                        _fmt(level["p50_ms"]),
                        _fmt(level["p90_ms"]),
                        _fmt(level["p99_ms"]),
                        "",
                        "",
                    )
                )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _kib(v: Any) -> str:
    return "-" if v is None else f"{v / 1024:.0f} KiB"


# ---------------------------------------------------------------------------------------------- targets


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    sc = results.get("scenarios", {})
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        out.append({"target": name, "result": "n/a" if ok is None else ("PASS" if ok else "FAIL"), "detail": detail})

    exact = sc.get("exact") or {}
    for key in ("720p_gop2", "1080p_gop2"):
        b = exact.get(key)
        if not isinstance(b, dict) or "floor" not in b:
            add(f"warm exact grab <= 1.3x floor p50 ({key})", None, "not measured")
            add(f"warm exact grab >= 2x faster than ffmpeg CLI ({key})", None, "not measured")
            continue
        s, f, c = b["stillframe_warm"]["p50_ms"], b["floor"]["p50_ms"], b["ffmpeg_cli"]["p50_ms"]
        r = ratio(s, f)
        add(f"warm exact grab <= 1.3x floor p50 ({key})", r is not None and r <= 1.3, f"{s} ms vs floor {f} ms = {r}x")
        r = ratio(c, s)
        add(
            f"warm exact grab >= 2x faster than ffmpeg CLI ({key})",
            r is not None and r >= 2,
            f"CLI {c} ms / stillframe {s} ms = {r}x",
        )
    # Keyframe targets count only the grabs that decoded their keyframe: one that lands on the keyframe
    # of the grab before gets that image again at once, which says nothing about decoding speed.
    for key, b in (sc.get("keyframe") or {}).items():
        if not isinstance(b, dict) or "stillframe_warm" not in b:
            continue
        s, c = _keyframe_p50(b), b["ffmpeg_cli_nokey"]["p50_ms"]
        r = ratio(c, s)
        add(
            f"keyframe grab >= 5x faster than ffmpeg -skip_frame nokey ({key})",
            r is not None and r >= 5,
            f"CLI {c} ms / stillframe {s} ms = {r}x (grabs that decoded)",
        )
    b = (sc.get("keyframe") or {}).get("1080p_gop2")
    if isinstance(b, dict) and "stillframe_warm" in b:
        s = _keyframe_p50(b)
        one = b.get("stillframe_one_core") or {}
        if one.get("n"):  # the target's own condition: the server on one core
            add(
                "keyframe grab of 1080p < 40 ms p50 warm on one core, JPEG included (1080p_gop2)",
                one["p50_ms"] < 40,
                f"{one['p50_ms']} ms with the server on core {one.get('server_cores')} ({s} ms on all cores; "
                f"floor: one keyframe decode {b['floor']['p50_ms']} ms)",
            )
        else:
            add(
                "keyframe grab of 1080p < 40 ms p50 warm, JPEG included (1080p_gop2)",
                s is not None and s < 40,
                f"{s} ms over the grabs that decoded, on all cores ({one.get('skipped', 'one core not measured')}; "
                f"floor: one keyframe decode {b['floor']['p50_ms']} ms)",
            )
    batch = sc.get("batch")
    if isinstance(batch, dict) and "ratios" in batch:
        r = batch["ratios"]
        for name in ("engine_sorted", "engine_shuffled", "jobs_api_sorted", "jobs_api_shuffled"):
            if isinstance(batch.get(name), dict) and not batch[name].get("seconds"):
                detail = f"did not complete: {batch[name].get('failed')} {batch[name].get('problem_detail') or ''}"
                add(f"batch of {batch['times']} ({name})", False, detail)
                continue
            if f"{name}_vs_span" not in r:
                continue
            add(
                f"batch of {batch['times']} ({name}) <= 1.2x one forward decode of the span",
                r[f"{name}_vs_span"] <= 1.2,
                f"{batch[name]['seconds']} s vs {batch['span_decode']['seconds']} s = {r[f'{name}_vs_span']}x",
            )
            add(
                f"batch of {batch['times']} ({name}) >= 10x cheaper than {batch['times']} CLI calls",
                r[f"cli_vs_{name}"] >= 10,
                f"CLI {batch['ffmpeg_cli']['seconds_for_all']} s / {batch[name]['seconds']} s = {r[f'cli_vs_{name}']}x",
            )
    for scenario, key, b in _remote_blocks(sc):
        se = b["stillframe_exact"]
        add(
            f"{scenario} bytes per exact grab < 2x GOP after the first request ({key})",
            se["bytes_vs_gop"] < 2,
            f"{se['bytes_per_grab_mean']} B/grab vs GOP {se['gop_bytes_mean']} B = {se['bytes_vs_gop']}x "
            f"(p50 {_fmt(se['bytes_vs_gop_p50'], 2)}x), {_fmt(se['requests_per_grab_p50'], 0)} requests/grab",
        )
    tp = sc.get("throughput")
    if isinstance(tp, dict) and "1" in tp and "64" in tp:
        one, many = tp["1"], tp["64"]
        r = ratio(many["ok_per_s"], one["ok_per_s"])
        add(
            "64 clients >= 1.7x single-client req/s",
            r is not None and r >= 1.7,
            f"{many['ok_per_s']} vs {one['ok_per_s']} ok/s = {r}x; server {many['server_cores_used']} cores",
        )
        others = {
            k: v
            for level in (tp.get(str(c)) for c in (1, 8, 64))
            if level
            for k, v in level["statuses"].items()
            if k not in ("200", "429")
        }
        add("no error but 429 at 1/8/64 clients", not others, f"other statuses: {others or 'none'}")
    return out


def _remote_blocks(sc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(scenario, asset, block) of the remote grabs measured: over HTTP, and from the object store."""
    return [
        (scenario, asset, block)
        for scenario in ("remote", "objstore")
        for asset, block in (sc.get(scenario) or {}).items()
        if isinstance(block, dict) and "stillframe_exact" in block
    ]
