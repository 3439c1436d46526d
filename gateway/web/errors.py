"""Every error the API returns is a FHIR ``OperationOutcome`` with the right status; nothing leaks
(no traceback, no SQL, no echo of long input)."""
from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway import fhir

log = logging.getLogger("nabd.gateway.web")

FHIR_JSON = "application/fhir+json; charset=utf-8"
JSON = "application/json; charset=utf-8"
_ISSUE_CODE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               406: "not-supported", 408: "timeout", 413: "too-costly", 414: "too-costly", 415: "not-supported",
               429: "throttled", 503: "transient"}


class ApiError(Exception):
    """A refusal: HTTP ``status``, FHIR issue ``code`` and a one-line message for the client."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def clip(value: str, n: int = 60) -> str:
    """A client's value quoted back in a message: bounded, control characters replaced."""
    s = "".join(c if c.isprintable() else "?" for c in str(value)[:n])
    return repr(s + ("..." if len(str(value)) > n else ""))


def json_response(obj, status: int = 200, ctype: str = FHIR_JSON, headers: dict | None = None,
                  indent: int | None = None) -> Response:
    body = json.dumps(obj, separators=None if indent else (",", ":"), indent=indent, ensure_ascii=False)
    h = {"Cache-Control": "no-store"}
    h.update(headers or {})
    return Response(body.encode(), status_code=status, media_type=None, headers={**h, "Content-Type": ctype})


def outcome(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return json_response(fhir.operation_outcome("error", code, message), status, FHIR_JSON, headers)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return outcome(exc.status, exc.code, exc.message, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method, body too large) as OperationOutcomes."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    status = exc.status_code
    if status == 404:
        msg = f"no route {clip(request.url.path)}"
    elif status == 405:
        msg = f"method {clip(request.method, 16)} not allowed here"
    else:
        msg = str(exc.detail)
    return outcome(status, _ISSUE_CODE.get(status, "processing"), msg, headers)


async def server_error(request: Request, exc: Exception) -> Response:
    """A bug or a database failure: logged once with its traceback, a bare 500 to the client."""
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return outcome(500, "exception", f"internal error: {type(exc).__name__}")
