"""Helpers shared by the administrators' commands (not a command itself: no ``register``)."""
from __future__ import annotations

import getpass
import os

from gateway.cli import CommandError
from gateway.config import Config, ConfigError, load
from gateway.db import Database, DatabaseError

EXIT_FAIL, EXIT_USAGE, EXIT_CONN, EXIT_DATA = 1, 2, 3, 4


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
        raise CommandError(str(e), EXIT_CONN) from None
    return cfg, db


def kek(cfg: Config) -> bytes:
    try:
        return cfg.security.kek()
    except ConfigError as e:
        raise CommandError(str(e), EXIT_USAGE) from None


def actor() -> str:
    """Who performs an admin action, for the audit log."""
    return os.environ.get("NABD_ADMIN") or f"cli:{getpass.getuser()}"
