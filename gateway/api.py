"""The gateway's read API: FHIR R4 resources, the observatory counts, metrics and health.

Endpoints (all GET):

- ``/fhir/Observation?device=ID`` or ``?patient=ID`` (``_count``, ``_offset`` paging): searchset Bundle
- ``/fhir/Device/{id}``, ``/fhir/Patient/{id}`` (pseudonymous token only)
- ``/observatory/device-counts?from=YYYY-MM-DD&to=YYYY-MM-DD``: JSON, or CSV with ``Accept: text/csv``
- ``/metrics``: Prometheus text of ``gateway.metrics.REGISTRY``
- ``/healthz``: 200 when the database answers, 503 otherwise (open: for load balancers and systemd)

Authentication: ``Authorization: Bearer <token>``; the SHA-256 of the presented token is compared in
constant time (``hmac.compare_digest``) with ``[api] token_sha256``, so the configuration never holds
the token itself. Everything but ``/healthz`` needs it, ``/metrics`` included (Prometheus sends it with
``authorization: {credentials_file: ...}``) unless ``[api] metrics_open = true``: metric names and
counts are not personal, but quarantine rates tell an attacker how their probing fares.

Why the standard library's ``ThreadingHTTPServer`` and no framework: the API is six read-only
routes of small JSON documents, served to a handful of clients on a site network; a thread per
connection is plenty, and no third-party web stack means nothing more to patch on a clinic's
gateway box. It sits behind a TLS-terminating proxy when exposed beyond the site.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from gateway import fhir, observatory
from gateway import recordstore as rs

FHIR_JSON = "application/fhir+json; charset=utf-8"
DEFAULT_COUNT = 50
MAX_COUNT = 500


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def token_ok(presented: str | None, expected_sha256_hex: str | None) -> bool:
    """Constant-time check of a bearer token against the configured SHA-256 (hex)."""
    if not presented or not expected_sha256_hex:
        return False
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()
    return hmac.compare_digest(digest.encode(), str(expected_sha256_hex).strip().lower().encode())


def _render_metrics() -> str:
    try:
        from gateway.metrics import REGISTRY  # G-core's registry
    except ImportError:
        return "# gateway.metrics not available\n"
    return REGISTRY.render()


class _Handler(BaseHTTPRequestHandler):
    server_version = "nabd-gateway"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # the server object carries: config, db, token_sha256, metrics_open, suppress_below

    def log_message(self, format, *args):  # noqa: A002 - no access log with query strings
        pass

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, ctype: str = FHIR_JSON, extra: dict | None = None) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), ctype, extra)

    def _outcome(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
        self._json(status, fhir.operation_outcome("error", code, message), FHIR_JSON, extra)

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and token_ok(token.strip(), self.server.token_sha256)

    def do_GET(self):  # noqa: N802
        try:
            self._route()
        except ApiError as e:
            self._outcome(e.status, e.code, e.message)
        except Exception as e:  # a bug or a database failure: say so, never a silent hang
            self._outcome(500, "exception", f"internal error: {type(e).__name__}")

    def _method_not_allowed(self):
        self._outcome(405, "not-supported", "read-only API: GET only", {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815

    def _route(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = parse_qs(url.query, keep_blank_values=True)
        if path == "/healthz":
            return self._healthz()
        if path == "/metrics" and self.server.metrics_open:
            return self._send(200, _render_metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if not self._authorised():
            return self._outcome(401, "login", "bearer token required", {"WWW-Authenticate": 'Bearer realm="nabd"'})
        parts = path.strip("/").split("/")
        if path == "/metrics":
            return self._send(200, _render_metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/observatory/device-counts":
            return self._device_counts(query)
        if parts[0] == "fhir":
            if parts[1:] == ["Observation"]:
                return self._observations(query, url)
            if len(parts) == 3 and parts[1] == "Device":
                return self._device(parts[2])
            if len(parts) == 3 and parts[1] == "Patient":
                return self._patient(parts[2])
            if parts[1:] == ["metadata"]:
                return self._json(200, _capability())
        raise ApiError(404, "not-found", f"no route {path}")

    def _healthz(self) -> None:
        try:
            with self.server.db.connect() as conn:
                rs.rows(conn, "SELECT 1 AS ok")
        except Exception as e:
            return self._json(503, {"status": "unavailable", "database": type(e).__name__}, "application/json")
        self._json(200, {"status": "ok", "database": "ok"}, "application/json")

    def _observations(self, query: dict, url) -> None:
        def one(name):
            v = query.get(name)
            if v is None:
                return None
            if len(v) != 1 or not v[0]:
                raise ApiError(400, "invalid", f"{name} must be given once, non-empty")
            return v[0]
        device, patient = one("device"), one("patient")
        if (device is None) == (patient is None):
            raise ApiError(400, "required", "search with exactly one of device=ID or patient=ID")
        try:
            count = int(one("_count") or DEFAULT_COUNT)
            offset = int(one("_offset") or 0)
        except ValueError:
            raise ApiError(400, "invalid", "_count and _offset are integers") from None
        if not 0 <= count <= MAX_COUNT or offset < 0:
            raise ApiError(400, "invalid", f"_count in 0..{MAX_COUNT}, _offset >= 0")
        if device is not None:
            column, value, name = "device_id", device.removeprefix("Device/"), "device"
        else:
            column, value, name = "patient_id", patient.removeprefix("Patient/"), "patient"
        with self.server.db.connect() as conn:
            resources, total = rs.observations_page(self.server.db, conn, column, value, count, offset)
        base = self._base()

        def link(off):
            return f"{base}Observation?" + urlencode({name: value, "_count": count, "_offset": off})
        next_url = link(offset + count) if count and offset + count < total else None
        self._json(200, fhir.searchset_bundle(resources, total, self_url=link(offset), next_url=next_url,
                                              base=base))

    def _device(self, device_id: str) -> None:
        with self.server.db.connect() as conn:
            info = rs.device_info(self.server.db, conn, device_id)
        if info is None:
            raise ApiError(404, "not-found", f"Device/{device_id} not found")
        self._json(200, fhir.device_resource(device_id, info))

    def _patient(self, token: str) -> None:
        with self.server.db.connect() as conn:
            found = rs.patient_exists(self.server.db, conn, token)
        if not found:
            raise ApiError(404, "not-found", f"Patient/{token} not found")
        self._json(200, fhir.patient_resource(token))

    def _device_counts(self, query: dict) -> None:
        d0 = (query.get("from") or [None])[0]
        d1 = (query.get("to") or [None])[0]
        if not d0 or not d1:
            raise ApiError(400, "required", "from=YYYY-MM-DD and to=YYYY-MM-DD are required")
        try:
            report = observatory.device_counts(self.server.db, d0, d1, self.server.suppress_below)
        except observatory.ObservatoryError as e:
            raise ApiError(400, "invalid", str(e)) from None
        accept = self.headers.get("Accept", "")
        if "text/csv" in accept:
            return self._send(200, observatory.to_csv(report).encode(), "text/csv; charset=utf-8")
        self._json(200, report, "application/json")

    def _base(self) -> str:
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        return f"http://{host}/fhir/"


def _capability() -> dict:
    return {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
            "date": "2026-01-01", "fhirVersion": "4.0.1", "format": ["json"],
            "rest": [{"mode": "server", "resource": [
                {"type": "Observation", "interaction": [{"code": "search-type"}],
                 "searchParam": [{"name": "device", "type": "reference"},
                                 {"name": "patient", "type": "reference"}]},
                {"type": "Device", "interaction": [{"code": "read"}]},
                {"type": "Patient", "interaction": [{"code": "read"}]}]}]}


class ApiServer:
    """A running API: ``.port``, ``.url``, ``.shutdown()``."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread):
        self._httpd, self._thread = httpd, thread
        self.host, self.port = httpd.server_address[0], httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = str(listen).rpartition(":")
    try:
        return (host or "127.0.0.1").strip("[]"), int(port)
    except ValueError:
        raise ValueError(f"[api] listen must be HOST:PORT, got {listen!r}") from None


def start_api(config, db, listen: str | None = None) -> ApiServer:
    """Start the API in a background thread (non-blocking); ``listen`` overrides ``[api] listen``."""
    host, port = parse_listen(listen or rs.cfg(config, "api", "listen", "127.0.0.1:8088"))
    httpd = ThreadingHTTPServer((host, port), _Handler)
    httpd.daemon_threads = True
    httpd.config = config
    httpd.db = db
    httpd.token_sha256 = rs.cfg(config, "api", "token_sha256")
    httpd.metrics_open = bool(rs.cfg(config, "api", "metrics_open", False))
    httpd.suppress_below = int(rs.cfg(config, "observatory", "suppress_below", observatory.DEFAULT_SUPPRESS_BELOW))
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="nabd-api", daemon=True)
    t.start()
    return ApiServer(httpd, t)
