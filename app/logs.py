"""Logging as one JSON object per line (``STILLFRAME_LOG_FORMAT=json``, the default), for log
shippers; ``text`` for a person at a terminal. ``stillframe serve`` hands :func:`log_config` to uvicorn."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# Attributes every LogRecord has: anything else on a record came from ``extra=`` and goes in the object.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}`` on one line; a traceback as ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((key, value) for key, value in record.__dict__.items() if key not in _STANDARD)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def log_config(log_format: str, level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the server: the service's and uvicorn's loggers to stderr,
    as JSON lines or plain text. (uvicorn's own access log is off: the service writes its own line per
    request, with more in it; see app.api.observe.)"""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if log_format == "json" else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            name: {"handlers": ["default"], "level": level, "propagate": False}
            for name in ("stillframe", "uvicorn", "uvicorn.error")
        },
    }
