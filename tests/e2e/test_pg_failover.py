"""PostgreSQL with a streaming replica, the primary lost during a run: the region's gateways
(host/region.py) write through a libpq multi-host URL (``target_session_attrs=read-write``: the
primary, whichever host it is), the primary crashes (immediate shutdown) while 60 devices
(sim/fleet.py) measure, the standby is promoted, and the gateways reconnect to it by themselves.
With synchronous replication every reading a device got acknowledged had reached the standby
before the ack, so every reading produced is stored exactly once on the new primary."""
from __future__ import annotations

import os

import pytest

from host.region import Region
from sim.fleet import Fleet
from tests.support.harness import rows, wait_for
from tests.support.pgcluster import PgCluster

pytestmark = [pytest.mark.broker]

DEVICES = 60


def test_primary_lost_standby_promoted_every_reading_stored_once(tmp_path, monkeypatch):
    # the firmware's flash modules call os.sync() (on the host sync(2) of every filesystem, slow
    # under load); the fleet's flash folders need no durability beyond this process
    import firmware.outbox
    import firmware.seq
    monkeypatch.setattr(firmware.outbox, "_sync", lambda: None)
    monkeypatch.setattr(firmware.seq, "_sync", lambda: None)

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
