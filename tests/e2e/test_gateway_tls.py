"""The gateway's ingest over TLS to the broker (``mqtts://`` with ``ca_file``): paho's socket is then
an SSL socket, read through ``gateway.ingest.ReadBuffer`` like a plain one (one ``recv`` serves
several packets; what it holds is reported by ``pending()``). A backlog of 1,200 readings must be
stored once and acknowledged, as over plain MQTT."""
from __future__ import annotations

import tomllib

import tomli_w

from tests.e2e.test_device_broker import issue, make_ca, pem
from tests.e2e.test_gateway_ingest import _assert_each_once
from tests.support.generator import Fleet, SimDevice
from tests.support.harness import GatewayProcess, register, write_config


def test_readings_over_a_tls_broker_connection_are_stored_once_and_acknowledged(broker_factory, tmp_path):
    ca = make_ca()
    sec = tmp_path / "sec"
    sec.mkdir()
    cert, key = issue(ca, "localhost", server=True)
    (sec / "ca.pem").write_text(pem(ca[1]))
    (sec / "server.pem").write_text(cert)
    (sec / "server.key").write_text(key)
    # as root, Mosquitto drops to the user "mosquitto", which cannot read pytest's private tmp dirs
    b = broker_factory(config="user root\nallow_anonymous true\n", tls_config=f"cafile {sec}/ca.pem\ncertfile {sec}/server.pem\nkeyfile {sec}/server.key\n"
                                  "require_certificate false\n")
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    cfg = write_config(tmp_path / "gw", f"mqtts://127.0.0.1:{b.tls_port}", db_url)
    data = tomllib.loads(cfg.read_text())
    data["broker"]["ca_file"] = str(sec / "ca.pem")
    cfg.write_text(tomli_w.dumps(data))
    devs = [SimDevice(f"nabd-7f3e2d1c{i:02x}") for i in range(8)]
    register(cfg, devs)
    fleet = Fleet(b.url, devs).start()             # the devices on the plain listener
    try:
        for d in devs:                             # a backlog before the gateway connects
            fleet.send_new(d.id, 150)
        with GatewayProcess(cfg) as gw:
            assert fleet.run_until_acked(timeout=60), f"{fleet.pending()} readings never acknowledged"
            assert "connected to 127.0.0.1" in gw.log
    finally:
        fleet.stop()
    _assert_each_once(db_url, devs)
    assert all(d.bad_acks == 0 for d in devs)
