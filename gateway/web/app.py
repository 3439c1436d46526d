"""``build_app(settings, db, metrics)``: the one Starlette application of the gateway's HTTP side.

Routes come from their modules (``ROUTES`` lists); this module only assembles them with the error
handlers and the small middleware every response needs. Endpoints are plain functions: Starlette
runs them in its worker threads (anyio's limiter, 40 by default), which bounds the database work
the API can do at once; the event loop itself only moves bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import observatory
from gateway import recordstore as rs
from gateway.web import errors, fhir_api, ops

MAX_BODY = 64 * 1024      # bytes: the API reads no documents; the console's forms are small
MAX_QUERY = 8 * 1024      # bytes of query string


@dataclass
class Settings:
    public_url: str                # base of every link the API writes (no trailing slash)
    token_sha256: str | None = None
    metrics_open: bool = False
    suppress_below: int = observatory.DEFAULT_SUPPRESS_BELOW
    max_inflight: int = 64         # requests being handled at once; past it: 503
    tls: bool = False              # served over HTTPS: responses carry Strict-Transport-Security


def settings_from_config(config: Any, public_url: str) -> Settings:
    return Settings(public_url=public_url.rstrip("/"),
                    token_sha256=rs.cfg(config, "api", "token_sha256") or None,
                    metrics_open=bool(rs.cfg(config, "api", "metrics_open", False)),
                    suppress_below=int(rs.cfg(config, "observatory", "suppress_below",
                                              observatory.DEFAULT_SUPPRESS_BELOW)),
                    tls=bool(rs.cfg(config, "api", "tls_cert", "")))


class Guard:
    """Outermost middleware: bounded requests in flight (503 past ``max_inflight``), bounded query
    strings (414), and the headers every response carries."""

    def __init__(self, app: ASGIApp, max_inflight: int, tls: bool):
        self.app, self.max_inflight, self.inflight = app, max_inflight, 0
        self.extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                      (b"x-frame-options", b"DENY")]
        if tls:
            self.extra.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if len(scope.get("query_string", b"")) > MAX_QUERY:
            return await errors.outcome(414, "too-costly", f"query string longer than {MAX_QUERY} bytes")(
                scope, receive, send)
        if self.inflight >= self.max_inflight:
            return await errors.outcome(503, "transient", "busy, retry shortly", {"Retry-After": "1"})(
                scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.extra]}
            await send(message)

        self.inflight += 1
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.inflight -= 1


def build_app(settings: Settings, db, metrics: Callable[[], str], config: Any = None) -> Starlette:
    """The application; ``metrics()`` returns the Prometheus text to serve at ``/metrics``. With the
    gateway's ``config`` (broker, key-encryption key, ``[console]``) it also serves the console
    under ``/console`` (gateway/web/console.py)."""
    routes: list = [*fhir_api.ROUTES, *ops.ROUTES]
    if config is not None:
        from starlette.responses import RedirectResponse
        from starlette.routing import Route

        from gateway.web.console import Console

        routes += [*Console(config, db).routes(),
                   Route("/", lambda request: RedirectResponse("/console/", status_code=303), methods=["GET"])]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, max_inflight=settings.max_inflight, tls=settings.tls)],
        exception_handlers={errors.ApiError: errors.api_error, HTTPException: errors.http_error,
                            Exception: errors.server_error},
        max_body_size=MAX_BODY,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.metrics = metrics
    return app
