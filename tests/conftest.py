"""Fixtures shared by every suite: the MicroPython VM, a real Mosquitto broker, the project's
PostgreSQL, and the shared recordings. Suite-specific fixtures live in each folder's conftest."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from host.mpvm import MicroPythonVM

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


# in-VM helpers: real modules under tests/ (linted like the rest), copied into every VM so that
# they import there by the same name as on CPython (``from tests.firmware._commsboard import ...``)
VM_HELPERS = [p for d in ("firmware", "sim") for p in sorted((REPO / "tests" / d).glob("_*.py"))]


def install_vm_helpers(m: MicroPythonVM) -> None:
    for p in VM_HELPERS:
        m.write_file("/lib/" + p.relative_to(REPO).as_posix(), p.read_bytes())


@pytest.fixture
def vm():
    """A fresh MicroPython interpreter with firmware/ and sim/ on its path, and the in-VM
    helpers (``tests/firmware/_*.py``, ``tests/sim/_*.py``) importable as on CPython."""
    with MicroPythonVM() as m:
        install_vm_helpers(m)
        yield m


@pytest.fixture
def ppg_data() -> Path:
    """The shared real PPG recordings; skips (with the reason) where they are absent."""
    p = SHARED_DATA / "ppg"
    if not p.is_dir():
        pytest.skip(f"shared recordings not found at {p} (they live beside the project root)")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def mosquitto_bin() -> str:
    for c in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if c and os.path.exists(c):
            return c
    raise RuntimeError("mosquitto is not installed: run `make setup`")


class Broker:
    """A real Mosquitto on loopback, configured by the test. ``config`` is the text of
    mosquitto.conf without the listener line(s); ``{dir}`` in it is replaced by the broker's
    folder (for password, ACL, certificate and persistence files written by the test)."""

    def __init__(self, workdir: Path, config: str = "allow_anonymous true\n", tls_config: str | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = free_port() if tls_config else None
        self.config = config
        self.tls_config = tls_config
        self.proc: subprocess.Popen | None = None

    def _write_conf(self) -> Path:
        conf = self.dir / "mosquitto.conf"
        # the listener first: a listener option (use_username_as_clientid, max_connections, ...)
        # written before any listener line configures Mosquitto's default listener, which then
        # opens port 1883 on every address, and two such test brokers collide on it
        text = f"per_listener_settings false\nlistener {self.port} 127.0.0.1\n"
        text += self.config.replace("{dir}", str(self.dir)) + "\n"
        if self.tls_config:
            text += f"\nlistener {self.tls_port} 127.0.0.1\n" + self.tls_config.replace("{dir}", str(self.dir))
        text += f"\nlog_dest file {self.dir}/mosquitto.log\nlog_type all\n"
        conf.write_text(text)
        return conf

    def start(self) -> "Broker":
        conf = self._write_conf()
        self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
            if self.tls_port:
                wait_port(self.tls_port)
        except TimeoutError:
            self.stop()
            log = (self.dir / "mosquitto.log").read_text(errors="replace")[-2000:]
            raise RuntimeError("mosquitto did not start: " + log) from None
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def log(self) -> str:
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""


@pytest.fixture
def broker_factory(tmp_path):
    """Start real brokers: ``broker_factory(config=..., tls_config=...)``; all stopped at the end."""
    started: list[Broker] = []

    def make(config: str = "allow_anonymous true\n", tls_config: str | None = None, name: str = "broker") -> Broker:
        b = Broker(tmp_path / f"{name}{len(started)}", config, tls_config).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def broker(broker_factory) -> Broker:
    """An anonymous plain-TCP Mosquitto on a free loopback port."""
    return broker_factory()


def pg_base_url() -> str:
    return os.environ.get("NABD_TEST_PG_URL") or subprocess.run(
        ["bash", str(REPO / "scripts" / "services.sh"), "url"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def pg_url(request):
    """A fresh, empty PostgreSQL database on the project's server (scripts/services.sh)."""
    import psycopg

    base = pg_base_url()
    name = "t_" + os.urandom(6).hex()
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as c:
            c.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL not reachable at {base} ({e}); `make test` starts it via scripts/services.sh")
    url = base.rsplit("/", 1)[0] + "/" + name
    yield url
    # Clean-up only: a database left behind (a child process still connected) is reported, not fatal.
    try:
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as e:
        import warnings

        warnings.warn(f"could not drop test database {name}: {e}", stacklevel=1)


def pytest_addoption(parser):
    """The hardware-in-the-loop suite (tests/hil): by default it starts the virtual device and the
    virtual bootloader itself; on a bench, point it at the board (docs/technician.md)."""
    g = parser.getgroup("nabd hardware-in-the-loop (tests/hil)")
    g.addoption("--port", default=None, help="serial port of a board running MicroPython (default: a virtual device)")
    g.addoption("--bootloader-port", default=None,
                help="serial port of a board in its ROM bootloader (default: a virtual bootloader)")
    g.addoption("--image", default=None, help="MicroPython firmware image for `nabd flash` (default: a test image)")
