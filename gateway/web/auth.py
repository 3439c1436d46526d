"""Accounts, roles, console sessions, API tokens, CSRF, login rate limiting, and the audit of every
access to a patient's records (migration 0007; the audit rows go to the existing ``audit_log``).

Roles (``ROLES``) and what each may do (``PERMISSIONS``):

- ``clinician``: read the records of the site's patients (every patient in this gateway's
  database: one gateway serves one site), assign a device to a patient, attach an unassigned
  reading to a patient;
- ``observatory``: the de-identified daily counts only;
- ``admin``: everything, including devices, quarantine, users, metrics and the audit log.

Credentials, all stored as hashes only:

- passwords: argon2id (argon2-cffi's ``PasswordHasher``, RFC 9106's second recommended profile:
  64 MiB, 3 passes, 4 lanes; about 0.1 s per check here), rehashed at login when the parameters
  change; at least ``MIN_PASSWORD`` characters;
- console sessions: a random 256-bit id in an HttpOnly, SameSite=Strict cookie; the database
  holds its SHA-256, an idle expiry (``session_idle_s``, pushed forward by use) and an absolute one
  (``session_max_s`` after login); each session has its own CSRF token, which every form posts
  back and the server compares in constant time;
- API bearer tokens (``nabd_`` + 256 random bits): issued to a user for one role at most as
  strong as the user's own (an admin may issue any role), optionally expiring; the SHA-256 is
  looked up, so a token is usable only while its user is enabled and it is not revoked;
- the configuration's single admin token (``[api] token_sha256``, written by ``nabd-gateway
  init``) stays valid and is an ``admin`` credential (actor ``api-token`` in the audit log).

Login rate limiting (``login``): before a password is checked, the failures of the last
``login_window_s`` are counted for the user name (``login_max_failures``, guessing one account
from many addresses) and for the client address (``client_max_failures``, trying many accounts
from one); over either, the attempt is refused without checking the password (no CPU spent, no
answer given) and audited, with the seconds until the oldest counted failure leaves the window.
Refused attempts are not counted as failures, so an account locked by someone else frees itself
``login_window_s`` after the last real guess. A success clears the name's failures.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway import recordstore as rs
from gateway.db import Database, audit, utcnow

ROLES = ("clinician", "admin", "observatory")
PERMISSIONS: dict[str, frozenset[str]] = {
    "records.read": frozenset({"clinician", "admin"}),      # patients' readings (console, FHIR API)
    "devices.assign": frozenset({"clinician", "admin"}),    # assign-patient command, end assignment
    "readings.attach": frozenset({"clinician", "admin"}),   # unassigned reading -> patient
    "observatory.read": frozenset({"observatory", "admin"}),
    "devices.admin": frozenset({"admin"}),                  # device list, revoke, rotate key
    "quarantine.read": frozenset({"admin"}),
    "users.admin": frozenset({"admin"}),
    "audit.read": frozenset({"admin"}),
    "metrics.read": frozenset({"admin"}),
}
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_PASSWORD, MAX_PASSWORD = 10, 1024
TOKEN_PREFIX = "nabd_"
SESSION_TOUCH_S = 60  # a session's last_seen/expiry is written at most once a minute (no write per page)

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (argon2-cffi's default)
_DUMMY_HASH: str | None = None


class AuthError(ValueError):
    """A request about accounts that cannot be carried out; the message says why."""


class LoginRefused(Exception):
    """A refused login. ``retry_after`` (seconds) is set when the rate limit refused it."""

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Settings:
    """``[console]`` of the configuration (seconds and counts)."""
    session_idle_s: int = 1800
    session_max_s: int = 43200
    login_window_s: int = 900
    login_max_failures: int = 5
    client_max_failures: int = 20

    @classmethod
    def from_config(cls, config: Any) -> "Settings":
        return cls(**{k: int(rs.cfg(config, "console", k, getattr(cls, k))) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user through a session or a token, or the configuration's admin token."""
    username: str
    role: str
    via: str                        # "session" | "token" | "config-token"
    user_id: int | None = None
    token_id: int | None = None
    csrf: str | None = None         # the session's CSRF token (sessions only)

    @property
    def actor(self) -> str:
        """The audit log's ``actor``."""
        if self.via == "config-token":
            return "api-token"
        if self.via == "token":
            return f"user:{self.username} (token {self.token_id})"
        return f"user:{self.username}"

    def can(self, permission: str) -> bool:
        return allowed(self.role, permission)


