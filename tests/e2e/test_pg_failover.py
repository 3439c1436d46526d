"""PostgreSQL with a streaming replica, the primary lost during a run: the region's gateways
(host/region.py) write through a libpq multi-host URL (``target_session_attrs=read-write``: the
primary, whichever host it is), the primary crashes (immediate shutdown) while 60 devices
(sim/fleet.py) measure, the standby is promoted, and the gateways reconnect to it by themselves.
With synchronous replication every reading a device got acknowledged had reached the standby
before the ack, so every reading produced is stored exactly once on the new primary. A gateway
started while PostgreSQL is down waits for it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host.region import Region
from sim.fleet import Fleet
from tests.support.harness import rows, wait_for, write_config
from tests.support.pgcluster import PgCluster

pytestmark = [pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]
DEVICES = 60


def test_primary_lost_standby_promoted_every_reading_stored_once(tmp_path):
    with PgCluster() as primary:
        standby = primary.standby(synchronous=True)
        try:
            # the standby streams from the primary, synchronously: a commit returns once it has it
            assert wait_for(lambda: primary.superuser("SELECT sync_state FROM pg_stat_replication") == [("sync",)])
            url = (f"postgresql://nabd:{primary.password}@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/nabd"
                   "?target_session_attrs=read-write")
            with Region(tmp_path / "region", 1, 2, url, broker_user="root" if os.geteuid() == 0 else None) as r:
                fleet = Fleet(tmp_path / "fleet", DEVICES, r.clinic_urls(), clinics=1)
                r.add_devices(fleet)
                r.write()
                r.start()
                seen: dict = {}

                def failover(t: float) -> None:
                    if t >= 4 and "crash" not in seen:
                        seen["crash"] = fleet.counts()["acked"]
                        primary.stop("immediate")      # the primary's machine is gone
                    elif t >= 7 and "promote" not in seen:
                        seen["promote"] = fleet.counts()["acked"]
                        standby.promote()

                s = fleet.run(1.0, 12, drain_s=120, on_tick=failover, close=False)
                for d in fleet.devices:
                    d.uplink.close()
                assert s["waiting"] == 0 and s["acked"] == s["readings_produced"] >= DEVICES * 11, s
                assert seen["crash"] < s["readings_produced"] and "promote" in seen
                made = sorted((d, q) for d, seqs in fleet.produced().items() for q in seqs)
                got = sorted(rows(standby.url, "SELECT device_id, seq FROM readings"))
                assert got == made                     # on the promoted standby: every reading, once
                gateways = dict(r.gw)
            assert all(p.returncode == 0 for p in gateways.values())   # the same processes throughout
            for n in range(2):
                log = (r.gateway_config(n).parent / "serve.log").read_text()
                assert "database available again" in log and primary.password not in log, log[-2000:]
                assert "Traceback" not in log and "store process ended" not in log, log[-2000:]
        finally:
            standby.close()


def test_serve_started_while_postgresql_is_down_waits_for_it_a_wrong_password_exits_3(tmp_path, broker):
    """A gateway (re)started during an outage waits instead of exiting (a service manager would
    restart it over and over); a configuration error still exits 3 at once, in one line."""
    with PgCluster() as pg:
        cfg = write_config(tmp_path / "gw", broker.url, pg.url)
        pg.stop()
        logf = tmp_path / "serve.log"
        with open(logf, "w") as f:
            p = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--no-api"],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=f, text=True)
        try:
            assert wait_for(lambda: "waiting for it" in logf.read_text(), 30)
            time.sleep(2)
            assert p.poll() is None                      # still waiting, not exited
            pg.start()
            assert wait_for(lambda: "connected to" in logf.read_text(), 30), logf.read_text()
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
        err = logf.read_text()
        assert p.returncode == 0, err
        assert err.count("waiting for it") == 1 and "database reachable after" in err and "connected to" in err
        assert pg.password not in err

        bad = write_config(tmp_path / "bad", broker.url, pg.url.replace(pg.password, "not-the-password"))
        t0 = time.monotonic()
        q = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(bad), "--no-api"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert q.returncode == 3 and "password authentication failed" in q.stderr, q.stderr
        assert time.monotonic() - t0 < 30 and "waiting" not in q.stderr and "not-the-password" not in q.stderr
