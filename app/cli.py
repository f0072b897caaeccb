"""The ``stillframe`` command: serve the API, grab frames, sign URLs, write the OpenAPI document."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from app.engine.errors import EngineError
from app.engine.timeparse import format_fraction


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.config import get_settings
    from app.logs import log_config

    settings = get_settings()
    _prepare_metrics_dir(settings.data_dir)
    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=log_config(settings.log_format, args.log_level),
        access_log=False,  # the service logs each request itself (app.api.observe)
        # X-Forwarded-For / -Proto are believed from these peers only; none unless configured
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
    )
    return 0


def _prepare_metrics_dir(data_dir: Path) -> None:
    """prometheus-client's multiprocess mode, so that /metrics is right whichever process recorded:
    ``PROMETHEUS_MULTIPROC_DIR`` (the operator's, else ``<data_dir>/prometheus``), set before the app
    and prometheus-client are imported (it is read then), and emptied of an earlier run's files."""
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or data_dir / "prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _grab(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.engine import FrameFailure, ImageGenerator
    from app.engine.sources import resolve_source
    from app.schemas import GrabParams

    # The grab's options are the arguments named as its fields (--dynamic-range: dynamic_range, ...).
    params = GrabParams(**{name: value for name, value in vars(args).items() if name in GrabParams.model_fields})
    image_format = params.format or (Path(args.out).suffix.lstrip(".").lower() if args.out else "") or "jpeg"
    image_format = {"jpg": "jpeg"}.get(image_format, image_format)
    options = params.grab_options(image_format)  # type: ignore[arg-type]
    # A path on the command line is the operator's own file: no media-root confinement for it.
    source = args.source if "://" in args.source else Path(args.source)
    if not isinstance(source, Path):
        source = resolve_source(args.source, get_settings().source_policy())
    status = 0
    with ImageGenerator(source, options) as generator:
        for result in generator.images_for(args.at):
            requested = args.at[result.index]
            if isinstance(result, FrameFailure):
                print(f"{requested}\terror\t{result.error.code}: {result.error.detail}", file=sys.stderr)
                status = 1
                continue
            out = _output_path(args.out, requested, image_format, len(args.at), result.index)
            out.write_bytes(result.image)
            print(f"{requested}\t{format_fraction(result.actual_time)}\t{out}")
    return status


def _output_path(template: str | None, requested: str, image_format: str, count: int, index: int) -> Path:
    ext = "jpg" if image_format == "jpeg" else image_format
    if template is None:
        return Path(f"frame-{index:04d}.{ext}" if count > 1 else f"frame.{ext}")
    path = Path(template)
    if count == 1:
        return path
    return path.with_name(f"{path.stem}-{index:04d}{path.suffix or '.' + ext}")


def _openapi(args: argparse.Namespace) -> int:
    from app.main import create_app

    document = json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"
    if args.out == "-":
        sys.stdout.write(document)
    else:
        Path(args.out).write_text(document)
    return 0


def _sign(args: argparse.Namespace) -> int:
    from urllib.parse import parse_qsl, urlsplit

    from pydantic import ValidationError

    from app.api.auth import SIGNATURE_PARAMS, UrlSigner
    from app.config import get_settings
    from app.schemas import FrameParams

    keys = {kid: secret.get_secret_value() for kid, secret in get_settings().url_signing_keys.items()}
    # what the server would refuse is not signed: its own check of the query (the last of a repeated name)
    query = {k: v for k, v in parse_qsl(urlsplit(args.url).query, keep_blank_values=True) if k not in SIGNATURE_PARAMS}
    try:
        FrameParams.model_validate(query)
        print(UrlSigner(keys).sign(args.url, kid=args.kid, ttl=args.ttl))
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from app.demo import ensure_demo_media

    print(ensure_demo_media(Path(args.directory)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stillframe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=_serve)

    grab = commands.add_parser("grab", help="write the image at one or more times")
    grab.add_argument("source", help="a local file path, or an http(s) URL")
    grab.add_argument("--at", action="append", required=True, help="a time (repeat for several)")
    grab.add_argument("--out", "-o", help="output file (several times: numbered beside it)")
    grab.add_argument("--tolerance")
    grab.add_argument("--rotate", choices=["auto", "none"], default="auto")
    grab.add_argument("--aperture", choices=["clean", "production", "encoded"], default="clean")
    grab.add_argument("--width", type=int)
    grab.add_argument("--height", type=int)
    grab.add_argument("--fit", choices=["contain", "cover", "fill", "pad"], default="contain")
    grab.add_argument("--dynamic-range", choices=["sdr", "native"], default="sdr")
    grab.add_argument("--format", choices=["jpeg", "png", "webp", "avif"])
    grab.add_argument("--quality", type=int)
    grab.add_argument("--stream", type=int)
    grab.set_defaults(handler=_grab)

    openapi = commands.add_parser("openapi", help="print or write the OpenAPI document")
    openapi.add_argument("--out", default="-")
    openapi.set_defaults(handler=_openapi)

    sign = commands.add_parser("sign", help="print a signed GET /v1/frame URL (keys from STILLFRAME_URL_SIGNING_KEYS)")
    sign.add_argument("url", help="the URL to sign, e.g. 'https://frames.example/v1/frame?url=a.mp4&t=2.5'")
    sign.add_argument("--kid", help="signing key id (default: the first configured)")
    sign.add_argument("--ttl", type=float, default=3600.0, help="seconds until the URL expires (default 3600)")
    sign.set_defaults(handler=_sign)

    demo = commands.add_parser("demo-media", help="make the demo video in a directory")
    demo.add_argument("directory")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except EngineError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