def allowed(role: str, permission: str) -> bool:
    if permission not in PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}")
    return role in PERMISSIONS[permission]


def printable(text: str | None, limit: int = 500) -> str | None:
    """``text`` safe for the audit log: at most ``limit`` characters, every unprintable one (NUL,
    which PostgreSQL's text refuses, controls, bidirectional overrides that could disguise a row
    on screen) written as ``\\xNN`` / ``\\uNNNN``."""
    if text is None:
        return None
    out = "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                  for c in str(text)[:limit])
    return out[:limit]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


# --- passwords ------------------------------------------------------------------------------------

def check_username(name: str) -> str:
    if not isinstance(name, str) or not USERNAME_RE.match(name):
        raise AuthError(f"user name {name!r} must match ^[a-z0-9][a-z0-9._-]{{1,63}}$")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def hash_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AuthError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _dummy_verify(password: str) -> None:
    """Spend the time of a real check, so an unknown name answers as slowly as a wrong password."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
    verify_password(_DUMMY_HASH, password)


# --- users ----------------------------------------------------------------------------------------

def _user(db: Database, conn: Any, username: str) -> dict | None:
    r = rs.rows(conn, db.sql("SELECT id, username, role, password_hash, disabled_at FROM users WHERE username = ?"),
                (username,))
    return r[0] if r else None


def add_user(db: Database, username: str, role: str, password: str, actor: str) -> int:
    check_username(username)
    check_role(role)
    hashed = hash_password(password)
    with db.connect() as conn:
        db.begin(conn)
        if _user(db, conn, username):
            raise AuthError(f"user {username} already exists")
        conn.execute(db.sql("INSERT INTO users (username, role, password_hash, created_at, created_by) "
                            "VALUES (?, ?, ?, ?, ?)"), (username, role, hashed, utcnow(), actor))
        uid = _user(db, conn, username)["id"]
        audit(db, conn, actor, "users.add", f"user:{username}", f"role={role}")
    return int(uid)


def list_users(db: Database) -> list[dict]:
    now = utcnow()
    with db.connect() as conn:
        users = rs.rows(conn, "SELECT id, username, role, created_at, created_by, disabled_at, last_login_at "
                              "FROM users ORDER BY username")
        sessions = rs.rows(conn, db.sql("SELECT user_id, COUNT(*) AS n FROM sessions WHERE expires_at > ? "
                                        "GROUP BY user_id"), (now,))
        tokens = rs.rows(conn, db.sql("SELECT user_id, COUNT(*) AS n FROM api_tokens WHERE revoked_at IS NULL "
                                      "AND (expires_at IS NULL OR expires_at > ?) GROUP BY user_id"), (now,))
    ns = {r["user_id"]: r["n"] for r in sessions}
    nt = {r["user_id"]: r["n"] for r in tokens}
    return [{"username": u["username"], "role": u["role"], "enabled": u["disabled_at"] is None,
             "created_at": _iso(u["created_at"]), "created_by": u["created_by"],
             "disabled_at": _iso(u["disabled_at"]), "last_login_at": _iso(u["last_login_at"]),
             "sessions": int(ns.get(u["id"], 0)), "tokens": int(nt.get(u["id"], 0))} for u in users]


def disable_user(db: Database, username: str, actor: str) -> None:
    """The user can no longer log in; their sessions end and their tokens are revoked, now."""
    now = utcnow()
    with db.connect() as conn:
        db.begin(conn)
        u = _user(db, conn, username)
        if u is None:
            raise AuthError(f"no user {username}")
        if u["disabled_at"] is not None:
            raise AuthError(f"user {username} is already disabled")
        conn.execute(db.sql("UPDATE users SET disabled_at = ? WHERE id = ?"), (now, u["id"]))
        conn.execute(db.sql("DELETE FROM sessions WHERE user_id = ?"), (u["id"],))
        conn.execute(db.sql("UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL"),
                     (now, u["id"]))
        audit(db, conn, actor, "users.disable", f"user:{username}", "sessions ended, tokens revoked")


def _set_password(db: Database, conn: Any, u: dict, password: str, keep_sid: str | None) -> int:
    """Store the new hash and end the user's other sessions; returns how many ended."""
    conn.execute(db.sql("UPDATE users SET password_hash = ? WHERE id = ?"), (hash_password(password), u["id"]))
    if keep_sid:
        return conn.execute(db.sql("DELETE FROM sessions WHERE user_id = ? AND id_sha256 <> ?"),
                            (u["id"], sha256_hex(keep_sid))).rowcount
    return conn.execute(db.sql("DELETE FROM sessions WHERE user_id = ?"), (u["id"],)).rowcount


