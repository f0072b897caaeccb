"""Engine errors: each carries a stable ``code`` that the API turns into an RFC 9457 problem.

The engine knows nothing about HTTP; the status code lives here only as a hint the API layer uses,
so the mapping from code to status has exactly one home.
"""

from __future__ import annotations

# code -> (HTTP status, short title)
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_parameter": (400, "Invalid parameter"),
    "no_image_at_time": (422, "No image at the requested time"),
    "source_not_found": (404, "Source not found"),
    "source_forbidden": (403, "Source forbidden"),
    "source_unreachable": (502, "Source unreachable"),
    "unsupported_media": (422, "Unsupported media"),
    "no_video_stream": (422, "No video stream"),
    "decode_failed": (422, "Decode failed"),
    "source_too_large": (422, "Source too large"),
    "source_too_many_pixels": (422, "Video frame size over the limit"),
    "source_too_long": (422, "Source duration over the limit"),
    "source_too_many_streams": (422, "Too many streams in the source"),
    "decode_timeout": (504, "Decode timed out"),
    "queue_full": (429, "Too many requests in flight"),
    "cancelled": (409, "Cancelled"),
}


class EngineError(Exception):
    """A failure with a stable machine-readable code and a message safe to show a client."""

    def __init__(self, code: str, detail: str, *, parameter: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.parameter = parameter

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross from decoder processes to the API: keep code, detail and parameter.
        return (_restore, (self.code, self.detail, self.parameter))

    @property
    def status(self) -> int:
        return ERROR_CODES[self.code][0]

    @property
    def title(self) -> str:
        return ERROR_CODES[self.code][1]

    def __repr__(self) -> str:
        return f"EngineError({self.code!r}, {self.detail!r})"


class InvalidParameter(EngineError):
    def __init__(self, detail: str, *, parameter: str | None = None) -> None:
        super().__init__("invalid_parameter", detail, parameter=parameter)


def _restore(code: str, detail: str, parameter: str | None) -> EngineError:
    return EngineError(code, detail, parameter=parameter)
