"""The site console under ``/console``: server-rendered pages (Jinja2) for clinicians, administrators
and the observatory, in French (default), Arabic (right to left) and English.

Access: every page needs a console session (``auth.login``) and the page's permission
(``auth.PERMISSIONS``); a refusal is a 403 page and an ``auth.denied`` row in the audit log. Every
form posts the session's CSRF token (the login form a double-submit cookie); a missing or wrong
token is refused (403) and audited as ``csrf.refused``, and so is a cross-site ``Origin``. Reading a
patient's page or the inbox writes ``records.read`` to the audit log.

Responses carry a Content-Security-Policy that allows scripts, styles and connections from the
gateway only (no CDN: sites may be offline): the charts are uPlot (MIT, vendored from its npm
release under ``static/vendor/uplot``), drawn by ``static/console.js`` from JSON embedded in the page.
"""
from __future__ import annotations

import datetime as dt
import hmac
import json
import secrets
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import admin, observatory
from gateway import recordstore as rs
from gateway.web import auth
from gateway.web import records as rec

HERE = Path(__file__).resolve().parent
LANGS = ("fr", "ar", "en")
RTL = {"ar"}
SESSION_COOKIE = "nabd_session"
LOGIN_COOKIE = "nabd_login"
LANG_COOKIE = "nabd_lang"
PREFIX = "/console"
DONE = ("assigned", "unassigned", "attached", "revoked", "rotated", "user_added", "user_disabled", "token_revoked",
        "password_changed")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def load_catalogue(path: Path = HERE / "i18n.toml") -> dict[str, dict[str, str]]:
    """key -> {lang: text}; every key has every language (checked here, so a gap fails at start)."""
    with open(path, "rb") as f:
        cat = tomllib.load(f)
    for key, texts in cat.items():
        missing = [lang for lang in LANGS if not isinstance(texts, dict) or not texts.get(lang)]
        if missing:
            raise ValueError(f"{path.name}: {key} has no {', '.join(missing)} text")
    return cat


