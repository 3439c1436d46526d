"""gateway/web/auth.py and `nabd-gateway users` on both databases: argon2 hashes, roles, sessions
with expiry, bearer tokens, CSRF, login rate limiting and the audit log."""
from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys

import pytest

from gateway.db import Database
from gateway.web import auth

UTC = dt.timezone.utc
PW = "correct horse battery"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path}/gateway.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    d = Database(url)
    d.migrate()
    return d


S = auth.Settings(session_idle_s=600, session_max_s=3600, login_window_s=300, login_max_failures=3,
                  client_max_failures=5)


def _audit(db, action=None):
    rows = auth.audit_log(db, 1000)
    return [r for r in rows if action is None or r["action"] == action]


def test_password_is_stored_as_argon2id_only(db):
    auth.add_user(db, "amina", "clinician", PW, "cli:root")
    with db.connect() as c:
        stored = c.execute("SELECT password_hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$") and PW not in stored
    assert auth.verify_password(stored, PW) and not auth.verify_password(stored, PW + "x")
    [u] = auth.list_users(db)
    assert (u["username"], u["role"], u["enabled"], u["created_by"]) == ("amina", "clinician", True, "cli:root")
    assert [(r["action"], r["target"], r["actor"]) for r in _audit(db)] == [("users.add", "user:amina", "cli:root")]


@pytest.mark.parametrize("name,role,pw", [("Amina", "clinician", PW), ("a", "clinician", PW),
                                          ("x;drop", "clinician", PW), ("amina", "root", PW),
                                          ("amina", "clinician", "short")])
def test_bad_accounts_are_refused(db, name, role, pw):
    with pytest.raises(auth.AuthError):
        auth.add_user(db, name, role, pw, "t")
    assert auth.list_users(db) == []


def test_duplicate_user_refused(db):
    auth.add_user(db, "amina", "clinician", PW, "t")
    with pytest.raises(auth.AuthError, match="already exists"):
        auth.add_user(db, "amina", "admin", PW, "t")


def test_roles_and_permissions():
    assert auth.allowed("clinician", "records.read") and auth.allowed("clinician", "devices.assign")
    assert not auth.allowed("clinician", "devices.admin") and not auth.allowed("clinician", "observatory.read")
    assert auth.allowed("observatory", "observatory.read") and not auth.allowed("observatory", "records.read")
    assert all(auth.allowed("admin", p) for p in auth.PERMISSIONS)
    with pytest.raises(KeyError):
        auth.allowed("admin", "no.such")


def test_login_session_and_logout(db):
    auth.add_user(db, "amina", "clinician", PW, "t")
    t0 = dt.datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    p, sid = auth.login(db, S, "Amina ", PW, "10.0.0.5", now=t0)
    assert (p.username, p.role, p.via) == ("amina", "clinician", "session") and p.csrf
    with db.connect() as c:
        stored = [r[0] for r in c.execute("SELECT id_sha256 FROM sessions").fetchall()]
    assert stored == [auth.sha256_hex(sid)]                    # the id itself is not stored
    s = auth.session(db, S, sid, now=t0 + dt.timedelta(seconds=599))
    assert s.username == "amina" and s.csrf == p.csrf
    assert auth.session(db, S, sid + "x", now=t0) is None
    auth.logout(db, sid, "user:amina")
    assert auth.session(db, S, sid, now=t0) is None
    assert [r["action"] for r in _audit(db)][:2] == ["auth.logout", "auth.login"]


def test_session_idle_and_absolute_expiry(db):
    auth.add_user(db, "amina", "clinician", PW, "t")
    t0 = dt.datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    _, sid = auth.login(db, S, "amina", PW, "c", now=t0)
    assert auth.session(db, S, sid, now=t0 + dt.timedelta(seconds=601)) is None   # idle 10 min
    _, sid = auth.login(db, S, "amina", PW, "c", now=t0)
    t = t0
    for _ in range(6):                          # used every 9 minutes: idle expiry moves forward...
        t += dt.timedelta(seconds=540)
        assert auth.session(db, S, sid, now=t) is not None
    assert auth.session(db, S, sid, now=t0 + dt.timedelta(seconds=3600)) is None   # ...not past 1 h


