"""`nabd-gateway observatory report|push` through the real CLI and a configuration from `init`."""
from __future__ import annotations

import datetime as dt
import json

from gateway import config as gconfig
from gateway.cli import main
from tests.gateway._records import UTC, add_device, payload, store_reading


def test_report_and_push(tmp_path, capsys):
    conf = tmp_path / "gw.toml"
    assert main(["init", "--config", str(conf), "--json"]) == 0
    capsys.readouterr()
    cfg = gconfig.load(str(conf))
    db = cfg.database_handle()
    db.migrate()
    add_device(db, "nabd-00000000000a", facility="CS Anfa", region="MA-06")
    t = dt.datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    for i in range(6):
        store_reading(db, payload("nabd-00000000000a", i + 1, t, patient=f"p-pat{i}"), outbox=False)
    store_reading(db, payload("nabd-00000000000a", 50, t + dt.timedelta(days=1), patient="p-pat0"), outbox=False)

    assert main(["observatory", "report", "--from", "2026-11-23", "--to", "2026-11-24", "--json",
                 "--config", str(conf)]) == 0
    rep = json.loads(capsys.readouterr().out)
    fac = [r for r in rep["rows"] if r["facility"] == "CS Anfa"]
    assert [r["readings"]["temp"] for r in fac] == [6, None]        # day 2: one patient, suppressed
    assert [r["suppressed"] for r in fac] == [False, True]

    assert main(["observatory", "report", "--from", "2026-11-23", "--to", "2026-11-23",
                 "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "CS Anfa" in out and "MA-06" in out

    assert main(["observatory", "report", "--from", "2026-11-24", "--to", "2026-11-23", "--config", str(conf)]) == 2
    assert "before" in capsys.readouterr().err

    # without an endpoint nothing would deliver the counts: refused, nothing queued
    assert main(["observatory", "push", "--day", "2026-11-23", "--config", str(conf)]) == 2
    assert "no [observatory] endpoint" in capsys.readouterr().err
    assert main(["observatory", "push", "--day", "2026-11-23", "--json", "--config", str(conf)]) == 2
    assert json.loads(capsys.readouterr().out)["exit"] == 2
    conf.write_text(conf.read_text().replace('endpoint = ""', 'endpoint = "http://127.0.0.1:9/counts"', 1))

    assert main(["observatory", "push", "--day", "2026-11-23", "--json", "--config", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out) == {"day": "2026-11-23", "queued": True}
    assert main(["observatory", "push", "--day", "2026-11-23", "--json", "--config", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out)["queued"] is False
