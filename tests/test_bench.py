"""The benchmark measures what it says it measures.

Its statistics and its PASS/FAIL lines are checked against hand-made results, and its scenarios run on
small clips against a real server, a real origin and the real ffmpeg CLI: a change to the service or to
``bench/`` that breaks a measurement (errors counted as samples, grabs that answer the wrong frame, a
target read off the wrong number) fails here rather than in the next ``make bench``. No timing is
asserted: speed is what ``make bench`` reports.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from bench import media, report, scenarios
from bench.servers import Origin, Stillframe
from bench.stats import parse_server_timing, percentile, ratio, summary


def test_percentile_is_numpys_linear_interpolation() -> None:
    rng = random.Random(3)
    for n in (1, 2, 3, 10, 101):
        values = [rng.uniform(0, 100) for _ in range(n)]
        for q in (0, 10, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None


def test_summary_is_in_milliseconds() -> None:
    block = summary([0.010, 0.020, 0.030])
    assert block["n"] == 3
    assert block["p50_ms"] == 20.0
    assert block["min_ms"] == 10.0
    assert summary([])["p50_ms"] is None
    assert ratio(1, 0) is None
    assert ratio(None, 2) is None
    assert ratio(3, 2) == 1.5


def test_server_timing_header_is_parsed() -> None:
    header = "open;dur=0.00, decode;dur=21.5, render;dur=0.8, encode;dur=2.9, pool;dur=1.41, cache;desc=x"
    assert parse_server_timing(header) == {"open": 0.0, "decode": 21.5, "render": 0.8, "encode": 2.9, "pool": 1.41}
    assert parse_server_timing(None) == {}
    assert parse_server_timing("decode;dur=oops") == {}


def _keyframe_block(all_p50: float, decoded_p50: float, cli_p50: float, one_core_p50: float | None) -> dict[str, Any]:
    block: dict[str, Any] = {
        "stillframe_warm": {"n": 12, "p50_ms": all_p50},
        "stillframe_warm_decoded": {"n": 9, "p50_ms": decoded_p50},
        "ffmpeg_cli_nokey": {"n": 12, "p50_ms": cli_p50},
        "floor": {"n": 12, "p50_ms": 20.0},
    }
    if one_core_p50 is not None:
        block["stillframe_one_core"] = {"n": 12, "p50_ms": one_core_p50, "server_cores": [0]}
    return block


def _results(**scenario_blocks: Any) -> dict[str, Any]:
    return {"scenarios": scenario_blocks}


def _verdicts(results: dict[str, Any]) -> dict[str, str]:
    return {t["target"]: t["result"] for t in report.targets(results)}


def test_keyframe_targets_count_only_the_grabs_that_decoded() -> None:
    # The grabs that reused the image before are fast (3 ms here): the target must not count them.
    verdicts = _verdicts(
        _results(
            keyframe={
                "1080p_gop10": _keyframe_block(3.0, 26.0, 129.0, None),
                "720p_gop2": _keyframe_block(15.0, 15.0, 75.0, None),
            }
        )
    )
    assert verdicts["keyframe grab >= 5x faster than ffmpeg -skip_frame nokey (1080p_gop10)"] == "FAIL"  # 4.96x
    assert verdicts["keyframe grab >= 5x faster than ffmpeg -skip_frame nokey (720p_gop2)"] == "PASS"  # 5.0x


def test_the_40_ms_target_reads_the_one_core_measurement() -> None:
    on_one_core = _verdicts(_results(keyframe={"1080p_gop2": _keyframe_block(30.0, 30.0, 200.0, 41.0)}))
    assert on_one_core["keyframe grab of 1080p < 40 ms p50 warm on one core, JPEG included (1080p_gop2)"] == "FAIL"
    unmeasured = _verdicts(_results(keyframe={"1080p_gop2": _keyframe_block(30.0, 30.0, 200.0, None)}))
    assert unmeasured["keyframe grab of 1080p < 40 ms p50 warm, JPEG included (1080p_gop2)"] == "PASS"


def test_exact_throughput_and_error_targets() -> None:
    exact = {
        "720p_gop2": {
            "stillframe_warm": {"p50_ms": 40.0},
            "floor": {"p50_ms": 30.0},  # 1.33x the floor: over 1.3
            "ffmpeg_cli": {"p50_ms": 100.0},  # 2.5x faster than the CLI
        }
    }
    levels = {
        "1": {"ok_per_s": 20.0, "statuses": {"200": 100}, "server_cores_used": 1.4},
        "8": {"ok_per_s": 30.0, "statuses": {"200": 150, "429": 3}, "server_cores_used": 1.9},
        "64": {"ok_per_s": 34.0, "statuses": {"200": 170, "500 decode_failed": 1}, "server_cores_used": 1.9},
    }
    verdicts = _verdicts(_results(exact=exact, throughput=levels))
    assert verdicts["warm exact grab <= 1.3x floor p50 (720p_gop2)"] == "FAIL"
    assert verdicts["warm exact grab >= 2x faster than ffmpeg CLI (720p_gop2)"] == "PASS"
    assert verdicts["warm exact grab <= 1.3x floor p50 (1080p_gop2)"] == "n/a"
    assert verdicts["64 clients >= 1.7x single-client req/s"] == "PASS"  # 1.7x
    assert verdicts["no error but 429 at 1/8/64 clients"] == "FAIL"


# ---------------------------------------------------------------------------------------------- a run


@dataclass
class _Run:
    ctx: scenarios.Context
    assets: dict[str, media.Asset]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Run]:
    """The benchmark's own inputs, small: 320x180 H.264 with B-frames, 6 s at GOP 2 s, in both layouts,
    under the keys the targets name (so that every target is evaluated), and a server and origin as
    ``python -m bench`` starts them."""
    if media.ffmpeg_exe() is None:
        pytest.skip("the ffmpeg CLI (imageio-ffmpeg) is not installed")
    cache = tmp_path_factory.mktemp("bench-cache")
    synth = cache / "synthetic"
    synth.mkdir()
    spec = media.Spec("h264_small_gop2", "h264", 320, 180, 2, 6)
    log: list[str] = []
    media._make(spec, synth, log)
    assets: dict[str, media.Asset] = {}
    for key, layout in (("720p_gop2", "faststart"), ("1080p_gop2", "faststart"), ("1080p_gop2_moovend", "moovend")):
        path = synth / f"{spec.name}_{layout}.mp4"
        asset = media.Asset(key, str(path.relative_to(cache)), path, "synthetic", layout, gop_seconds=2)
        assets[key] = asset.probe()
    cfg = scenarios.Config(
        samples=2,
        min_samples=2,
        cell_budget=1.0,
        cold_samples=1,
        keyframe_samples=4,
        batch_size=12,
        batch_span=3.0,
        batch_repeats=1,
        batch_cli_calls=2,
        remote_samples=3,
        remote_cli_samples=1,
        throughput_seconds=1.0,
        profile_grabs=2,
        formats_samples=3,
        effort_frames=1,
        exact_assets=("720p_gop2",),
        cold_assets=("1080p_gop2",),
        keyframe_assets=("720p_gop2", "1080p_gop2"),
        formats_assets=("1080p_gop2",),
        remote_assets=("1080p_gop2", "1080p_gop2_moovend"),
        mix_assets=("720p_gop2", "1080p_gop2"),
    )
    origin = Origin(cache, latency=0.0)
    store, store_env = scenarios.start_object_store(0.0)
    server = Stillframe(
        cache, origin_port=origin.port, log_path=cache / "server.log", data_dir=cache / "jobs", extra_env=store_env
    )
    tmp = cache / "tmp"
    tmp.mkdir()
    try:
        ctx = scenarios.Context(cfg, cache, "test", assets, server, origin, tmp, say=lambda _: None, store=store)
        yield _Run(ctx, assets)
    finally:
        server.stop()
        origin.stop()
        if store is not None:
            store.stop()
        shutil.rmtree(cache, ignore_errors=True)


def test_exact_scenario_times_every_method_without_errors(bench_run: _Run) -> None:
    block = scenarios.scenario_exact(bench_run.ctx)["720p_gop2"]
    assert not block.get("errors"), block.get("errors")
    for method in ("stillframe_warm", "naive_pyav", "ffmpeg_cli", "floor"):
        assert block[method]["n"] >= 2, method
        assert block[method]["p50_ms"] > 0, method


def test_keyframe_scenario_answers_keyframes_and_tells_reuse_from_decoding(bench_run: _Run) -> None:
    out = scenarios.scenario_keyframe(bench_run.ctx)
    for key in ("720p_gop2", "1080p_gop2"):
        block = out[key]
        assert block["errors"] == {}
        assert block["not_a_keyframe"] == 0
        warm, decoded = block["stillframe_warm"]["n"], block["stillframe_warm_decoded"]["n"]
        assert warm == 4
        assert decoded + block["reused_previous_image"] == warm
        assert decoded >= 1
        assert block["ffmpeg_cli_nokey"]["n"] == 4
    one_core = out["1080p_gop2"]["stillframe_one_core"]
    assert one_core.get("n") or one_core.get("skipped")


def test_batch_scenario_completes_both_orders(bench_run: _Run) -> None:
    block = scenarios.scenario_batch(bench_run.ctx)
    assert block["times"] == 12
    for name in ("engine_sorted", "engine_shuffled", "jobs_api_sorted", "jobs_api_shuffled"):
        assert block[name].get("seconds"), (name, block[name])
    assert block["span_decode"]["seconds"] > 0
    assert all(block["ratios"][name] > 0 for name in block["ratios"])


def test_remote_scenario_counts_what_the_origin_serves(bench_run: _Run) -> None:
    out = scenarios.scenario_remote(bench_run.ctx)
    for exact in _assert_counted_grabs(out, bench_run):
        assert exact["gop_bytes_mean"] > 0


def _assert_counted_grabs(out: dict[str, Any], bench_run: _Run) -> list[dict[str, Any]]:
    """What the remote and objstore scenarios both report of each asset: the first request, three exact
    grabs, the CLI's fetches. Returns the exact-grab blocks."""
    blocks = []
    for key in ("1080p_gop2", "1080p_gop2_moovend"):
        block, size = out[key], bench_run.assets[key].size
        assert block["errors"] == {}
        assert block["first_request"]["requests"] >= 1
        assert 0 < block["first_request"]["bytes"] <= size
        exact = block["stillframe_exact"]
        assert exact["n"] == 3
        # (a clip this small is in the server's block cache after the first request: later grabs may
        # fetch nothing at all, never more than the file)
        assert 0 <= exact["bytes_per_grab_mean"] < size
        assert block["ffmpeg_cli"]["bytes_per_grab_p50"] > 0  # the CLI has no cache: it fetches every time
        blocks.append(exact)
    return blocks