def change_password(db: Database, settings: Settings, username: str, current: str, new: str, sid: str | None,
                    client: str, now: dt.datetime | None = None) -> None:
    """A user changes their own password. The current one must be right, so that a session left
    open on a shared computer does not let someone else take the account, and wrong guesses count
    with the login's failures (per user name, same window and limit): a held session is no way
    round the login's rate limit. Raises LoginRefused (wrong or throttled) or AuthError (the new
    password refused). The user's other sessions end; the one making the change (``sid``) stays;
    API tokens are separate credentials and stay."""
    now = now or utcnow()
    if new == current:
        raise AuthError("the new password is the same as the current one")
    hash_password(new)                      # the length check first: no argon2 work for a refused form
    client = printable(client or "unknown", 64) or "unknown"
    since = now - dt.timedelta(seconds=settings.login_window_s)
    with db.connect() as conn:
        u = _user(db, conn, username)
        n, first = _failures(db, conn, "username", username, since)
    if u is None or u["disabled_at"] is not None:
        raise AuthError(f"no user {username}")
    if n >= settings.login_max_failures:
        retry = max(1, int(settings.login_window_s - (now - rs.parse_time(first)).total_seconds()) + 1)
        raise LoginRefused("too many failed attempts: try again later", retry)
    if not verify_password(u["password_hash"], current or ""):
        with db.connect() as conn:
            db.begin(conn)
            conn.execute(db.sql("INSERT INTO login_failures (at, username, client) VALUES (?, ?, ?)"),
                         (now, username, client))
            audit(db, conn, f"user:{username}", "users.password-refused", f"user:{username}",
                  f"client={client} wrong current password")
        raise LoginRefused("the current password is wrong")
    with db.connect() as conn:
        db.begin(conn)
        ended = _set_password(db, conn, u, new, sid)
        conn.execute(db.sql("DELETE FROM login_failures WHERE username = ?"), (username,))
        audit(db, conn, f"user:{username}", "users.password", f"user:{username}",
              f"client={client} changed by the user; {ended} other session(s) ended")


def reset_password(db: Database, username: str, new: str, actor: str) -> int:
    """An administrator sets a user's password (forgotten, or suspected known to someone else):
    every session of the user ends; returns how many."""
    hash_password(new)
    with db.connect() as conn:
        db.begin(conn)
        u = _user(db, conn, username)
        if u is None:
            raise AuthError(f"no user {username}")
        ended = _set_password(db, conn, u, new, None)
        audit(db, conn, actor, "users.password-reset", f"user:{username}", f"{ended} session(s) ended")
    return ended


