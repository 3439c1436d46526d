"""``nabd-gateway users add|passwd|list|disable|token|tokens|revoke-token --config FILE``: console and
API accounts (gateway/web/auth.py).

- ``add NAME --role clinician|admin|observatory``: the password is typed twice at a prompt, or
  read from standard input (first line) when it is not a terminal; never from the command line,
  where other users of the machine and the shell history would see it.
- ``passwd NAME``: set a user's password (same input rules as ``add``); their sessions end. Users
  change their own password in the console (``/console/account/password``), giving the current one.
- ``list [--json]``: users, roles, enabled, last login, live sessions and tokens.
- ``disable NAME``: no more logins; the user's sessions end and tokens are revoked at once.
- ``token NAME [--role R] [--days N] [--label TEXT]``: a bearer token for an API client, printed
  once (stored as its SHA-256); its role is the user's, or any role for an admin's token.
- ``tokens [--json]``, ``revoke-token ID``.
Every change is written to the audit log with the acting user (``NABD_ADMIN`` or the login name).
"""
from __future__ import annotations

import getpass
import json
import sys

from gateway.cli import CommandError
from gateway.commands._common import EXIT_DATA, EXIT_USAGE, actor, add_config, open_config


def _auth():
    from gateway.web import auth

    return auth


def _do(fn, *a, **kw):
    auth = _auth()
    try:
        return fn(*a, **kw)
    except auth.AuthError as e:
        raise CommandError(str(e), EXIT_DATA) from None


def read_password(stdin=None, prompt=getpass.getpass) -> str:
    """The new password: from standard input (first line) when it is not a terminal, else typed
    twice at a prompt that does not echo."""
    stdin = stdin or sys.stdin
    if not stdin.isatty():
        line = stdin.readline()
        if not line:
            raise CommandError("no password on standard input", EXIT_USAGE)
        return line.rstrip("\r\n")
    first = prompt("new password: ")
    if prompt("again: ") != first:
        raise CommandError("the two passwords differ", EXIT_USAGE)
    return first


def _new_password(auth) -> str:
    """read_password, refused (usage error) outside the accepted lengths."""
    password = read_password()
    if not auth.MIN_PASSWORD <= len(password) <= auth.MAX_PASSWORD:
        raise CommandError(f"a password has {auth.MIN_PASSWORD} to {auth.MAX_PASSWORD} characters", EXIT_USAGE)
    return password


def cmd_add(args) -> int:
    auth = _auth()
    try:
        auth.check_username(args.name)
        auth.check_role(args.role)
    except auth.AuthError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    password = _new_password(auth)
    _, db = open_config(args)
    _do(auth.add_user, db, args.name, args.role, password, actor())
    _out(args, {"ok": True, "username": args.name, "role": args.role}, f"added {args.name} ({args.role})")
    return 0


def cmd_passwd(args) -> int:
    """An administrator sets a user's password (forgotten, or possibly known to someone else)."""
    auth = _auth()
    try:
        auth.check_username(args.name)
    except auth.AuthError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    password = _new_password(auth)
    _, db = open_config(args)
    ended = _do(auth.reset_password, db, args.name, password, actor())
    _out(args, {"ok": True, "username": args.name, "sessions_ended": ended},
         f"new password for {args.name}; {ended} session(s) ended")
    return 0


def cmd_list(args) -> int:
    _, db = open_config(args)
    rows = _auth().list_users(db)
    if args.json:
        print(json.dumps(rows, separators=(",", ":")))
        return 0
    cols = ("username", "role", "enabled", "last_login_at", "sessions", "tokens", "created_by")
    _table(cols, rows)
    return 0


def cmd_disable(args) -> int:
    _, db = open_config(args)
    _do(_auth().disable_user, db, args.name, actor())
    _out(args, {"ok": True, "username": args.name, "enabled": False}, f"disabled {args.name}")
    return 0


def cmd_token(args) -> int:
    _, db = open_config(args)
    tid, token = _do(_auth().issue_token, db, args.name, actor(), role=args.role, days=args.days, label=args.label)
    if args.json:
        print(json.dumps({"ok": True, "id": tid, "username": args.name, "token": token}, separators=(",", ":")))
    else:
        print(f"token {tid} for {args.name} (shown once, store it safely):", file=sys.stderr)
        print(token)
    return 0


def cmd_tokens(args) -> int:
    _, db = open_config(args)
    rows = _auth().list_tokens(db)
    if args.json:
        print(json.dumps(rows, separators=(",", ":")))
        return 0
    _table(("id", "username", "role", "label", "created_at", "expires_at", "revoked_at", "last_used_at"), rows)
    return 0


def cmd_revoke_token(args) -> int:
    _, db = open_config(args)
    _do(_auth().revoke_token, db, args.id, actor())
    _out(args, {"ok": True, "id": args.id, "revoked": True}, f"revoked token {args.id}")
    return 0


def _table(cols, rows) -> None:
    table = [cols] + [tuple("" if r[c] is None else str(r[c]) for c in cols) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _out(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, separators=(",", ":")) if getattr(args, "json", False) else text)


def register(sub) -> None:
    p = sub.add_parser("users", help="console and API accounts: add, passwd, list, disable, tokens")
    s = p.add_subparsers(dest="users_cmd", metavar="ACTION", required=True)

    a = s.add_parser("add", help="add a user (password from a prompt, or the first line of stdin)")
    add_config(a)
    a.add_argument("name", help="user name ^[a-z0-9][a-z0-9._-]{1,63}$")
    a.add_argument("--role", required=True, help="clinician, admin or observatory")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_add)

    pw = s.add_parser("passwd", help="set a user's password (from a prompt, or the first line of stdin); "
                                      "ends their sessions")
    add_config(pw)
    pw.add_argument("name")
    pw.add_argument("--json", action="store_true")
    pw.set_defaults(func=cmd_passwd)

    ls = s.add_parser("list", help="list users")
    add_config(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    d = s.add_parser("disable", help="disable a user: end their sessions, revoke their tokens")
    add_config(d)
    d.add_argument("name")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_disable)

    t = s.add_parser("token", help="issue an API bearer token for a user (printed once)")
    add_config(t)
    t.add_argument("name")
    t.add_argument("--role", default=None, help="the token's role (default: the user's; other roles: admins only)")
    t.add_argument("--days", type=float, default=None, help="lifetime in days (default: until revoked)")
    t.add_argument("--label", default="", help="what the token is for (shown in `users tokens`)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_token)

    ts = s.add_parser("tokens", help="list API tokens")
    add_config(ts)
    ts.add_argument("--json", action="store_true")
    ts.set_defaults(func=cmd_tokens)

    r = s.add_parser("revoke-token", help="revoke an API token")
    add_config(r)
    r.add_argument("id", type=int)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_revoke_token)