def test_throughput_and_targets_from_a_run(bench_run: _Run) -> None:
    ctx = bench_run.ctx
    results: dict[str, Any] = {
        "scenarios": {
            "throughput": scenarios.scenario_throughput(ctx),
            "keyframe": scenarios.scenario_keyframe(ctx),
        }
    }
    throughput = results["scenarios"]["throughput"]
    for clients in ("1", "8", "64"):
        level = throughput[clients]
        assert level["statuses"].get("200", 0) > 0
        assert level["errors_other_than_429"] == 0, level["statuses"]
        assert level["server_peak_rss_mib"] > 0
    verdicts = _verdicts(results)
    assert verdicts["no error but 429 at 1/8/64 clients"] == "PASS"
    assert verdicts["64 clients >= 1.7x single-client req/s"] in ("PASS", "FAIL")
    assert verdicts["keyframe grab >= 5x faster than ffmpeg -skip_frame nokey (1080p_gop2)"] in ("PASS", "FAIL")
    assert report.table(results)  # the printed table renders from real results


def test_formats_scenario_encodes_every_format(bench_run: _Run) -> None:
    out = scenarios.scenario_formats(bench_run.ctx)
    per_format = out["http"]["1080p_gop2"]
    assert set(per_format) == set(scenarios.OUTPUT_FORMATS)
    for fmt, block in per_format.items():
        assert block["errors"] == {}, fmt
        assert block["n"] >= 1 and block["bytes_p50"] > 0, fmt
    rows = out["effort_sweep"]["settings"]
    assert {row["format"] for row in rows} == {"jpeg", "webp", "avif"}
    assert sum(row["default"] for row in rows) == 3  # one row per format is the server's default setting
    assert all(row["bytes"] > 0 and row["psnr_db_median"] > 25 for row in rows)