def test_wrong_password_is_rate_limited_per_user_and_audited(db):
    auth.add_user(db, "amina", "clinician", PW, "t")
    t0 = dt.datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    for i in range(3):
        with pytest.raises(auth.LoginRefused) as e:
            auth.login(db, S, "amina", "guess%d-xxxxx" % i, "10.0.0.9", now=t0 + dt.timedelta(seconds=i))
        assert e.value.retry_after is None
    # the right password is refused too while the limit holds: the password is not even checked
    with pytest.raises(auth.LoginRefused) as e:
        auth.login(db, S, "amina", PW, "10.0.0.10", now=t0 + dt.timedelta(seconds=10))
    assert e.value.retry_after == 291            # the first failure leaves the 300 s window at t0+300
    assert len(_audit(db, "auth.login-failed")) == 3 and len(_audit(db, "auth.login-throttled")) == 1
    p, _ = auth.login(db, S, "amina", PW, "10.0.0.10", now=t0 + dt.timedelta(seconds=301))
    assert p.username == "amina"


def test_rate_limit_per_client_over_many_names(db):
    t0 = dt.datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    for i in range(5):
        with pytest.raises(auth.LoginRefused):
            auth.login(db, S, f"user{i}", "whatever-123", "10.0.0.66", now=t0)
    with pytest.raises(auth.LoginRefused) as e:
        auth.login(db, S, "other", "whatever-123", "10.0.0.66", now=t0)
    assert e.value.retry_after is not None
    with pytest.raises(auth.LoginRefused) as e:       # another client is not affected
        auth.login(db, S, "other", "whatever-123", "10.0.0.67", now=t0)
    assert e.value.retry_after is None


def test_disabled_user_loses_login_sessions_and_tokens(db):
    auth.add_user(db, "amina", "clinician", PW, "t")
    _, sid = auth.login(db, S, "amina", PW, "c")
    _, tok = auth.issue_token(db, "amina", "t")
    assert auth.authenticate_bearer(db, tok) is not None
    auth.disable_user(db, "amina", "cli:root")
    assert auth.session(db, S, sid) is None
    assert auth.authenticate_bearer(db, tok) is None
    with pytest.raises(auth.LoginRefused):
        auth.login(db, S, "amina", PW, "c")
    [u] = auth.list_users(db)
    assert not u["enabled"] and u["sessions"] == 0 and u["tokens"] == 0
    with pytest.raises(auth.AuthError):
        auth.disable_user(db, "amina", "t")


def test_user_changes_own_password(db):
    auth.add_user(db, "amina", "clinician", PW, "t")
    t0 = dt.datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    _, here = auth.login(db, S, "amina", PW, "c", now=t0)
    _, elsewhere = auth.login(db, S, "amina", PW, "d", now=t0)
    _, tok = auth.issue_token(db, "amina", "t")
    new = "a new passphrase here"
    with pytest.raises(auth.AuthError, match="same"):
        auth.change_password(db, S, "amina", PW, PW, here, "c", now=t0)
    with pytest.raises(auth.AuthError, match="characters"):
        auth.change_password(db, S, "amina", PW, "short", here, "c", now=t0)
    auth.change_password(db, S, "amina", PW, new, here, "c", now=t0)
    assert auth.session(db, S, here, now=t0) is not None            # the session that made the change
    assert auth.session(db, S, elsewhere, now=t0) is None           # every other one ended
    assert auth.authenticate_bearer(db, tok) is not None            # tokens are separate credentials
    with pytest.raises(auth.LoginRefused):
        auth.login(db, S, "amina", PW, "c", now=t0)
    assert auth.login(db, S, "amina", new, "c", now=t0)[0].username == "amina"
    [row] = _audit(db, "users.password")
    assert row["actor"] == "user:amina" and "1 other session" in row["detail"]
    assert PW not in str(auth.audit_log(db, 1000)) and new not in str(auth.audit_log(db, 1000))


