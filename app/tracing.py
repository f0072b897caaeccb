"""OpenTelemetry tracing, off unless ``STILLFRAME_TRACING_ENDPOINT`` names an OTLP/HTTP traces
endpoint (e.g. ``http://collector:4318/v1/traces``). Its packages are the optional ``tracing`` extra
(``pip install 'stillframe[tracing]'``): a service that does not trace carries none of them.

One server span per request (OpenTelemetry's ASGI middleware, outermost), named and annotated by
app.api.observe once the route, status and problem code are known."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.config import Settings

log = logging.getLogger("stillframe.tracing")

SPAN_STATE_KEY = "otel_span"  # where the request's server span waits in scope["state"] for app.api.observe


def install_tracing(app: FastAPI, settings: Settings) -> Any:
    """A server span per request on ``app`` (added as the outermost middleware: install it last) and
    the tracer provider (shut it down at exit: that sends what is still buffered), when tracing is
    configured; else nothing and None."""
    if not settings.tracing_endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "STILLFRAME_TRACING_ENDPOINT is set but the OpenTelemetry packages are not installed: "
            "pip install 'stillframe[tracing]'"
        ) from exc
    resource = Resource.create({"service.name": settings.tracing_service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource)  # this app's own: no process-global provider is replaced
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.tracing_endpoint)))

    def keep_span(span: Any, scope: dict[str, Any]) -> None:
        if span is not None and span.is_recording():
            scope.setdefault("state", {})[SPAN_STATE_KEY] = span

    app.add_middleware(
        OpenTelemetryMiddleware,
        tracer_provider=provider,
        server_request_hook=keep_span,
        exclude_spans=["receive", "send"],
    )
    log.info("tracing: OTLP/HTTP to %s", settings.tracing_endpoint)
    return provider
