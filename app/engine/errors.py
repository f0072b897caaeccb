"""Engine errors: each carries a stable ``code`` (from :data:`app.errors.PROBLEM_CODES`) that the API
turns into an RFC 9457 problem. The engine knows nothing about HTTP: the status that goes with a code
is the table's, not the engine's."""

from __future__ import annotations

from app.errors import ProblemError


class EngineError(ProblemError):
    """A decoding failure with a stable machine-readable code and a message safe to show a client."""

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross from decoder processes to the API: keep code, detail and parameter.
        return (_restore, (self.code, self.detail, self.parameter))

    def __repr__(self) -> str:
        return f"EngineError({self.code!r}, {self.detail!r})"


class InvalidParameter(EngineError):
    def __init__(self, detail: str, *, parameter: str | None = None) -> None:
        super().__init__("invalid_parameter", detail, parameter=parameter)


def _restore(code: str, detail: str, parameter: str | None) -> EngineError:
    return EngineError(code, detail, parameter=parameter)