# --- API tokens -------------------------------------------------------------------------------------

def issue_token(db: Database, username: str, actor: str, role: str | None = None, days: float | None = None,
                label: str = "") -> tuple[int, str]:
    """A new bearer token for ``username``, for ``role`` (default: the user's); returns (id, token).
    The token is returned once and stored as its SHA-256 only."""
    if days is not None and not 0 < days <= 3660:
        raise AuthError("a token's lifetime is 0 to 3660 days")
    if len(label) > 128:
        raise AuthError("a token label has at most 128 characters")
    now = utcnow()
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.connect() as conn:
        db.begin(conn)
        u = _user(db, conn, username)
        if u is None:
            raise AuthError(f"no user {username}")
        if u["disabled_at"] is not None:
            raise AuthError(f"user {username} is disabled")
        role = check_role(role or u["role"])
        if role != u["role"] and u["role"] != "admin":
            raise AuthError(f"user {username} is {u['role']}: a token of theirs cannot be {role}")
        expires = now + dt.timedelta(days=days) if days is not None else None
        conn.execute(db.sql("INSERT INTO api_tokens (user_id, role, token_sha256, label, created_at, expires_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)"), (u["id"], role, sha256_hex(token), label, now, expires))
        tid = rs.rows(conn, db.sql("SELECT id FROM api_tokens WHERE token_sha256 = ?"), (sha256_hex(token),))[0]["id"]
        audit(db, conn, actor, "tokens.issue", f"user:{username}",
              f"token={tid} role={role} expires={expires.isoformat() if expires else 'never'} label={label!r}")
    return int(tid), token


def list_tokens(db: Database) -> list[dict]:
    with db.connect() as conn:
        rows = rs.rows(conn, "SELECT t.id, u.username, t.role, t.label, t.created_at, t.expires_at, t.revoked_at, "
                             "t.last_used_at FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.id")
    return [{k: _iso(v) if k.endswith("_at") else v for k, v in r.items()} for r in rows]


def revoke_token(db: Database, token_id: int, actor: str) -> None:
    with db.connect() as conn:
        db.begin(conn)
        r = rs.rows(conn, db.sql("SELECT t.revoked_at, u.username FROM api_tokens t JOIN users u ON u.id = t.user_id "
                                 "WHERE t.id = ?"), (token_id,))
        if not r:
            raise AuthError(f"no token {token_id}")
        if r[0]["revoked_at"] is not None:
            raise AuthError(f"token {token_id} is already revoked")
        conn.execute(db.sql("UPDATE api_tokens SET revoked_at = ? WHERE id = ?"), (utcnow(), token_id))
        audit(db, conn, actor, "tokens.revoke", f"user:{r[0]['username']}", f"token={token_id}")


def authenticate_bearer(db: Database, token: str | None, config_token_sha256: str | None = None,
                        now: dt.datetime | None = None) -> Principal | None:
    """The principal of ``Authorization: Bearer <token>``, or None (unknown, revoked, expired,
    disabled user). The configuration's admin token is compared in constant time."""
    if not token:
        return None
    digest = sha256_hex(token)
    if config_token_sha256 and hmac.compare_digest(digest.encode(), config_token_sha256.strip().lower().encode()):
        return Principal("api-token", "admin", "config-token")
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    now = now or utcnow()
    with db.connect() as conn:
        r = rs.rows(conn, db.sql("SELECT t.id, t.role, t.expires_at, t.revoked_at, t.last_used_at, u.id AS uid, "
                                 "u.username, u.disabled_at FROM api_tokens t JOIN users u ON u.id = t.user_id "
                                 "WHERE t.token_sha256 = ?"), (digest,))
        if not r:
            return None
        t = r[0]
        if t["revoked_at"] is not None or t["disabled_at"] is not None:
            return None
        if t["expires_at"] is not None and rs.parse_time(t["expires_at"]) <= now:
            return None
        last = rs.parse_time(t["last_used_at"])
        if last is None or (now - last).total_seconds() >= SESSION_TOUCH_S:
            conn.execute(db.sql("UPDATE api_tokens SET last_used_at = ? WHERE id = ?"), (now, t["id"]))
    return Principal(t["username"], t["role"], "token", user_id=int(t["uid"]), token_id=int(t["id"]))


