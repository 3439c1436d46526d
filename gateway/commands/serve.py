"""``nabd-gateway serve --config FILE [--client-id ID] [--no-api]``

Runs the ingest (gateway/ingest.py), the HTTP API (gateway/web/, in a child process of its own:
nothing on the HTTP side can delay ingest and acks) and the forwarder (gateway/forward.py) when a FHIR server or an observatory
endpoint is configured; with an observatory endpoint, the daily counts are queued each day
(gateway/observatory.py DailyPush). SIGTERM / SIGINT: stop taking messages, drain the queue (commit + ack),
stop the threads, exit 0. Logs go to stderr and never contain keys, tokens or payloads.
"""
from __future__ import annotations

import importlib.util
import logging
import signal
import threading

from gateway.commands._common import add_config, kek, open_config
from nabd_cli import EXIT_DEVICE, CommandError

log = logging.getLogger("nabd.gateway")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(args) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nabd.gateway.mqtt").setLevel(logging.WARNING)
    cfg, db = open_config(args)
    kek(cfg)  # fail now with a clear message if the KEK is missing
    from gateway.ingest import Ingest

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    api = forwarder = None
    if not args.no_api:
        from gateway.web.server import ApiProcess

        try:  # bound here, before anything runs: a taken port is a clear error, not a half-started gateway
            api = ApiProcess(args.config, cfg)
        except OSError as e:
            raise CommandError(f"cannot listen on [api] listen {cfg.api.listen}: {e.strerror or e}",
                               EXIT_DEVICE) from None
    ingest = Ingest(cfg, db, client_id=args.client_id)
    try:
        ingest.start()
    except OSError as e:
        if api is not None:
            api.stop()
        raise CommandError(f"cannot start ingest: {e}", EXIT_DEVICE) from None
    if api is not None:
        api.start()
        log.info("API listening on %s (links to %s), process %d", cfg.api.listen, api.url, api.proc.pid)
    if _has("gateway.forward") and (cfg.fhir_forward.enabled or cfg.observatory.endpoint):
        from gateway.forward import Forwarder

        forwarder = Forwarder(cfg, db).start()
        log.info("forwarder started")
    daily = None
    if cfg.observatory.endpoint:
        from gateway.observatory import DailyPush

        oc = cfg.observatory
        daily = DailyPush(db, oc.suppress_below, oc.push_delay_hours, oc.push_catch_up_days).start()
    log.info("gateway serving (client id %s, database %s)", ingest.client_id, db.dialect)
    while not stop.wait(0.5):
        pass
    log.info("stopping: draining %d queued message(s)", ingest.queue.qsize())
    ingest.stop()
    if daily is not None:
        daily.stop()
    if forwarder is not None:
        forwarder.stop()
    if api is not None:
        api.stop()
    log.info("stopped; %d reading(s) committed in this run", ingest.committed)
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the gateway: ingest, API, forwarder")
    add_config(p)
    p.add_argument("--client-id", default=None, help="MQTT client id (default [broker] client_id)")
    p.add_argument("--no-api", action="store_true", help="do not start the HTTP API")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)
