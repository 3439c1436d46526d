"""Operations routes: ``/healthz`` (open, for load balancers and systemd), ``/metrics``
(Prometheus text; bearer token unless ``[api] metrics_open``) and the observatory's
``/observatory/device-counts?from=YYYY-MM-DD&to=YYYY-MM-DD`` (JSON, or CSV with ``Accept: text/csv``).
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import observatory
from gateway import recordstore as rs
from gateway.web.access import check, require
from gateway.web.errors import JSON, ApiError, json_response

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def healthz(request: Request) -> Response:
    try:
        with request.app.state.db.connect() as conn:
            rs.rows(conn, "SELECT 1 AS ok")
    except Exception as e:
        return json_response({"status": "unavailable", "database": type(e).__name__}, 503, JSON)
    return json_response({"status": "ok", "database": "ok"}, 200, JSON)


def metrics(request: Request) -> Response:
    if not request.app.state.settings.metrics_open:
        check(request, "metrics.read")
    return Response(request.app.state.metrics().encode(), headers={"Cache-Control": "no-store",
                                                                   "Content-Type": PROMETHEUS})


@require("observatory.read")
def device_counts(request: Request) -> Response:
    q = request.query_params
    d0, d1 = q.get("from"), q.get("to")
    if not d0 or not d1:
        raise ApiError(400, "required", "from=YYYY-MM-DD and to=YYYY-MM-DD are required")
    try:
        report = observatory.device_counts(request.app.state.db, d0, d1, request.app.state.settings.suppress_below)
    except observatory.ObservatoryError as e:
        raise ApiError(400, "invalid", str(e)) from None
    if "text/csv" in request.headers.get("accept", ""):
        return Response(observatory.to_csv(report).encode(),
                        headers={"Cache-Control": "no-store", "Content-Type": "text/csv; charset=utf-8"})
    return json_response(report, 200, JSON)


ROUTES = [
    Route("/healthz", healthz, methods=["GET", "HEAD"]),
    Route("/metrics", metrics, methods=["GET", "HEAD"]),
    Route("/observatory/device-counts", device_counts, methods=["GET", "HEAD"]),
]
