"""Run real gateway processes for tests and benchmarks: a configuration on disk, ``nabd-gateway
serve`` as a subprocess (so that SIGTERM / SIGKILL are real), and small database helpers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import tomli_w

from gateway import admin
from gateway.config import load
from gateway.db import Database

REPO = Path(__file__).resolve().parents[2]


def write_config(folder: Path, broker_url: str, db_url: str, *, forward_url: str = "", api: dict | None = None,
                 **ingest) -> Path:
    """A configuration (and its 0600 KEK file) in ``folder``; returns the config path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kek = folder / "gateway.kek"
    kek.write_text(os.urandom(32).hex() + "\n")
    kek.chmod(0o600)
    data = {
        "broker": {"url": broker_url, "client_id": "nabd-gateway-test", "session_expiry_s": 3600},
        "database": {"url": db_url},
        "ingest": {"batch_max": 1024, "batch_ms": 5, "queue_max": 4096, "receive_maximum": 4096, **ingest},
        "api": {"listen": "127.0.0.1:0", **(api or {})},
        "security": {"kek_file": str(kek)},
    }
    if forward_url:
        data["fhir_forward"] = {"enabled": True, "url": forward_url}
    path = folder / "gateway.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def register(config_path: Path, devices) -> None:
    """Register SimDevices (id, key, key_version) in the configured database."""
    cfg = load(config_path)
    db = Database(cfg.database.url)
    db.migrate()
    for i, d in enumerate(devices):
        admin.add_device(db, cfg.security.kek(), d.id, d.key, f"facility-{i % 3}", f"MA-{1 + i % 12:02d}",
                         d.key_version, actor="test")


class GatewayProcess:
    """``nabd-gateway serve`` in a subprocess; its log is collected in ``.log``."""

    def __init__(self, config_path: Path, client_id: str = "nabd-gateway-test", extra: tuple[str, ...] = (),
                 api: bool = False):
        self.config_path = Path(config_path)
        self.api = api          # also serve the HTTP API (its own process; [api] listen)
        self.client_id = client_id
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.log = ""
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> "GatewayProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path),
             *(() if self.api else ("--no-api",)), "--client-id", self.client_id, *self.extra],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        end = time.monotonic() + timeout
        while "connected to" not in self.log:
            if self.proc.poll() is not None or time.monotonic() > end:
                self.kill()
                raise RuntimeError("gateway did not connect:\n" + self.log[-3000:])
            time.sleep(0.02)
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            self.log += line

    def terminate(self, timeout: float = 30.0) -> int:
        if not self.proc:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.terminate()


def scalar(db_url: str, sql: str, params: tuple = ()):
    db = Database(db_url)
    with db.connect() as conn:
        row = conn.execute(db.sql(sql), params).fetchone()
    return row[0] if row else None


def rows(db_url: str, sql: str, params: tuple = ()) -> list[tuple]:
    db = Database(db_url)
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(db.sql(sql), params).fetchall()]


def wait_for(pred, timeout: float = 20.0, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())


class MosquittoBroker:
    """A Mosquitto on a free loopback port (benchmarks; tests use tests/conftest.py's fixture)."""

    def __init__(self, folder: Path, config: str = "allow_anonymous true\n"):
        import shutil
        import socket

        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = self.dir / "mosquitto.conf"
        conf.write_text(config + f"\nlistener {self.port} 127.0.0.1\nlog_dest file {self.dir}/mosquitto.log\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > end:
                    self.stop()
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