def test_frontend_scenario_times_storyboards_animations_and_posters(bench_run: _Run) -> None:
    from bench import frontend

    out = frontend.scenario_frontend(bench_run.ctx, spec=media.Spec("h264_small_gop2", "h264", 320, 180, 2, 6))
    assert out["tiles"] == 2
    assert out["storyboard"]["stillframe"]["n"] == 4 and out["storyboard"]["x_cli"] > 0
    assert out["animated"]["x_floor"] > 0 and out["poster"]["x_keyframe_grab"] > 0


def test_objstore_scenario_counts_what_the_store_serves(bench_run: _Run) -> None:
    """The same measurement as ``remote``, of s3:// objects (moto's server with the bench's latency)."""
    out = scenarios.scenario_objstore(bench_run.ctx)
    if "skipped" in out:
        pytest.skip(out["skipped"])
    _assert_counted_grabs(out, bench_run)  # the CLI reads through a presigned URL, counted the same way


def test_soak_scenario_runs_under_a_budget_and_without_one(bench_run: _Run) -> None:
    """The soak, a few seconds per run: the budgeted server answers without a 5xx and its tree stays
    under the limit; the unbudgeted and the 2 GiB container runs report the same numbers."""
    from dataclasses import replace

    from bench import soak

    ctx = replace(bench_run.ctx, cfg=replace(bench_run.ctx.cfg, soak_seconds=3.0))
    out = soak.scenario_soak(ctx)
    for run in ("limited", "unlimited", "container_2GiB_2cores"):
        block = out[run]
        assert block["statuses"].get("200", 0) > 0, block["statuses"]
        assert block["server_errors"] == 0, block["statuses"]
        assert block["tree_peak_mib"] > 0 and block["memory_at_end"]["stillframe_memory_limit_bytes"] > 0
    assert not out["tree_peak_over_limit"]
    assert out["throughput_vs_unlimited"] > 0