class Forbidden(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Console:
    """The console's routes over one configuration and database: ``Console(config, db).routes()``."""

    def __init__(self, config: Any, db: Any):
        self.config, self.db = config, db
        self.settings = auth.Settings.from_config(config)
        self.catalogue = load_catalogue()
        self.env = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                               autoescape=select_autoescape(["html"]), undefined=StrictUndefined)
        self.tz = zoneinfo.ZoneInfo(getattr(getattr(config, "console", None), "timezone", "UTC"))
        self.env.filters["when"] = lambda t: _when(t, self.tz)
        self.env.filters["num"] = _num

    # -- plumbing ----------------------------------------------------------------------------------
    def routes(self) -> list:
        p = PREFIX
        return [
            Route(p, self._page(self.home), methods=["GET"]),
            Route(p + "/", self._page(self.home), methods=["GET"]),
            Route(p + "/login", self.login, methods=["GET", "POST"]),
            Route(p + "/logout", self._page(self.logout, csrf=True), methods=["POST"]),
            Route(p + "/lang/{code}", self.lang, methods=["GET"]),
            Route(p + "/account/password", self._page(self.password_form), methods=["GET"]),
            Route(p + "/account/password", self._page(self.password_change, csrf=True), methods=["POST"]),
            Route(p + "/patients", self._page(self.patients, "records.read"), methods=["GET"]),
            Route(p + "/patients/{pid}", self._page(self.patient, "records.read"), methods=["GET"]),
            Route(p + "/assign", self._page(self.assign, "devices.assign", csrf=True), methods=["POST"]),
            Route(p + "/unassign", self._page(self.unassign, "devices.assign", csrf=True), methods=["POST"]),
            Route(p + "/inbox", self._page(self.inbox, "records.read"), methods=["GET"]),
            Route(p + "/inbox/attach", self._page(self.attach, "readings.attach", csrf=True), methods=["POST"]),
            Route(p + "/observatory", self._page(self.observatory, "observatory.read"), methods=["GET"]),
            Route(p + "/admin/devices", self._page(self.devices, "devices.admin"), methods=["GET"]),
            Route(p + "/admin/devices/revoke", self._page(self.revoke, "devices.admin", csrf=True), methods=["POST"]),
            Route(p + "/admin/devices/rotate", self._page(self.rotate, "devices.admin", csrf=True), methods=["POST"]),
            Route(p + "/admin/quarantine", self._page(self.quarantine, "quarantine.read"), methods=["GET"]),
            Route(p + "/admin/users", self._page(self.users, "users.admin"), methods=["GET"]),
            Route(p + "/admin/users/add", self._page(self.user_add, "users.admin", csrf=True), methods=["POST"]),
            Route(p + "/admin/users/disable", self._page(self.user_disable, "users.admin", csrf=True),
                  methods=["POST"]),
            Route(p + "/admin/tokens/revoke", self._page(self.token_revoke, "users.admin", csrf=True),
                  methods=["POST"]),
            Route(p + "/admin/audit", self._page(self.audit_page, "audit.read"), methods=["GET"]),
            Mount(p + "/static", app=StaticFiles(directory=str(HERE / "static")), name="console-static"),
        ]

    def _lang(self, request: Request) -> str:
        lang = request.cookies.get(LANG_COOKIE, "fr")
        return lang if lang in LANGS else "fr"

    def _t(self, lang: str) -> Callable[[str], str]:
        cat = self.catalogue

        def t(key: str, **kw) -> str:
            text = cat[key][lang]           # a missing key is a KeyError: found by the tests, not shown raw
            return text.format(**kw) if kw else text
        return t

    def render(self, request: Request, name: str, principal: auth.Principal | None, status: int = 200,
               **ctx) -> HTMLResponse:
        lang = self._lang(request)
        done = request.query_params.get("done")
        html = self.env.get_template(name).render(
            t=self._t(lang), lang=lang, dir="rtl" if lang in RTL else "ltr", langs=LANGS, user=principal,
            csrf=principal.csrf if principal else "", path=request.url.path, prefix=PREFIX,
            flash=f"done_{done}" if done in DONE else None, min_pw=auth.MIN_PASSWORD, max_pw=auth.MAX_PASSWORD,
            tz=self.tz.key, tz_label=_offset_label(dt.datetime.now(self.tz)),
            **ctx)
        return self._secure(HTMLResponse(html, status_code=status))

    @staticmethod
    def _secure(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP   # nosniff, no-referrer, DENY: app.Guard adds them
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def _principal(self, request: Request) -> auth.Principal | None:
        return auth.session(self.db, self.settings, request.cookies.get(SESSION_COOKIE))

    @staticmethod
    def _same_origin(request: Request) -> bool:
        """No form post from another site (beside the CSRF token and the SameSite cookie). Browsers
        say where a request comes from in ``Sec-Fetch-Site``; without it, ``Origin`` must be this
        host. ``Origin: null`` tells nothing (browsers send it for every post under the API's
        ``Referrer-Policy: no-referrer``), so it is left to the token."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return True
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def _page(self, handler: Callable, permission: str | None = None, csrf: bool = False):
        """An endpoint: session, permission and CSRF checks, then ``handler(request, principal,
        form)`` in a worker thread (the database calls block)."""
        async def endpoint(request: Request) -> Response:
            form = dict(await request.form()) if request.method == "POST" else {}
            return await run_in_threadpool(self._dispatch, handler, permission, csrf, request, form)
        return endpoint

    def _dispatch(self, handler, permission, csrf, request: Request, form: dict) -> Response:
        principal = self._principal(request)
        if principal is None:
            if request.method == "GET":
                resp = RedirectResponse(f"{PREFIX}/login?next={request.url.path}", status_code=303)
            else:
                resp = self.render(request, "error.html", None, 401, message_key="err_session")
            return self._secure(resp)
        if permission and not principal.can(permission):
            auth.audit_access(self.db, principal, "auth.denied", request.url.path,
                              f"{request.method} needs {permission}")
            return self.render(request, "error.html", principal, 403, message_key="err_forbidden")
        if csrf and (not auth.csrf_ok(principal, form.get("csrf")) or not self._same_origin(request)):
            auth.audit_access(self.db, principal, "csrf.refused", request.url.path,
                              f"{request.method} without the session's CSRF token or from another origin")
            return self.render(request, "error.html", principal, 403, message_key="err_csrf")
        try:
            return handler(request, principal, form)
        except (rec.RecordError, auth.AuthError, admin.AdminError, observatory.ObservatoryError) as e:
            return self.render(request, "error.html", principal, 400, message=str(e))

    def _back(self, to: str, done: str | None = None) -> Response:
        return self._secure(RedirectResponse(to + (f"?done={done}" if done else ""), status_code=303))

    # -- login -------------------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        form = dict(await request.form()) if request.method == "POST" else {}
        return await run_in_threadpool(self._login, request, form)

    def _login(self, request: Request, form: dict) -> Response:
        nxt = request.query_params.get("next", "")
        if not nxt.startswith(PREFIX + "/") or nxt.startswith("//"):
            nxt = PREFIX + "/"
        if request.method == "GET":
            token = secrets.token_urlsafe(24)
            resp = self.render(request, "login.html", None, login_csrf=token, next=nxt)
            resp.set_cookie(LOGIN_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path=PREFIX)
            return resp
        client = request.client.host if request.client else "unknown"
        cookie, field = request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf", "")
        if not cookie or not hmac.compare_digest(cookie.encode(), str(field).encode()) \
                or not self._same_origin(request):
            auth.audit_access(self.db, auth.Principal(f"login:{form.get('username', '')[:64]}", "none", "anonymous"),
                              "csrf.refused", PREFIX + "/login", f"client={client}")
            return self.render(request, "error.html", None, 403, message_key="err_csrf")
        try:
            principal, sid = auth.login(self.db, self.settings, str(form.get("username", "")),
                                        str(form.get("password", "")), client)
        except auth.LoginRefused as e:
            token = secrets.token_urlsafe(24)
            key = "login_throttled" if e.retry_after else "login_wrong"
            resp = self.render(request, "login.html", None, 429 if e.retry_after else 401, login_csrf=token,
                               next=nxt, error_key=key, retry_after=e.retry_after or 0)
            if e.retry_after:
                resp.headers["Retry-After"] = str(e.retry_after)
            resp.set_cookie(LOGIN_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path=PREFIX)
            return resp
        resp = self._secure(RedirectResponse(nxt, status_code=303))
        resp.set_cookie(SESSION_COOKIE, sid, max_age=self.settings.session_max_s, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path=PREFIX)
        resp.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        return resp

    def logout(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        auth.logout(self.db, request.cookies.get(SESSION_COOKIE), principal.actor)
        resp = self._secure(RedirectResponse(PREFIX + "/login", status_code=303))
        resp.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return resp

    async def lang(self, request: Request) -> Response:
        code = request.path_params["code"]
        back = request.query_params.get("next", PREFIX + "/")
        if not back.startswith(PREFIX + "/") or back.startswith("//"):
            back = PREFIX + "/"
        resp = self._secure(RedirectResponse(back, status_code=303))
        if code in LANGS:
            resp.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="lax", path=PREFIX)
        return resp

    def home(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        if principal.can("records.read") and principal.role != "admin":
            return self._back(PREFIX + "/patients")
        if principal.role == "admin":
            return self._back(PREFIX + "/admin/devices")
        return self._back(PREFIX + "/observatory")

    # -- every user: their own password ----------------------------------------------------------
    def password_form(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        return self.render(request, "password.html", principal)

    def password_change(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        current, new = str(form.get("current", "")), str(form.get("new", ""))
        if new != str(form.get("confirm", "")):
            return self.render(request, "password.html", principal, 400, error_key="pw_mismatch")
        if not auth.MIN_PASSWORD <= len(new) <= auth.MAX_PASSWORD:
            return self.render(request, "password.html", principal, 400, error_key="pw_length")
        if new == current:
            return self.render(request, "password.html", principal, 400, error_key="pw_same")
        client = request.client.host if request.client else "unknown"
        try:
            auth.change_password(self.db, self.settings, principal.username, current, new,
                                 request.cookies.get(SESSION_COOKIE), client)
        except auth.LoginRefused as e:
            resp = self.render(request, "password.html", principal, 429 if e.retry_after else 403,
                               error_key="login_throttled" if e.retry_after else "pw_wrong",
                               seconds=e.retry_after or 0)
            if e.retry_after:
                resp.headers["Retry-After"] = str(e.retry_after)
            return resp
        return self._back(PREFIX + "/account/password", "password_changed")

    # -- clinicians --------------------------------------------------------------------------------
    def patients(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        pats = rec.patients_overview(self.db)
        auth.audit_access(self.db, principal, "records.list", "Patient", f"console patient list ({len(pats)})")
        return self.render(request, "patients.html", principal, patients=pats, devices=rec.active_devices(self.db))

    def patient(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        pid = request.path_params["pid"]
        d = rec.patient_detail(self.db, pid) if rec.PATIENT_RE.match(pid) else None
        if d is None:
            return self.render(request, "error.html", principal, 404, message_key="err_no_patient")
        auth.audit_access(self.db, principal, "records.read", f"Patient/{pid}",
                          f"console patient page ({len(d['readings'])} readings)")
        return self.render(request, "patient.html", principal, p=d, devices=rec.active_devices(self.db),
                           series_json=json.dumps(_wall_clock(d["series"], self.tz), separators=(",", ":")))

    def _send_assign(self, principal: auth.Principal, device: str, patient: str | None) -> int:
        from gateway.device_commands import CommandRefused, PublishError, send_command

        try:
            p = send_command(self.config, self.db, self.config.security.kek(), device, "assign_patient",
                             {"patient": patient}, principal.actor)
        except CommandRefused as e:
            raise rec.RecordError(str(e)) from None
        except PublishError as e:
            raise rec.RecordError(str(e)) from None
        rec.record_assignment(self.db, device, patient, p.n, principal.actor)
        return p.n

    def assign(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        patient = rec.check_patient(str(form.get("patient", "")))
        device = str(form.get("device", ""))
        self._send_assign(principal, device, patient)
        auth.audit_access(self.db, principal, "devices.assign", f"Patient/{patient}", f"device={device}")
        return self._back(f"{PREFIX}/patients/{patient}", "assigned")

    def unassign(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        device = str(form.get("device", ""))
        patient = str(form.get("patient", ""))
        self._send_assign(principal, device, None)
        auth.audit_access(self.db, principal, "devices.unassign", f"Patient/{patient}" if patient else None,
                          f"device={device}")
        back = f"{PREFIX}/patients/{patient}" if rec.PATIENT_RE.match(patient) else PREFIX + "/patients"
        return self._back(back, "unassigned")

    def inbox(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        rows = rec.inbox(self.db)
        auth.audit_access(self.db, principal, "records.read", "inbox", f"console inbox ({len(rows)} readings)")
        return self.render(request, "inbox.html", principal, readings=rows)

    def attach(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        try:
            rid = int(form.get("reading", ""))
        except ValueError:
            raise rec.RecordError("no such reading") from None
        patient = rec.check_patient(str(form.get("patient", "")))
        rec.attach_reading(self.db, rid, patient, principal.actor, forward=bool(self.config.fhir_forward.enabled))
        return self._back(PREFIX + "/inbox", "attached")

    # -- observatory -------------------------------------------------------------------------------
    def observatory(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        today = rs.now_utc().date()
        days = 14
        d0 = today - dt.timedelta(days=days - 1)
        k = int(rs.cfg(self.config, "observatory", "suppress_below", observatory.DEFAULT_SUPPRESS_BELOW))
        report = observatory.device_counts(self.db, d0, today, k)
        regions = [r for r in report["rows"] if not r.get("facility")]
        names = sorted({r["region"] for r in regions})
        dates = [(d0 + dt.timedelta(days=i)).isoformat() for i in range(days)]
        series: dict[str, Any] = {"t": [int(dt.datetime.fromisoformat(d).replace(tzinfo=dt.timezone.utc).timestamp())
                                        for d in dates], "regions": names, "active": [], "registered": []}
        cell = {(r["date"], r["region"]): r for r in regions}
        for name in names:
            series["active"].append([(cell.get((d, name)) or {}).get("devices_active") for d in dates])
            series["registered"].append([(cell.get((d, name)) or {}).get("devices_registered") for d in dates])
        return self.render(request, "observatory.html", principal, rows=report["rows"], suppress_below=k,
                           series_json=json.dumps(series, separators=(",", ":")), d0=dates[0], d1=dates[-1])

    # -- administrators ----------------------------------------------------------------------------
    def devices(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        return self.render(request, "devices.html", principal, devices=rec.devices_overview(self.db),
                           grace=rs.cfg(self.config, "security", "key_grace_hours", 72.0))

    def revoke(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        admin.revoke_device(self.db, str(form.get("device", "")), principal.actor)
        return self._back(PREFIX + "/admin/devices", "revoked")

    def rotate(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        from gateway.secrets import parse_key_hex

        try:
            key = parse_key_hex(str(form.get("key", "")).strip())
            grace = float(form.get("grace_hours", "") or rs.cfg(self.config, "security", "key_grace_hours", 72.0))
        except ValueError as e:
            raise rec.RecordError(f"new key: {e}") from None
        if not 0 <= grace <= 24 * 366:
            raise rec.RecordError("grace hours: 0 to 8784")
        admin.rotate_key(self.db, self.config.security.kek(), str(form.get("device", "")), key, grace, principal.actor)
        return self._back(PREFIX + "/admin/devices", "rotated")

    def quarantine(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        rows = admin.list_quarantine(self.db, 200)
        return self.render(request, "quarantine.html", principal, rows=rows)

    def users(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        return self.render(request, "users.html", principal, users=auth.list_users(self.db),
                           tokens=auth.list_tokens(self.db), roles=auth.ROLES)

    def user_add(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        auth.add_user(self.db, str(form.get("username", "")).strip(), str(form.get("role", "")),
                      str(form.get("password", "")), principal.actor)
        return self._back(PREFIX + "/admin/users", "user_added")

    def user_disable(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        auth.disable_user(self.db, str(form.get("username", "")), principal.actor)
        return self._back(PREFIX + "/admin/users", "user_disabled")

    def token_revoke(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        try:
            tid = int(form.get("token", ""))
        except ValueError:
            raise rec.RecordError("no such token") from None
        auth.revoke_token(self.db, tid, principal.actor)
        return self._back(PREFIX + "/admin/users", "token_revoked")

    def audit_page(self, request: Request, principal: auth.Principal, form: dict) -> Response:
        return self.render(request, "audit.html", principal, rows=auth.audit_log(self.db, 300))


def _when(t: Any, tz: dt.tzinfo = dt.timezone.utc) -> str:
    """A stored time (UTC) on the site's clock ([console] timezone), to the minute."""
    t = rs.parse_time(t) if t is not None and not isinstance(t, dt.datetime) else t
    return t.astimezone(tz).strftime("%Y-%m-%d %H:%M") if t else "—"


def _wall_clock(series: dict, tz: dt.tzinfo) -> dict:
    """Chart times (``series["t"]``, Unix seconds) as the site's wall clock, which console.js draws
    as UTC: the offset comes from the server's time-zone database (Debian's tzdata, kept current by
    the site), not the browser's, whose copy may be older (this machine's Chromium puts Casablanca
    at UTC+0 in November 2026, where the IANA database has UTC+1), so charts and tables agree."""
    out = []
    for x in series.get("t") or []:
        off = dt.datetime.fromtimestamp(x, tz).utcoffset() or dt.timedelta(0)
        out.append(int(x + off.total_seconds()))
    return {**series, "t": out}


def _offset_label(now: dt.datetime) -> str:
    """``UTC+01:00``: the zone's offset now, for the tables' time headers."""
    off = now.utcoffset() or dt.timedelta(0)
    sign = "-" if off < dt.timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    return "UTC" if minutes == 0 else f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _num(v: Any, digits: int = 0, lang: str = "en") -> str:
    """A value with ``digits`` decimals; decimal comma in French and Moroccan Arabic (CLDR fr, ar-MA)."""
    if v is None:
        return "—"
    text = f"{float(v):.{digits}f}"
    return text.replace(".", ",") if lang in ("fr", "ar") else text
