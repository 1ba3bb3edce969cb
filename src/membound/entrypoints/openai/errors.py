"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can cause is an OpenAIError with the right status; anything else is
a 500 whose body says only "internal server error" (the traceback goes to the log).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is imported lazily: the CLI loads limits.py without the extras
    from pydantic import ValidationError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


class OpenAIError(Exception):
    """An error answered to the client as-is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unsupported(param: str) -> OpenAIError:
    return bad_request(f"{param} is not supported by this server; remove it from the request",
                       param=param, code="unsupported_parameter")


def internal_error() -> OpenAIError:
    return OpenAIError(500, "internal server error; the server log has the details",
                       code="internal_error")


_FIELD_HINTS = {
    "prompt": "prompt must be a string, a list of strings, a list of token ids, or a list of "
    "token-id lists",
    "messages": "messages must be a list of objects like {\"role\": \"user\", \"content\": "
    "\"hi\"}",
    "stop": "stop must be a string or a list of strings",
    "tokens": "tokens must be a list of integer token ids",
}


def from_validation_error(e: ValidationError) -> OpenAIError:
    """A pydantic error -> 400 naming the first offending field."""
    errors = e.errors(include_url=False, include_input=False)
    extra = [err for err in errors if err.get("type") == "extra_forbidden"]
    first = extra[0] if extra else errors[0]
    parts = [str(p) for p in first.get("loc", ()) if not _is_union_tag(p)]
    loc = ".".join(parts)
    if extra:  # OpenAI's wording for an unknown field
        return bad_request(f"Unrecognized request argument supplied: {loc}", param=loc,
                           code="unrecognized_argument")
    msg = first.get("msg", "invalid value")
    if parts and parts[0] in _FIELD_HINTS:
        return bad_request(_FIELD_HINTS[parts[0]], param=parts[0])
    return bad_request(f"{loc}: {msg}" if loc else msg, param=loc or None)


def _is_union_tag(part: object) -> bool:
    """pydantic puts union member names ('str', 'list[int]', ...) in loc; drop them."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")


async def send_error(send: Any, error: OpenAIError) -> None:
    """Answer an ASGI request with ``error`` (for middlewares that run before routing)."""
    payload = json_bytes(error.body())
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
