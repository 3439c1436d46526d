"""``nabd-gateway observatory report|push``: the observatory's daily device counts.

``report --from D --to D [--json|--csv]`` prints the counts (suppressed cells shown as ``-``);
``push [--day D]`` queues one day's counts (default: yesterday, UTC) in the outbox for the
forwarder to deliver to ``[observatory] endpoint``; a day already queued is not queued again.
Without an endpoint, ``push`` refuses (exit 2): nothing would deliver what it queued.
"""
from __future__ import annotations

import datetime as dt
import sys

from gateway.commands._common import add_config, open_config, terminal_safe
from nabd_cli import EXIT_USAGE, CommandError, add_json, emit_json


def register(sub) -> None:
    p = sub.add_parser("observatory", help="observatory feed: device counts per facility and region")
    osub = p.add_subparsers(dest="observatory_command", metavar="ACTION", required=True)
    r = osub.add_parser("report", help="print daily counts for a date range")
    add_config(r)
    r.add_argument("--from", dest="date_from", required=True, metavar="YYYY-MM-DD")
    r.add_argument("--to", dest="date_to", required=True, metavar="YYYY-MM-DD")
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--csv", action="store_true", help="CSV output")
    r.set_defaults(func=_report)
    q = osub.add_parser("push", help="queue one day's counts for the observatory endpoint")
    add_config(q)
    q.add_argument("--day", metavar="YYYY-MM-DD", help="default: yesterday (UTC)")
    add_json(q)
    q.set_defaults(func=_push)


def _report(args) -> int:
    from gateway import observatory

    cfg, db = open_config(args)
    try:
        report = observatory.device_counts(db, args.date_from, args.date_to, cfg.observatory.suppress_below)
    except observatory.ObservatoryError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    if args.json:
        emit_json(report)
    elif args.csv:
        sys.stdout.write(observatory.to_csv(report))
    else:
        text = observatory.to_text(report)
        sys.stdout.write("\n".join(terminal_safe(line) for line in text.split("\n")))
    return 0


def _push(args) -> int:
    from gateway import observatory

    cfg, db = open_config(args)
    if not cfg.observatory.endpoint:
        raise CommandError(f"no [observatory] endpoint in {args.config}: nothing would deliver the counts; set "
                           "it (then `serve` delivers them), or print them with `observatory report`", EXIT_USAGE)
    try:
        day = dt.date.fromisoformat(args.day) if args.day else dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    except ValueError:
        raise CommandError("--day must be YYYY-MM-DD", EXIT_USAGE) from None
    queued = observatory.enqueue_daily_push(db, day, cfg.observatory.suppress_below)
    if args.json:
        emit_json({"day": day.isoformat(), "queued": queued})
    else:
        print(f"{day}: {'queued' if queued else 'already queued'} for {cfg.observatory.endpoint} "
              "(`nabd-gateway serve` delivers it)")
    return 0
