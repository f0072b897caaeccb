"""The soak of issue 19: mixed traffic for minutes against a server under a memory budget.

16 clients grab at random over a mix of assets (exact and keyframe, sizes, every format, a few bad
sources, now and then a small job) from a fresh server at ``STILLFRAME_MEMORY_LIMIT=1.5GiB`` on 2
decoders, then the same against one with no budget to speak of (throughput compared), then with the
default budget of a 2-core, 2 GiB container (its cgroup limit: ``STILLFRAME_MEMORY_LIMIT=2GiB``, two
cores). The process tree's resident memory is sampled throughout: its peak against the limit, and its
growth over the second half (the last tenth's peak against the tenth's at the half).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any

import httpx

from bench.scenarios import Context, _problem_code
from bench.servers import Stillframe, TreeMonitor

GiB = 1024**3
SOAK_CLIENTS = 16
SOAK_LIMIT = "1.5GiB"
UNLIMITED = "1TiB"
CONTAINER = "2GiB"


def _request(ctx: Context, rng: Any) -> tuple[str, str, dict[str, Any]]:
    """One request of the mix: mostly grabs, a few bad sources, now and then a small job."""
    mix = [ctx.assets[k] for k in ctx.cfg.mix_assets if k in ctx.assets] + [
        a for a in ctx.assets.values() if a.group == "shared"
    ][:4]
    asset = rng.choice(mix)
    if rng.random() < 0.02:
        times = [f"{rng.uniform(0, asset.duration):.3f}" for _ in range(5)]
        return "POST", "/v1/jobs", {"json": {"url": asset.rel, "times": times, "format": "jpeg", "width": 320}}
    params = {"url": asset.rel, "t": f"{rng.uniform(0, asset.duration):.6f}"}
    if rng.random() < 0.3:
        params["tolerance"] = "inf"
    if rng.random() < 0.5:
        params["width"] = str(rng.choice([160, 320, 640, 1280]))
    params["format"] = rng.choice(["jpeg", "jpeg", "jpeg", "png", "webp", "avif"])
    if rng.random() < 0.03:
        params["url"] = rng.choice(["missing.mp4", "../outside.mp4", "http://10.0.0.1/x.mp4"])
    return "GET", "/v1/frame", {"params": params}


async def _soak(ctx: Context, server: Stillframe, seconds: float, seed: str) -> dict[str, Any]:
    rng = ctx.rng("soak", seed)
    statuses: Counter[str] = Counter()
    ok = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=SOAK_CLIENTS + 4, max_keepalive_connections=SOAK_CLIENTS + 4)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal ok
        while time.perf_counter() < stop_at:
            method, path, kwargs = _request(ctx, rng)
            try:
                response = await client.request(method, path, **kwargs)
                status = str(response.status_code)
                if response.status_code >= 400:
                    status += " " + _problem_code(response.content)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            statuses[status] += 1
            if status in ("200", "202"):
                ok += 1
            elif status.startswith(("429", "503")):
                await asyncio.sleep(0.2)  # Retry-After, roughly, as a polite client would

    async with httpx.AsyncClient(base_url=server.base_url, timeout=120, limits=limits) as client:
        with TreeMonitor(server.pid, interval=0.5) as monitor:
            await asyncio.gather(*(client_loop(client) for _ in range(SOAK_CLIENTS)))
        text = (await client.get("/metrics")).text
        memory = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(
                ("stillframe_memory", "stillframe_resident", "stillframe_open_asset", "stillframe_image_cache_bytes")
            )
        }
    samples = monitor.samples or [0]
    tenth = max(1, len(samples) // 10)
    half = len(samples) // 2
    at_half, at_end = max(samples[half : half + tenth]), max(samples[-tenth:])
    return {
        "seconds": seconds,
        "clients": SOAK_CLIENTS,
        "ok_per_s": round(ok / seconds, 2),
        "statuses": dict(statuses),
        "server_errors": sum(v for k, v in statuses.items() if k.startswith("5") and not k.startswith("503")),
        "shed_503": sum(v for k, v in statuses.items() if k.startswith("503")),
        "tree_start_mib": round(samples[0] / 2**20, 1),
        "tree_peak_mib": round(monitor.peak_rss / 2**20, 1),
        "tree_at_half_mib": round(at_half / 2**20, 1),
        "tree_at_end_mib": round(at_end / 2**20, 1),
        "growth_second_half": round((at_end - at_half) / max(1, at_half), 4),
        "memory_at_end": memory,
    }


def _run(ctx: Context, label: str, env: dict[str, str], workers: int | None, cpus: set[int] | None) -> dict[str, Any]:
    server = Stillframe(
        ctx.cache,
        origin_port=None,
        log_path=ctx.cache / "server-soak.log",
        workers=workers,
        data_dir=ctx.tmp / f"soak-{label}",
        cpus=cpus,
        extra_env=env,
    )
    try:
        out = asyncio.run(_soak(ctx, server, ctx.cfg.soak_seconds, label))
    finally:
        server.stop()
    out["memory_limit"] = env["STILLFRAME_MEMORY_LIMIT"]
    ctx.say(
        f"  soak {label} ({out['memory_limit']}): {out['ok_per_s']} ok/s, tree peak {out['tree_peak_mib']} MiB, "
        f"second-half growth {out['growth_second_half']:.1%}, 5xx {out['server_errors']}, 503 {out['shed_503']}"
    )
    return out


def scenario_soak(ctx: Context) -> dict[str, Any]:
    limited = _run(ctx, "limited", {"STILLFRAME_MEMORY_LIMIT": SOAK_LIMIT}, 2, None)
    unlimited = _run(ctx, "unlimited", {"STILLFRAME_MEMORY_LIMIT": UNLIMITED}, 2, None)
    out: dict[str, Any] = {"limited": limited, "unlimited": unlimited}
    out["limit_bytes"] = int(1.5 * GiB)
    out["tree_peak_over_limit"] = limited["tree_peak_mib"] * 2**20 > out["limit_bytes"]
    out["throughput_vs_unlimited"] = round(limited["ok_per_s"] / max(0.01, unlimited["ok_per_s"]), 3)
    cores = set(sorted(os.sched_getaffinity(0))[:2])  # (its decoders: one per core, as by default there)
    out["container_2GiB_2cores"] = _run(ctx, "container", {"STILLFRAME_MEMORY_LIMIT": CONTAINER}, len(cores), cores)
    return out