# --- console sessions -------------------------------------------------------------------------------

def _failures(db: Database, conn: Any, column: str, value: str, since: dt.datetime) -> tuple[int, Any]:
    r = rs.rows(conn, db.sql(f"SELECT COUNT(*) AS n, MIN(at) AS first FROM login_failures "
                             f"WHERE {column} = ? AND at > ?"), (value, since))[0]
    return int(r["n"]), r["first"]


def login(db: Database, settings: Settings, username: str, password: str, client: str,
          now: dt.datetime | None = None) -> tuple[Principal, str]:
    """Check a console login; returns the principal and the new session's id (for the cookie).
    Raises LoginRefused (wrong name or password, disabled, or rate-limited: ``retry_after``)."""
    now = now or utcnow()
    username = printable((username or "").strip().lower(), 64) or ""
    client = printable(client or "unknown", 64) or "unknown"
    since = now - dt.timedelta(seconds=settings.login_window_s)
    retry = None
    with db.connect() as conn:  # the refusal's audit row is committed before the refusal is raised
        db.begin(conn)
        conn.execute(db.sql("DELETE FROM login_failures WHERE at <= ?"), (since,))
        for column, value, limit in (("username", username, settings.login_max_failures),
                                     ("client", client, settings.client_max_failures)):
            n, first = _failures(db, conn, column, value, since)
            if n >= limit:
                wait = settings.login_window_s - (now - rs.parse_time(first)).total_seconds()
                retry = max(1, int(wait) + 1)
                audit(db, conn, f"login:{username}", "auth.login-throttled", f"user:{username}",
                      f"client={client} failures={n} by {column} in {settings.login_window_s} s; retry in {retry} s")
                break
    if retry is not None:
        raise LoginRefused("too many failed logins: try again later", retry)
    # the password check (~0.1 s) runs outside any transaction: it holds no database lock
    with db.connect() as conn:
        u = _user(db, conn, username) if USERNAME_RE.match(username) else None
    if u is None:
        _dummy_verify(password or "")
        ok = False
    else:
        ok = verify_password(u["password_hash"], password or "")
    if not ok or u is None or u["disabled_at"] is not None:
        reason = "disabled" if (ok and u is not None) else "wrong user name or password"
        with db.connect() as conn:
            db.begin(conn)
            conn.execute(db.sql("INSERT INTO login_failures (at, username, client) VALUES (?, ?, ?)"),
                         (now, username, client))
            audit(db, conn, f"login:{username}", "auth.login-failed", f"user:{username}", f"client={client} {reason}")
        raise LoginRefused("wrong user name or password")
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = now + dt.timedelta(seconds=min(settings.session_idle_s, settings.session_max_s))
    with db.connect() as conn:
        db.begin(conn)
        if _hasher.check_needs_rehash(u["password_hash"]):
            conn.execute(db.sql("UPDATE users SET password_hash = ? WHERE id = ?"), (_hasher.hash(password), u["id"]))
        conn.execute(db.sql("DELETE FROM sessions WHERE expires_at <= ?"), (now,))
        conn.execute(db.sql("DELETE FROM login_failures WHERE username = ?"), (username,))
        conn.execute(db.sql("INSERT INTO sessions (id_sha256, user_id, csrf, created_at, last_seen_at, expires_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)"), (sha256_hex(sid), u["id"], csrf, now, now, expires))
        conn.execute(db.sql("UPDATE users SET last_login_at = ? WHERE id = ?"), (now, u["id"]))
        audit(db, conn, f"user:{username}", "auth.login", f"user:{username}", f"client={client}")
    return Principal(username, u["role"], "session", user_id=int(u["id"]), csrf=csrf), sid


