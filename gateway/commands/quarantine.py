"""``nabd-gateway quarantine list --config FILE [--limit N] [--json]``: rejected messages, newest first
(reason, topic, device hint, detail, size; raw bytes stay in the database)."""
from __future__ import annotations

from gateway import admin, quarantine
from gateway.commands._common import add_config, open_config, terminal_safe
from nabd_cli import EXIT_USAGE, CommandError, add_json, emit_json

COLUMNS = ("id", "received_at", "reason", "device", "bytes", "hits", "topic", "detail")


def cmd_list(args) -> int:
    if args.limit < 1:
        raise CommandError(f"--limit must be at least 1, got {args.limit}", EXIT_USAGE)
    _, db = open_config(args)
    rows = admin.list_quarantine(db, args.limit)
    floods = quarantine.floods(db)
    if args.json:
        emit_json(rows)
        return 0
    for f in floods:  # first: a device past its budget (gateway/quarantine.py)
        dev = terminal_safe(f["device"])
        head = f"ALERT {dev} is flooding" if f["flooding"] else f"flood from {dev} (over)"
        print(f"{head}: {f['suppressed']} rejected message(s), {f['suppressed_bytes']} bytes, counted but not "
              f"kept since {f['since']}, last {f['last_at']} ({f['last_reason']})")
    total = admin.count_quarantine(db)
    if not total:
        print("quarantine is empty")
        return 0
    table = [tuple(c.upper() for c in COLUMNS)]
    table += [tuple("-" if r[c] is None else terminal_safe(r[c]) for c in COLUMNS) for r in rows]
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
