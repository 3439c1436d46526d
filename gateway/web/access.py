"""Who is asking, and may they: the web app's one request-level hook over ``gateway.web.auth``.

Every protected endpoint is wrapped in ``require(permission)`` (``auth.PERMISSIONS``: e.g.
``records.read``); it calls ``authenticate(request)`` and refuses with 401 (no or bad
credentials, ``WWW-Authenticate: Bearer``) or 403 (the principal's role lacks the permission).
The principal is left in ``request.state.principal`` for the endpoint and the audit log.

``authenticate`` accepts ``Authorization: Bearer`` (the configuration's admin token or a user's
scoped token, ``auth.authenticate_bearer``); the console adds its session cookie here.
"""
from __future__ import annotations

import functools
import inspect

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from gateway.web import auth
from gateway.web.errors import ApiError


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(request: Request) -> auth.Principal | None:
    """The principal behind a request, or None. Synchronous (it reads the database): endpoints
    call it from a worker thread."""
    st = request.app.state
    return auth.authenticate_bearer(st.db, bearer(request), st.settings.token_sha256)


def record_target(request: Request) -> str:
    """What a records request is about, for the audit log: ``Patient/ID`` when the path or the
    ``patient``/``subject`` parameter names one, else ``Device/ID``, else the path."""
    path, q = request.url.path, request.query_params
    if path.startswith("/fhir/Patient/"):
        return "Patient/" + path.split("/", 3)[3]
    for name in ("patient", "subject"):
        if q.get(name):
            return "Patient/" + q.get(name, "").removeprefix("Patient/")
    if path.startswith("/fhir/Device/"):
        return "Device/" + path.split("/", 3)[3]
    if q.get("device"):
        return "Device/" + q.get("device", "").removeprefix("Device/")
    return path


def _printable(text: str, n: int = 500) -> str:
    """Client text bound for the audit log: bounded, unprintable characters (NUL, which PostgreSQL
    refuses in text, terminal escapes, bidi overrides) escaped (``auth.printable``)."""
    return auth.printable(text, n) or ""


def check(request: Request, permission: str) -> auth.Principal:
    """The principal, when its role has ``permission``. Every access to patients' records
    (``records.read``) and every refusal of a known principal is written to the audit log."""
    p = authenticate(request)
    if p is None:
        raise ApiError(401, "login", "bearer token required", {"WWW-Authenticate": 'Bearer realm="nabd"'})
    db = request.app.state.db
    what = _printable(request.method + " " + request.url.path + ("?" + request.url.query if request.url.query else ""))
    if not p.can(permission):
        auth.audit_access(db, p, "auth.denied", _printable(request.url.path, 200), f"{what} needs {permission}")
        raise ApiError(403, "forbidden", f"role {p.role} may not use this ({permission})")
    if permission == "records.read":
        auth.audit_access(db, p, "records.read", _printable(record_target(request), 200), what)
    request.state.principal = p
    return p


def require(permission: str):
    """Endpoint decorator: only principals whose role has ``permission`` get through."""
    if permission not in auth.PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def wrap(endpoint):
        if inspect.iscoroutinefunction(endpoint):
            @functools.wraps(endpoint)
            async def async_endpoint(request: Request):
                await run_in_threadpool(check, request, permission)
                return await endpoint(request)
            return async_endpoint

        @functools.wraps(endpoint)
        def sync_endpoint(request: Request):
            check(request, permission)
            return endpoint(request)
        return sync_endpoint
    return wrap
