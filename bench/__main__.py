"""``python -m bench`` (``make bench``): stillframe against the ffmpeg CLI, a naive PyAV script and the
decode floor. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import frontend, media, report, scenarios, soak
from bench.client import client_overhead
from bench.servers import Origin, Stillframe, process_tree, rss_bytes

HERE = Path(__file__).resolve().parent
SCENARIOS = ("exact", "keyframe", "formats", "batch", "remote", "objstore", "throughput", "profile", "soak", "frontend")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (fewer assets and samples)")
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma list of scenarios ({', '.join(SCENARIOS)})")
    p.add_argument("--cache-dir", type=Path, default=HERE / ".cache", help="inputs (made once) and media root")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/<timestamp>.json)")
    p.add_argument("--no-shared", action="store_true", help="leave out ../shared/media")
    p.add_argument("--workers", type=int, default=None, help="STILLFRAME_WORKERS for the server (default: its own)")
    tuning = p.add_argument_group("sample counts (defaults: full run; --quick lowers them)")
    for f in fields(scenarios.Config):
        if f.name in ("quick",) or f.name.endswith("_assets") or f.name == "naive_skip":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "clients":
            tuning.add_argument(flag, type=lambda s: tuple(int(x) for x in s.split(",")), default=None)
        else:
            tuning.add_argument(flag, type=type(f.default), default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = scenarios.Config.quick_mode() if args.quick else scenarios.Config()
    overrides = {f.name: getattr(args, f.name) for f in fields(cfg) if getattr(args, f.name, None) is not None}
    cfg = replace(cfg, **overrides)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    # The engine runs in this process too (batch, profile): give it the allocator a decoder worker has.
    from app.pool.worker import tune_allocator

    tune_allocator()
    began = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cache = args.cache_dir.resolve()
    print(f"stillframe benchmark ({'quick' if cfg.quick else 'full'}), inputs in {cache}")
    assets = media.build(cache, shared=not args.no_shared and not cfg.quick)
    setup_s = time.perf_counter() - began
    results: dict[str, Any] = {
        "started_at": stamp,
        "machine": report.machine(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "assets": {k: a.describe() for k, a in assets.items()},
        "scenarios": {},
    }
    origin = Origin(cache, latency=cfg.remote_latency)
    store, store_env = scenarios.start_object_store(cfg.remote_latency) if "objstore" in wanted else (None, {})
    tmp = Path(tempfile.mkdtemp(prefix="stillframe-bench-"))
    server = None
    try:

        def start_server() -> Stillframe:
            return Stillframe(
                cache,
                origin_port=origin.port,
                log_path=cache / "server.log",
                workers=args.workers,
                data_dir=cache / "jobs-data" / stamp,
                extra_env=store_env,
            )

        server = start_server()
        results["server"] = {"start_to_ready_s": round(server.start_seconds, 3), "pid": server.pid}
        print(f"server ready in {server.start_seconds:.2f} s at {server.base_url}; origin on :{origin.port}")
        ctx = scenarios.Context(cfg, cache, stamp, assets, server, origin, tmp, store=store)
        results["client_overhead_ms"] = client_overhead(server.base_url, ctx.grabber)
        print(f"GET /healthz p50 ms by client: {results['client_overhead_ms']} (the grabs are timed with the first)")
        for name in SCENARIOS:
            if name not in wanted:
                continue
            print(f"[{name}]")
            if name == "throughput" and len(results["scenarios"]) > 0:
                # A fresh server: the earlier scenarios leave dozens of assets open in its workers, and
                # throughput (and memory growth) should be measured from a known start.
                server.stop()
                server = start_server()
                ctx = scenarios.Context(cfg, cache, stamp, assets, server, origin, tmp, store=store)
                print(f"  (fresh server for throughput, ready in {server.start_seconds:.2f} s)")
            t0 = time.perf_counter()
            try:
                modules = (scenarios, frontend, soak)
                run = next(getattr(m, f"scenario_{name}") for m in modules if hasattr(m, f"scenario_{name}"))
                results["scenarios"][name] = run(ctx)
            except Exception as exc:  # one broken scenario must not lose the others' numbers
                traceback.print_exc()
                results["scenarios"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            results.setdefault("scenario_seconds", {})[name] = round(time.perf_counter() - t0, 1)
            rss = rss_bytes(process_tree(server.pid))
            results.setdefault("server_rss_mib_after", {})[name] = round(rss / 2**20, 1)
            print(f"  ({time.perf_counter() - t0:.0f} s; server process tree RSS now {rss / 2**20:.0f} MiB)")
    finally:
        if server is not None:
            server.stop()
        origin.stop()
        if store is not None:
            store.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(cache / "cold" / stamp, ignore_errors=True)
        shutil.rmtree(cache / "jobs-data" / stamp, ignore_errors=True)

    results["machine"]["loadavg_end"] = list(__import__("os").getloadavg())
    results["targets"] = report.targets(results)
    results["setup_seconds"] = round(setup_s, 1)
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    out = args.out or HERE / "results" / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")

    print()
    for line in report.table(results):
        print(line)
    print()
    for t in results["targets"]:
        print(f"{t['result']:<4}  {t['target']}: {t['detail']}")
    m = results["machine"]
    print(
        f"\n{m['nproc']} CPUs ({m['cpu_model']}), load {m['loadavg'][0]:.1f} -> {m['loadavg_end'][0]:.1f}; "
        f"{results['total_seconds']} s in all ({results['setup_seconds']} s making inputs). Results: {out}"
    )
    if overhead := results.get("client_overhead_ms"):
        print(f"Grabs timed through one keep-alive http.client connection; GET /healthz p50 ms by client: {overhead}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