def test_wrong_current_password_counts_as_a_failed_login(db):
    """A held session gives no way round the login's rate limit: wrong current passwords count
    with the user's failed logins, and once over the limit even the right one is refused."""
    auth.add_user(db, "amina", "clinician", PW, "t")
    t0 = dt.datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    _, sid = auth.login(db, S, "amina", PW, "c", now=t0)
    for i in range(3):
        with pytest.raises(auth.LoginRefused) as e:
            auth.change_password(db, S, "amina", f"guess-{i}-xxxxx", "a new passphrase", sid, "c",
                                 now=t0 + dt.timedelta(seconds=i))
        assert e.value.retry_after is None
    with pytest.raises(auth.LoginRefused) as e:
        auth.change_password(db, S, "amina", PW, "a new passphrase", sid, "c", now=t0 + dt.timedelta(seconds=5))
    assert e.value.retry_after == 296
    with pytest.raises(auth.LoginRefused) as e:
        auth.login(db, S, "amina", PW, "c", now=t0 + dt.timedelta(seconds=5))
    assert e.value.retry_after is not None
    assert len(_audit(db, "users.password-refused")) == 3 and not _audit(db, "users.password")
    auth.change_password(db, S, "amina", PW, "a new passphrase", sid, "c", now=t0 + dt.timedelta(seconds=301))
    assert len(_audit(db, "users.password")) == 1


def test_admin_resets_a_password_and_ends_sessions(db):
    auth.add_user(db, "amina", "clinician", PW, "t")
    _, sid = auth.login(db, S, "amina", PW, "c")
    assert auth.reset_password(db, "amina", "reset by the admin", "cli:root") == 1
    assert auth.session(db, S, sid) is None
    assert auth.login(db, S, "amina", "reset by the admin", "c")[0].username == "amina"
    with pytest.raises(auth.AuthError, match="no user"):
        auth.reset_password(db, "nobody", "reset by the admin", "cli:root")
    [row] = _audit(db, "users.password-reset")
    assert (row["actor"], row["target"]) == ("cli:root", "user:amina")


def test_bearer_tokens_scoped_to_a_role(db):
    auth.add_user(db, "obs", "observatory", PW, "t")
    auth.add_user(db, "root", "admin", PW, "t")
    _, tok = auth.issue_token(db, "obs", "t", label="dashboard")
    p = auth.authenticate_bearer(db, tok)
    assert (p.username, p.role, p.via) == ("obs", "observatory", "token")
    assert p.can("observatory.read") and not p.can("records.read")
    with pytest.raises(auth.AuthError, match="cannot be admin"):
        auth.issue_token(db, "obs", "t", role="admin")
    tid, ctok = auth.issue_token(db, "root", "t", role="clinician", days=1)
    assert auth.authenticate_bearer(db, ctok).role == "clinician"
    assert auth.authenticate_bearer(db, ctok, now=auth.utcnow() + dt.timedelta(days=1, seconds=1)) is None
    auth.revoke_token(db, tid, "t")
    assert auth.authenticate_bearer(db, ctok) is None
    assert auth.authenticate_bearer(db, tok[:-1] + ("A" if tok[-1] != "A" else "B")) is None
    with db.connect() as c:
        hashes = [r[0] for r in c.execute("SELECT token_sha256 FROM api_tokens").fetchall()]
    assert auth.sha256_hex(tok) in hashes and tok not in hashes


def test_configuration_admin_token_is_an_admin(db):
    tok = "the-old-admin-token"
    p = auth.authenticate_bearer(db, tok, auth.sha256_hex(tok))
    assert (p.role, p.via, p.actor) == ("admin", "config-token", "api-token")
    assert auth.authenticate_bearer(db, tok + "x", auth.sha256_hex(tok)) is None


def test_csrf_compare():
    p = auth.Principal("amina", "clinician", "session", 1, csrf="abc")
    assert auth.csrf_ok(p, "abc")
    assert not auth.csrf_ok(p, "abd") and not auth.csrf_ok(p, "") and not auth.csrf_ok(p, None)
    assert not auth.csrf_ok(auth.Principal("t", "admin", "token"), "abc")


def test_audit_access_names_who_what_when(db):
    p = auth.Principal("amina", "clinician", "session", 1)
    before = auth.utcnow()
    auth.audit_access(db, p, "records.read", "Patient/p-7Hq2xK", "console patient page")
    [r] = auth.audit_log(db, target="Patient/p-7Hq2xK")
    assert (r["actor"], r["action"]) == ("user:amina", "records.read")
    assert "role=clinician" in r["detail"] and "console patient page" in r["detail"]
    assert dt.datetime.fromisoformat(r["at"]) >= before.replace(microsecond=0)