def session(db: Database, settings: Settings, sid: str | None, now: dt.datetime | None = None) -> Principal | None:
    """The principal of a session cookie, or None (unknown, expired, user disabled). A live session's
    idle expiry moves forward, never past ``session_max_s`` after its creation."""
    if not sid or len(sid) > 128:
        return None
    now = now or utcnow()
    digest = sha256_hex(sid)
    with db.connect() as conn:
        r = rs.rows(conn, db.sql("SELECT s.user_id, s.csrf, s.created_at, s.last_seen_at, s.expires_at, u.username, "
                                 "u.role, u.disabled_at FROM sessions s JOIN users u ON u.id = s.user_id "
                                 "WHERE s.id_sha256 = ?"), (digest,))
        if not r:
            return None
        s = r[0]
        created = rs.parse_time(s["created_at"])
        if s["disabled_at"] is not None or rs.parse_time(s["expires_at"]) <= now \
                or (now - created).total_seconds() >= settings.session_max_s:
            conn.execute(db.sql("DELETE FROM sessions WHERE id_sha256 = ?"), (digest,))
            return None
        if (now - rs.parse_time(s["last_seen_at"])).total_seconds() >= SESSION_TOUCH_S:
            expires = min(now + dt.timedelta(seconds=settings.session_idle_s),
                          created + dt.timedelta(seconds=settings.session_max_s))
            conn.execute(db.sql("UPDATE sessions SET last_seen_at = ?, expires_at = ? WHERE id_sha256 = ?"),
                         (now, expires, digest))
    return Principal(s["username"], s["role"], "session", user_id=int(s["user_id"]), csrf=s["csrf"])


def logout(db: Database, sid: str | None, actor: str) -> None:
    if not sid:
        return
    with db.connect() as conn:
        n = conn.execute(db.sql("DELETE FROM sessions WHERE id_sha256 = ?"), (sha256_hex(sid),)).rowcount
        if n:
            audit(db, conn, actor, "auth.logout", actor.removeprefix("user:"), None)


def csrf_ok(principal: Principal | None, presented: str | None) -> bool:
    """A form's CSRF token against its session's, in constant time."""
    if principal is None or not principal.csrf or not presented:
        return False
    return hmac.compare_digest(principal.csrf.encode(), str(presented).encode("utf-8", "surrogateescape"))


# --- the access audit ----------------------------------------------------------------------------------

def audit_access(db: Database, principal: Principal, action: str, target: str, detail: str | None = None) -> None:
    """One audit row for an access to records (``target``: ``Patient/ID``, ``Device/ID``, ...) or a
    refusal, in its own transaction: who (``principal.actor``, role), what, when (``at``)."""
    with db.connect() as conn:
        audit(db, conn, printable(principal.actor, 200), action, printable(target, 200),
              printable(f"role={principal.role} via={principal.via}" + (f" {detail}" if detail else ""), 1000))


def audit_log(db: Database, limit: int = 200, target: str | None = None) -> list[dict]:
    with db.connect() as conn:
        if target is None:
            rows = rs.rows(conn, db.sql("SELECT id, at, actor, action, target, detail FROM audit_log "
                                        "ORDER BY id DESC LIMIT ?"), (limit,))
        else:
            rows = rs.rows(conn, db.sql("SELECT id, at, actor, action, target, detail FROM audit_log "
                                        "WHERE target = ? ORDER BY id DESC LIMIT ?"), (target, limit))
    return [{**r, "at": _iso(r["at"])} for r in rows]


def _iso(v: Any) -> str | None:
    t = rs.parse_time(v) if v is not None else None
    return t.isoformat(timespec="seconds") if t else None
