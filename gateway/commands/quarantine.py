"""``nabd-gateway quarantine list --config FILE [--limit N] [--json]``: rejected messages, newest first
(reason, topic, device hint, detail, size; raw bytes stay in the database)."""
from __future__ import annotations

from gateway import admin
from gateway.commands._common import add_config, open_config
from nabd_cli import EXIT_USAGE, CommandError, add_json, emit_json

COLUMNS = ("id", "received_at", "reason", "device", "bytes", "topic", "detail")


def cmd_list(args) -> int:
    if args.limit < 1:
        raise CommandError(f"--limit must be at least 1, got {args.limit}", EXIT_USAGE)
    _, db = open_config(args)
    rows = admin.list_quarantine(db, args.limit)
    if args.json:
        emit_json(rows)
        return 0
    total = admin.count_quarantine(db)
    if not total:
        print("quarantine is empty")
        return 0
    table = [tuple(c.upper() for c in COLUMNS)]
    table += [tuple("-" if r[c] is None else str(r[c]) for c in COLUMNS) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if total > len(rows):
        print(f"({len(rows)} newest of {total} shown; --limit N for more)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("quarantine", help="inspect rejected messages")
    s = p.add_subparsers(dest="quarantine_cmd", metavar="ACTION", required=True)
    ls = s.add_parser("list", help="list quarantined messages, newest first")
    add_config(ls)
    ls.add_argument("--limit", type=int, default=100, help="show at most N messages (default 100)")
    add_json(ls)
    ls.set_defaults(func=cmd_list)
