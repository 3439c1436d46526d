"""``nabd-gateway quarantine list --config FILE [--limit N] [--json]``: rejected messages, newest first
(reason, topic, device hint, detail, size; raw bytes stay in the database)."""
from __future__ import annotations

import json

from gateway import admin
from gateway.commands._common import add_config, open_config


def cmd_list(args) -> int:
    _, db = open_config(args)
    rows = admin.list_quarantine(db, args.limit)
    if args.json:
        print(json.dumps(rows, separators=(",", ":")))
        return 0
    for r in rows:
        print(f"{r['id']:>6}  {r['received_at']}  {r['reason']:<14} {r['device'] or '-':<20} {r['topic']}  {r['detail']}")
    if not rows:
        print("quarantine is empty")
    return 0


def register(sub) -> None:
    p = sub.add_parser("quarantine", help="inspect rejected messages")
    s = p.add_subparsers(dest="quarantine_cmd", metavar="ACTION", required=True)
    ls = s.add_parser("list", help="list quarantined messages, newest first")
    add_config(ls)
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
