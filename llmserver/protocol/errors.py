"""The one error shape every endpoint returns: OpenAI's `{"error": {message, type, param, code}}`."""

from __future__ import annotations

from typing import Any

# OpenAI's error types, keyed by the HTTP status that usually carries them.
_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for_status(status: int) -> str:
    return _TYPE_FOR_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class ServiceError(ValueError):
    """A service's refusal (bad input, a missing item, a conflict): a message for the user, the field it concerns,
    the HTTP status that says it, and a machine-readable code. Services raise it; handlers show it as an ApiError."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int = 400,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.status = status
        self.code = code
        self.retry_after = retry_after  # seconds, for a refusal that passes (a 503)


class ApiError(Exception):
    """An error meant for the client: its message is safe to show, its status is the HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type_for_status(status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    @classmethod
    def from_service(cls, error: ServiceError) -> ApiError:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
        return cls(error.status, str(error), param=error.field, code=error.code, headers=headers)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def as_api_error(exc: BaseException) -> ApiError | None:
    """The client-facing form of an expected refusal, or None for anything else (a bug: logged, shown as 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ServiceError):
        return ApiError.from_service(exc)
    return None


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
