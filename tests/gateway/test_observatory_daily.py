"""The observatory's daily push: `serve` queues each finished UTC day once, after a delay for
late readings, catching up days missed while it was down; the forwarder sends what is queued."""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway import observatory
from gateway import recordstore as rs
from gateway.cli import main
from tests.gateway import _records
from tests.gateway._records import UTC, add_device, make_db, payload, store_reading
from tests.support.harness import GatewayProcess, MosquittoBroker

db_url = _records.db_url  # fixture: SQLite and PostgreSQL


def _queued(db) -> list[str]:
    with db.connect() as c:
        bodies = [r["body"] for r in rs.rows(c, "SELECT body FROM outbox WHERE kind = 'observatory' ORDER BY id")]
    return [json.loads(b)["key"] for b in bodies]


def test_days_are_queued_once_after_the_delay_and_missed_days_are_caught_up(db_url):
    db = make_db(db_url)
    push = observatory.DailyPush(db, suppress_below=1, delay_hours=6, catch_up_days=3)
    assert push.run_once(dt.datetime(2026, 11, 25, 12, tzinfo=UTC)) == []      # no device yet: nothing
    add_device(db, "nabd-00000000d001", registered_at="2026-11-20T09:00:00+00:00")
    t = dt.datetime(2026, 11, 23, 8, tzinfo=UTC)
    store_reading(db, payload("nabd-00000000d001", 1, t), outbox=False)

    # 05:00 on the 24th: the 23rd ended less than 6 h ago; catch-up reaches back 3 days, not before
    # the device was registered (the 20th)
    assert push.run_once(dt.datetime(2026, 11, 24, 5, tzinfo=UTC)) == [
        dt.date(2026, 11, 20), dt.date(2026, 11, 21), dt.date(2026, 11, 22)]
    assert push.run_once(dt.datetime(2026, 11, 24, 5, 30, tzinfo=UTC)) == []   # each day once
    assert push.run_once(dt.datetime(2026, 11, 24, 6, 0, tzinfo=UTC)) == [dt.date(2026, 11, 23)]
    assert _queued(db) == [f"observatory:2026-11-{d}" for d in (20, 21, 22, 23)]
    with db.connect() as c:
        body = json.loads(rs.rows(c, "SELECT body FROM outbox WHERE kind = 'observatory' ORDER BY id DESC")[0]["body"])
    row = [r for r in body["report"]["rows"] if r["facility"]][0]
    assert row["date"] == "2026-11-23" and row["readings"]["temp"] == 1

    # the gateway was down from the 24th to the 30th: only the last 3 finished days are queued
    assert push.run_once(dt.datetime(2026, 11, 30, 7, tzinfo=UTC)) == [
        dt.date(2026, 11, 27), dt.date(2026, 11, 28), dt.date(2026, 11, 29)]


def test_two_schedulers_racing_queue_each_day_once(db_url):
    db = make_db(db_url)
    add_device(db, "nabd-00000000d002", registered_at="2026-11-01T00:00:00+00:00")
    now = dt.datetime(2026, 11, 24, 12, tzinfo=UTC)
    pushes = [observatory.DailyPush(make_db(db_url), 1, 6, 7) for _ in range(4)]
    barrier = threading.Barrier(len(pushes))
    out: list[list[dt.date]] = []

    def go(p):
        barrier.wait()
        out.append(p.run_once(now))

    threads = [threading.Thread(target=go, args=(p,)) for p in pushes]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(d for days in out for d in days) == [dt.date(2026, 11, d) for d in range(17, 24)]
    assert len(_queued(db)) == 7


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("Content-Length", 0))
        self.server.got.append(json.loads(self.rfile.read(n)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_serve_pushes_yesterday_to_the_configured_endpoint(tmp_path, capsys):
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    sink.got = []  # type: ignore[attr-defined]
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    broker = MosquittoBroker(tmp_path / "broker", "allow_anonymous true\n")
    conf = tmp_path / "gw.toml"
    try:
        assert main(["init", "--config", str(conf), "--broker", broker.url, "--listen", "127.0.0.1:0",
                     "--json"]) == 0
        capsys.readouterr()
        text = conf.read_text().replace(
            'endpoint = ""', f'endpoint = "http://127.0.0.1:{sink.server_address[1]}/counts"', 1)
        text = text.replace("push_delay_hours = 6.0", "push_delay_hours = 0.0")
        conf.write_text(text)
        from gateway import config as gconfig

        db = gconfig.load(str(conf)).database_handle()
        db.migrate()
        yesterday = dt.datetime.now(UTC).date() - dt.timedelta(days=1)
        add_device(db, "nabd-00000000d003", registered_at=f"{yesterday}T00:00:00+00:00")
        gw = GatewayProcess(conf, client_id="gw-daily").start()
        try:
            end = time.monotonic() + 30
            while not sink.got and time.monotonic() < end:  # type: ignore[attr-defined]
                time.sleep(0.1)
        finally:
            gw.terminate()
        keys = [b["key"] for b in sink.got]  # type: ignore[attr-defined]
        assert keys == [f"observatory:{yesterday}"], gw.log[-2000:]
    finally:
        broker.stop()
        sink.shutdown()
