"""A private PostgreSQL cluster that a test or benchmark may stop and restart: ``initdb`` into a
temporary folder, ``pg_ctl`` start/stop on a free loopback port. The machine's PostgreSQL
(scripts/services.sh, port 55432) is shared by every test running at the same time, so a fault
that takes the server down needs a server of its own.

    with PgCluster() as pg:          # initdb + start (~2 s)
        url = pg.url                 # postgresql://nabd:PASSWORD@127.0.0.1:PORT/nabd
        pg.stop()                    # fast shutdown: sessions terminated, nothing in flight kept
        pg.start()                   # same port, same data
        pg.restart(down_s=3)

Debian's binaries (``/usr/lib/postgresql/N/bin``, as scripts/services.sh uses them). PostgreSQL
refuses to run as root: run as root, the cluster's folder is given to the ``postgres`` user and
every ``pg_ctl`` runs as it (``runuser``). The role ``nabd`` logs in with a random password
(``scram-sha-256``; nothing is trusted), so a test can check that it never shows in a log.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from host.site import free_port


class PgClusterError(RuntimeError):
    pass


def pg_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                   if p.parent.name.isdigit() else 0)
    if not found:
        raise PgClusterError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin): run make setup")
    return found[-1]


class PgCluster:
    """See the module docstring. ``fsync`` stays on: a restart must keep what was committed."""

    SETTINGS = {"max_connections": "40", "shared_buffers": "16MB"}   # small: tests start several

    def __init__(self, folder: Path | None = None, port: int | None = None, settings: dict | None = None):
        self.bin = pg_bindir()
        self._own_dir = folder is None
        # the folder must be reachable by the postgres user: not under pytest's 0700 tmp_path
        self.dir = Path(folder or tempfile.mkdtemp(prefix="nabd-pg-"))
        self.data = self.dir / "data"
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(18)
        self._root = os.geteuid() == 0
        self.settings = {**self.SETTINGS, **(settings or {})}   # postgresql.conf lines (a benchmark: defaults)

    @property
    def url(self) -> str:
        return f"postgresql://nabd:{self.password}@127.0.0.1:{self.port}/nabd"

    def _run(self, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        cmd = (["runuser", "-u", "postgres", "--"] if self._root else []) + list(args)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=None if env is None else {**os.environ, **env})
        if p.returncode != 0:
            raise PgClusterError(f"{Path(args[0]).name} failed ({p.returncode}): {(p.stderr or p.stdout)[-1500:]}")
        return p

    def init(self) -> "PgCluster":
        """initdb, the configuration, the role ``nabd`` and its database."""
        if self._root:
            shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        self._su = su = secrets.token_urlsafe(18)
        pwfile = self._secret_file("pw", su + "\n")
        try:
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                      f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions")
        finally:
            pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                    "fsync = on\nlog_min_messages = warning\n"
                    + "".join(f"{k} = {v}\n" for k, v in self.settings.items()))
        self.start()
        self.superuser(f"CREATE ROLE nabd LOGIN PASSWORD '{self.password}'", "CREATE DATABASE nabd OWNER nabd")
        return self

    def _secret_file(self, name: str, text: str) -> Path:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if self._root:
            shutil.chown(path, "postgres", "postgres")
        return path

    def superuser(self, *statements: str) -> list[tuple]:
        """Run ``statements`` as the cluster's superuser (autocommit); the last one's rows."""
        import psycopg

        out: list[tuple] = []
        with psycopg.connect(f"postgresql://postgres:{self._su}@127.0.0.1:{self.port}/postgres", autocommit=True,
                             connect_timeout=10) as c:
            for sql in statements:
                cur = c.execute(sql)
                out = [tuple(r) for r in cur.fetchall()] if cur.description else []
        return out

    def standby(self, synchronous: bool = True) -> "PgCluster":
        """A hot standby of this cluster on a port of its own (``pg_basebackup -R``: streaming
        replication from this one); ``synchronous``: this cluster's commits wait until the standby
        has flushed them (``synchronous_standby_names = '*'`` with ``synchronous_commit = on``).
        Its ``url`` reaches the same role and database."""
        s = PgCluster(settings=self.settings)
        s.password, s._su = self.password, self._su
        if s._root:
            shutil.chown(s.dir, "postgres", "postgres")
        os.chmod(s.dir, 0o700)
        # the replication password in a libpq password file, never on a command line
        passfile = s._secret_file("pgpass", f"127.0.0.1:{self.port}:*:postgres:{self._su}\n")
        try:
            s._run(str(self.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                   "-D", str(s.data), "-R", "-X", "stream", "-c", "fast", env={"PGPASSFILE": str(passfile)})
            with open(s.data / "postgresql.conf", "a") as f:
                f.write(f"port = {s.port}\n")
            s.start()
        except BaseException:
            s.close()
            raise
        if synchronous:
            self.superuser("ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()")
        return s

    def promote(self) -> None:
        """A standby becomes a primary (after its primary failed)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    def start(self, timeout: float = 60) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), "-w",
                  "-t", str(int(timeout)), "start", timeout=timeout + 10)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions terminated, clean shutdown; ``immediate``: as a crash (recovery at
        the next start)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 0.0, mode: str = "fast") -> None:
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def running(self) -> bool:
        cmd = (["runuser", "-u", "postgres", "--"] if self._root else []) + [
            str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]
        return subprocess.run(cmd, capture_output=True).returncode == 0

    def log(self) -> str:
        p = self.data / "server.log"
        try:
            return p.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.data.exists() and self.running():
            try:
                self.stop("immediate")
            except PgClusterError:
                pass
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        try:
            return self.init()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