# --- the CLI ------------------------------------------------------------------------------------

def _gw(cfg, *args, stdin=""):
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--config", str(cfg)], input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "gw.toml"
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "init", "--config", str(p), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return p


def test_cli_users_add_list_token_disable(cfg):
    r = _gw(cfg, "users", "add", "amina", "--role", "clinician", stdin=PW + "\n")
    assert r.returncode == 0, r.stderr
    assert PW not in r.stdout + r.stderr
    r = _gw(cfg, "users", "list", "--json")
    [u] = json.loads(r.stdout)
    assert (u["username"], u["role"], u["enabled"]) == ("amina", "clinician", True)
    r = _gw(cfg, "users", "token", "amina", "--label", "ehr", "--json")
    tok = json.loads(r.stdout)["token"]
    assert tok.startswith("nabd_")
    r = _gw(cfg, "users", "tokens", "--json")
    [t] = json.loads(r.stdout)
    assert (t["username"], t["role"], t["label"]) == ("amina", "clinician", "ehr") and tok not in r.stdout
    assert _gw(cfg, "users", "disable", "amina").returncode == 0
    assert _gw(cfg, "users", "disable", "amina").returncode == 4
    assert json.loads(_gw(cfg, "users", "tokens", "--json").stdout)[0]["revoked_at"]


def test_cli_users_passwd(cfg):
    assert _gw(cfg, "users", "add", "amina", "--role", "clinician", stdin=PW + "\n").returncode == 0
    r = _gw(cfg, "users", "passwd", "amina", "--json", stdin="another passphrase\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ok": True, "username": "amina", "sessions_ended": 0}
    assert "another passphrase" not in r.stdout + r.stderr
    assert _gw(cfg, "users", "passwd", "nobody", stdin="another passphrase\n").returncode == 4
    assert _gw(cfg, "users", "passwd", "amina", stdin="short\n").returncode == 2
    assert _gw(cfg, "users", "passwd", "amina", stdin="").returncode == 2


def test_cli_users_bad_input(cfg):
    r = _gw(cfg, "users", "add", "amina", "--role", "clinician", stdin="")
    assert r.returncode == 2 and "no password" in r.stderr
    r = _gw(cfg, "users", "add", "amina", "--role", "clinician", stdin="short\n")
    assert r.returncode == 2 and "characters" in r.stderr
    r = _gw(cfg, "users", "add", "amina", "--role", "nurse", stdin=PW + "\n")
    assert r.returncode == 2 and "role" in r.stderr
    r = _gw(cfg, "users", "add", "Amina!", "--role", "clinician", stdin=PW + "\n")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert _gw(cfg, "users", "revoke-token", "99").returncode == 4
    # the password is never an argument
    r = _gw(cfg, "users", "add", "amina", "--role", "clinician", "--password", PW, stdin=PW + "\n")
    assert r.returncode == 2


def test_password_prompt_asks_twice():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    answers = iter(["a-long-password", "a-long-password"])
    from gateway.commands.users import read_password
    assert read_password(Tty(), lambda _: next(answers)) == "a-long-password"
    answers = iter(["a-long-password", "another-password"])
    from gateway.cli import CommandError
    with pytest.raises(CommandError, match="differ"):
        read_password(Tty(), lambda _: next(answers))


def test_hostile_text_reaches_the_audit_log_escaped(db):
    # NUL (PostgreSQL text refuses it) and a right-to-left override (disguises a row on screen)
    with pytest.raises(auth.LoginRefused):
        auth.login(db, S, "ami\x00na\u202e", "x" * 12, "10.0.0.1\x00")
    p = auth.Principal("amina", "clinician", "session", 1)
    auth.audit_access(db, p, "records.read", "Patient/\x00\u202ex", "GET /fhir/Observation?patient=%00" + "y" * 2000)
    rows = auth.audit_log(db)
    assert rows[0]["target"] == "Patient/\\x00\\u202ex" and len(rows[0]["detail"]) == 1000
    assert rows[1]["target"] == "user:ami\\x00na\\u202e" and "\x00" not in rows[1]["detail"]
