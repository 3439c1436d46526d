"""The error cases a new user meets, each with its exit code (0 ok, 1 check failed, 2 usage,
3 device/connection, 4 data) and a one-line message that names the address or the option and what
to do. Run as the user runs them: the installed `nabd` / `nabd-gateway` in a subprocess."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KEY = "11" * 32


def run(prog: str, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / prog), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)


def error_line(p: subprocess.CompletedProcess, prog: str) -> str:
    """The one error line on stderr (anything else there is log lines), checking there is no traceback."""
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith(f"{prog}: ")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def init(tmp_path: Path, broker_port: int | None = None, api_port: int | None = None) -> Path:
    conf = tmp_path / "gw.toml"
    p = run("nabd-gateway", "init", "--config", str(conf), "--broker", f"mqtt://127.0.0.1:{broker_port or free_port()}",
            "--listen", f"127.0.0.1:{api_port or free_port()}", "--json")
    assert p.returncode == 0, p.stderr
    return conf


# --- nabd ----------------------------------------------------------------------------------------

def test_sim_run_with_the_broker_refusing_is_a_connection_error(tmp_path):
    url = f"mqtt://127.0.0.1:{free_port()}"
    p = run("nabd", "sim", "run", "--state", str(tmp_path / "dev"), "--broker", url, "--timeout", "3")
    assert p.returncode == 3, p.stdout + p.stderr
    line = error_line(p, "nabd")
    assert url in line and "refused" in line.lower() and "start the broker" in line
    assert "kept in the outbox" in line  # measured all the same: nothing is lost


# --- nabd-gateway serve --------------------------------------------------------------------------

def test_serve_with_the_broker_down_names_it_and_exits_3(tmp_path):
    port = free_port()
    conf = init(tmp_path, broker_port=port)
    p = run("nabd-gateway", "serve", "--config", str(conf), timeout=30)
    assert p.returncode == 3, p.stderr
    line = error_line(p, "nabd-gateway")
    assert f"mqtt://127.0.0.1:{port}" in line and "connection refused" in line and str(conf) in line
    assert "Client is not connected" not in p.stderr
    p = run("nabd-gateway", "serve", "--config", str(conf), "--json", timeout=30)
    assert p.returncode == 3 and json.loads(p.stdout.splitlines()[-1])["exit"] == 3


def test_serve_with_the_api_port_taken_names_it_and_exits_3(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        api = taken.getsockname()[1]
        conf = init(tmp_path, api_port=api)
        p = run("nabd-gateway", "serve", "--config", str(conf), timeout=30)
    assert p.returncode == 3, p.stderr
    line = error_line(p, "nabd-gateway")
    assert f"127.0.0.1:{api}" in line and "in use" in line and "[api] listen" in line


def test_serve_without_its_key_encryption_key_says_where_it_looked(tmp_path):
    conf = init(tmp_path)
    (tmp_path / "gw.toml.kek").unlink()
    env = {k: v for k, v in os.environ.items() if k != "NABD_KEK"}
    p = run("nabd-gateway", "serve", "--config", str(conf), "--no-api", env=env)
    assert p.returncode == 2, p.stderr   # a configuration that cannot work: usage
    line = error_line(p, "nabd-gateway")
    assert str(tmp_path / "gw.toml.kek") in line and "NABD_KEK" in line


@pytest.mark.broker
def test_serve_refused_by_the_broker_says_so_and_exits_3(tmp_path, broker_factory):
    b = broker_factory(config="allow_anonymous false\n")   # the gateway's config has no broker user
    conf = init(tmp_path, broker_port=b.port)
    p = run("nabd-gateway", "serve", "--config", str(conf), "--no-api", timeout=30)
    assert p.returncode == 3, p.stderr
    line = error_line(p, "nabd-gateway")
    assert "refused the gateway" in line and f"127.0.0.1:{b.port}" in line and "username" in line


@pytest.mark.broker
def test_serve_names_the_broker_once_while_it_is_down(tmp_path, broker_factory):
    """paho says "Client is not connected" at every retry, without the address: serve says instead,
    once a minute at most, which broker it is waiting for; it keeps running (the broker may return)."""
    b = broker_factory()
    conf = init(tmp_path, broker_port=b.port)
    log = tmp_path / "serve.log"
    with log.open("w") as f:
        proc = subprocess.Popen([str(BIN / "nabd-gateway"), "serve", "--config", str(conf), "--no-api"],
                                stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        end = time.monotonic() + 30
        while "connected to" not in log.read_text() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.1)
        assert "connected to" in log.read_text(), log.read_text()
        b.stop()
        time.sleep(8)             # paho retries every 0.1 .. 5 s meanwhile
        assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    text = log.read_text()
    assert rc == 0, text
    assert text.count(f"broker at mqtt://127.0.0.1:{b.port} unreachable") == 1, text
    assert "Client is not connected" not in text


# --- nabd-gateway administration -----------------------------------------------------------------

def test_init_again_is_a_usage_error_and_changes_nothing(tmp_path):
    conf = init(tmp_path)
    before = conf.read_bytes(), (tmp_path / "gw.toml.kek").read_bytes()
    p = run("nabd-gateway", "init", "--config", str(conf))
    assert p.returncode == 2, p.stderr
    assert "--force" in error_line(p, "nabd-gateway")
    assert (conf.read_bytes(), (tmp_path / "gw.toml.kek").read_bytes()) == before


def test_devices_add_bad_arguments_are_usage_errors_and_conflicts_data_errors(tmp_path):
    conf = init(tmp_path)

    def add(dev: str, region: str, *extra: str) -> subprocess.CompletedProcess:
        return run("nabd-gateway", "devices", "add", dev, "--key", KEY, "--facility", "CS Anfa", "--region", region,
                   "--config", str(conf), *extra)

    p = add("nabd-000000000001", "MA-13")
    assert p.returncode == 2 and "MA-13" in error_line(p, "nabd-gateway")
    p = add("Not An Id", "MA-06")
    assert p.returncode == 2 and "Not An Id" in error_line(p, "nabd-gateway")
    p = add("nabd-000000000001", "MA-06", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] is True, p.stderr
    p = add("nabd-000000000001", "MA-06", "--json")   # at odds with the registry: a data error
    assert p.returncode == 4 and "already exists" in json.loads(p.stdout)["error"]


def _quarantine(conf: Path, n: int) -> None:
    from gateway import config as gconfig

    db = gconfig.load(str(conf)).database_handle()
    db.migrate()
    t = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.timezone.utc)
    with db.connect() as conn:
        for i in range(n):
            conn.execute(db.sql("INSERT INTO quarantine (received_at, reason, topic, device_hint, raw, detail) "
                                "VALUES (?, ?, ?, ?, ?, ?)"),
                         (t + dt.timedelta(minutes=i), "malformed", f"nabd/v1/dev{i}/reading", None, b"{", f"bad {i}"))
        conn.commit()


def test_quarantine_list_has_a_header_and_says_what_it_leaves_out(tmp_path):
    conf = init(tmp_path)
    p = run("nabd-gateway", "quarantine", "list", "--config", str(conf))
    assert p.returncode == 0 and p.stdout.strip() == "quarantine is empty"
    _quarantine(conf, 3)
    p = run("nabd-gateway", "quarantine", "list", "--config", str(conf), "--limit", "2")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["ID", "RECEIVED_AT", "REASON", "DEVICE", "BYTES", "HITS", "TOPIC", "DETAIL"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["3", "2"]          # newest first
    assert lines[3] == "(2 newest of 3 shown; --limit N for more)" and len(lines) == 4
    p = run("nabd-gateway", "quarantine", "list", "--config", str(conf), "--limit", "0")
    assert p.returncode == 2 and "--limit" in error_line(p, "nabd-gateway") and "empty" not in p.stdout
    p = run("nabd-gateway", "quarantine", "list", "--config", str(conf), "--json")
    assert p.returncode == 0 and [r["id"] for r in json.loads(p.stdout)] == [3, 2, 1]


def test_observatory_push_without_an_endpoint_is_refused(tmp_path):
    conf = init(tmp_path)
    p = run("nabd-gateway", "observatory", "push", "--day", "2026-11-23", "--config", str(conf))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "queued" not in p.stdout and "[observatory] endpoint" in error_line(p, "nabd-gateway")


def test_database_down_is_a_connection_error_on_one_line(tmp_path):
    port = free_port()
    conf = tmp_path / "gw.toml"
    p = run("nabd-gateway", "init", "--config", str(conf), "--db", f"postgresql://nabd@127.0.0.1:{port}/nabd")
    assert p.returncode == 0, p.stderr
    p = run("nabd-gateway", "devices", "list", "--config", str(conf))
    assert p.returncode == 3, p.stdout + p.stderr
    line = error_line(p, "nabd-gateway")
    assert f"port {port}" in line and "[database] url" in line and str(conf) in line
    assert len(p.stderr.splitlines()) == 1
