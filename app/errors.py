"""Every problem the service can answer with: one table of stable codes, one exception base, one body.

Each code maps to its HTTP status and a short title. The engine raises these too (it may import this
module, and nothing above it): the status is only a hint there, kept here so the mapping has one home.
The API turns an error into an RFC 9457 problem with :func:`problem_body`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class ProblemType(NamedTuple):
    status: int
    title: str


PROBLEM_CODES: dict[str, ProblemType] = {
    # the request
    "invalid_parameter": ProblemType(400, "Invalid parameter"),
    "unauthorized": ProblemType(401, "Unauthorized"),
    "signature_invalid": ProblemType(403, "Invalid signature"),
    "signature_expired": ProblemType(403, "Signature expired"),
    "rate_limited": ProblemType(429, "Too many requests"),
    # the source and its decoding
    "no_image_at_time": ProblemType(422, "No image at the requested time"),
    "source_not_found": ProblemType(404, "Source not found"),
    "source_forbidden": ProblemType(403, "Source forbidden"),
    "source_unreachable": ProblemType(502, "Source unreachable"),
    "unsupported_media": ProblemType(422, "Unsupported media"),
    "no_video_stream": ProblemType(422, "No video stream"),
    "decode_failed": ProblemType(422, "Decode failed"),
    "source_too_large": ProblemType(422, "Source too large"),
    "source_too_many_pixels": ProblemType(422, "Video frame size over the limit"),
    "source_too_long": ProblemType(422, "Source duration over the limit"),
    "source_too_many_streams": ProblemType(422, "Too many streams in the source"),
    "decode_timeout": ProblemType(504, "Decode timed out"),
    "queue_full": ProblemType(429, "Too many requests in flight"),
    "overloaded": ProblemType(503, "Overloaded"),
    "cancelled": ProblemType(409, "Cancelled"),
    # jobs
    "job_not_found": ProblemType(404, "Job not found"),
    "result_not_found": ProblemType(404, "Result not found"),
    "result_pending": ProblemType(409, "Result not produced yet"),
    "idempotency_key_reused": ProblemType(422, "Idempotency key reused with another request"),
    "shutting_down": ProblemType(503, "Shutting down"),
    # operations
    "not_ready": ProblemType(503, "Not ready"),
    # HTTP itself (routing, and any other HTTP error, which keeps its own status)
    "not_found": ProblemType(404, "Not found"),
    "method_not_allowed": ProblemType(405, "Method not allowed"),
    "not_acceptable": ProblemType(406, "Not acceptable"),
    "request_too_large": ProblemType(413, "Request too large"),
    "http_error": ProblemType(400, "HTTP error"),
    "internal_error": ProblemType(500, "Internal error"),
}


class ProblemError(Exception):
    """A failure with a stable code from :data:`PROBLEM_CODES` and a detail safe to show a client."""

    def __init__(
        self, code: str, detail: str, *, parameter: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        if code not in PROBLEM_CODES:
            raise ValueError(f"unknown problem code {code!r}")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.parameter = parameter
        self.headers = dict(headers or {})  # response headers that go with it (a challenge, a retry time)

    @property
    def status(self) -> int:
        return PROBLEM_CODES[self.code].status

    @property
    def title(self) -> str:
        return PROBLEM_CODES[self.code].title

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """This error as an RFC 9457 problem document."""
        return problem_body(self.code, self.detail, instance=instance, parameter=self.parameter)


def problem_body(
    code: str,
    detail: str | None = None,
    *,
    status: int | None = None,
    title: str | None = None,
    instance: str | None = None,
    parameter: str | None = None,
) -> dict[str, Any]:
    """The RFC 9457 problem document for ``code``; ``status`` and ``title`` default to the table's."""
    kind = PROBLEM_CODES[code]
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": kind.title if title is None else title,
        "status": kind.status if status is None else status,
        "code": code,
    }
    optional = {"detail": detail, "instance": instance, "parameter": parameter}
    body.update({name: value for name, value in optional.items() if value is not None})
    return body
