"""The error tree, and the JSON error envelope every route answers with.

SorahookError
├── ApiError                  an HTTP answer to our own caller: status + code + message
└── OpenAIError               OpenAI (or a compatible provider, or the emulator) said no or failed
    ├── PermanentOpenAIError  retrying the same request will not help: 400, 401, 403, 404,
    │                         409, 422, moderation_blocked, insufficient_quota
    └── TransientOpenAIError  worth retrying with backoff: 429 rate limits, 5xx, timeouts,
                              connection errors
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from service.domain import job_error


class SorahookError(Exception):
    """Base of every error sorahook raises on purpose."""


class ApiError(SorahookError):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, param=self.param, headers=self.headers)


class OpenAIError(SorahookError):
    """An error from OpenAI, keeping OpenAI's own `code`, `message` and `type`."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type
        self.param = param
        self.retry_after = retry_after

    def as_job_error(self) -> dict[str, Any]:
        """The failed job's `error`: OpenAI's code and message, with the category its status and code mean."""
        return job_error(self.code or self.type or "openai_error", self.message, status=self.status)


class PermanentOpenAIError(OpenAIError):
    """Retrying will not help (bad request, moderation, auth, not found, quota)."""


class TransientOpenAIError(OpenAIError):
    """Retrying later may succeed (rate limit, server error, network)."""


def error_response(
    status: int, code: str, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status, headers=headers)
