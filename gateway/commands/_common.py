"""Helpers shared by the administrators' commands (not a command itself: no ``register``)."""
from __future__ import annotations

import getpass
import os

from gateway.config import Config, ConfigError, load
from gateway.db import Database, DatabaseError
from nabd_cli import EXIT_DATA, EXIT_DEVICE, EXIT_FAIL, EXIT_USAGE, CommandError  # noqa: F401


def add_config(p) -> None:
    p.add_argument("--config", required=True, help="gateway configuration file (TOML)")


def open_config(args) -> tuple[Config, Database]:
    """The configuration and its migrated database, or a CommandError with a clear message."""
    try:
        cfg = load(args.config)
    except ConfigError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    db = Database(cfg.database.url)
    try:
        db.migrate()
    except DatabaseError as e:
        detail = " ".join(str(e).split())  # psycopg's messages span lines
        raise CommandError(f"{detail}; check that the database is up, and [database] url in {args.config}",
                           EXIT_DEVICE) from None
    return cfg, db


def kek(cfg: Config) -> bytes:
    try:
        return cfg.security.kek()
    except ConfigError as e:
        raise CommandError(str(e), EXIT_USAGE) from None


def actor() -> str:
    """Who performs an admin action, for the audit log."""
    return os.environ.get("NABD_ADMIN") or f"cli:{getpass.getuser()}"


def terminal_safe(value) -> str:
    """``value`` as text for a terminal: characters Python does not call printable (controls such
    as ESC, which start terminal escape sequences; format characters such as the bidi overrides
    and zero-width joiners; separators other than the space) are shown as ``\\xNN``/``\\uNNNN``.
    Devices' strings are checked at verification (gateway/verify.py); this also covers rows stored
    before that check and anything an administrator typed."""
    s = str(value)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in s)
