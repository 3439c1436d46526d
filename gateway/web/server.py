"""Serving the web app: uvicorn (h11) hardened for an open network, in a process of its own.

Why a separate process: the ingest acknowledges a reading only after its commit; an HTTP client
must never compete with that for the interpreter. ``nabd-gateway serve`` binds the API socket
itself (so a taken port fails the start with a clear message) and hands it to a child,
``python -m gateway.web.server``, which inherits it. The child reads the database through its own
connections and asks its parent for the ingest's metrics over a socket pair (at most once a
second); it exits when the parent does (its stdin closes).

Limits (``[api]``, docs/operations.md "API"):

- ``header_timeout_s``: a request's head and body must arrive within it, counted from the
  connection's start or its previous response (uvicorn only times out idle keep-alive
  connections: a client sending half a request line would otherwise hold its connection forever);
- ``keepalive_s``: idle keep-alive connections are closed after it;
- ``max_connections``: open connections at most; past it a new connection evicts the one that
  has waited longest for its request among those of the client address holding the most
  connections: a slow client, never a request being answered, so half-sent requests from one
  address cannot lock out another's quick ones;
- requests being handled at once are bounded by ``app.Guard`` (503 past it) and the worker threads
  (not uvicorn's ``limit_concurrency``: it counts open connections too, so half-sent requests
  would turn every quick request into a 503);
- request heads at most 32 KiB (h11), query strings 8 KiB, bodies 64 KiB;
- ``backlog``: the listen(2) queue;
- TLS 1.2 at least when ``tls_cert``/``tls_key`` are set.

Disconnects are quiet: a client that goes away is dropped without a log line; uvicorn's
warning for each malformed request is logged once a minute at most (``RateLimited``).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from typing import Any, Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway import recordstore as rs
from gateway.web.app import build_app, settings_from_config

log = logging.getLogger("nabd.gateway.web")

MAX_HEAD = 32 * 1024   # bytes of request line + headers (h11)
API_NICE = 10          # the API process's nice increment (the ingest keeps 0)
_REQUEST_DONE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


class Counters:
    """What the limits did, for /metrics."""
    evicted = 0          # connections closed to make room (max_connections)
    timed_out = 0        # connections closed by header_timeout_s


def guarded_protocol(header_timeout: float, max_connections: int) -> type:
    """An H11Protocol subclass with a request deadline and a connection cap (see the module doc)."""
    # Per client address: its open connections, and those waiting for a request, oldest first
    # (arming moves one to the end). Past the cap, the victim is the longest-waiting connection of
    # the address holding the most connections: a slow client flooding from one address evicts
    # its own connections, never the one request another client is sending, even when a burst of
    # accepts comes in before any of their requests is read.
    waiting: dict[str, OrderedDict] = defaultdict(OrderedDict)
    open_by: Counter = Counter()

    class GuardedH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _addr: str = ""

        def connection_made(self, transport):  # type: ignore[override]
            super().connection_made(transport)
            self._addr = self.client[0] if self.client else ""
            open_by[self._addr] += 1
            self._arm()
            if len(self.connections) > max_connections:
                Counters.evicted += 1
                candidates = [a for a in waiting if waiting[a]]
                if not candidates:
                    return self._drop()
                top = max(candidates, key=open_by.__getitem__)
                next(iter(waiting[top]))._drop()

        def connection_lost(self, exc):
            self._forget()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self._deadline is not None and self.conn.their_state in _REQUEST_DONE:
                self._disarm()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._arm()           # before uvicorn handles a pipelined request that may follow
            super().on_response_complete()

        def _arm(self) -> None:
            self._disarm()
            waiting[self._addr][self] = None
            self._deadline = self.loop.call_later(header_timeout, self._timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            w = waiting.get(self._addr)
            if w is not None:
                w.pop(self, None)
                if not w:
                    del waiting[self._addr]

        def _forget(self) -> None:
            self._disarm()
            if self._addr in open_by:
                open_by[self._addr] -= 1
                if open_by[self._addr] <= 0:
                    del open_by[self._addr]
                self._addr = "\0gone"        # counted down once

        def _timed_out(self) -> None:
            self._deadline = None
            if self.conn.their_state not in _REQUEST_DONE:
                Counters.timed_out += 1
                self._drop()
            else:
                self._disarm()

        def _drop(self) -> None:
            self._forget()
            self.connections.discard(self)
            if not self.transport.is_closing():
                self.transport.abort()   # no lingering: the client gets a reset

    return GuardedH11


class RateLimited(logging.Filter):
    """At most one record of a given message per ``period_s`` (the first; the next one after the
    period says how many were dropped): a client sending garbage on purpose cannot grow the log
    by a line per request (uvicorn logs "Invalid HTTP request received." for each)."""

    def __init__(self, period_s: float = 60.0):
        super().__init__()
        self.period_s = period_s
        self._seen: dict[str, list] = {}     # message -> [last emitted (monotonic), dropped since]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:200]
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.period_s:
                seen[1] += 1
                return False
            dropped = seen[1] if seen else 0
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = [now, 0]
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like it in the last {self.period_s:.0f} s not logged)"
        return True


def quiet_uvicorn_logs() -> None:
    """uvicorn's per-request warnings, rate-limited (once per process)."""
    lg = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, RateLimited) for f in lg.filters):
        lg.addFilter(RateLimited())


def _ssl_min_tls12(config, default_factory) -> ssl.SSLContext:
    ctx = default_factory()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def api_options(config: Any) -> dict:
    """The ``[api]`` limits and TLS files (Config dataclass or dict), with defaults."""
    g = lambda k, d: rs.cfg(config, "api", k, d)  # noqa: E731
    return {"header_timeout_s": float(g("header_timeout_s", 10.0)), "keepalive_s": float(g("keepalive_s", 5.0)),
            "max_connections": int(g("max_connections", 256)), "backlog": int(g("backlog", 1024)),
            "tls_cert": g("tls_cert", "") or "", "tls_key": g("tls_key", "") or ""}


def uvicorn_config(app, opts: dict) -> uvicorn.Config:
    tls = bool(opts["tls_cert"])
    return uvicorn.Config(
        app, http=guarded_protocol(opts["header_timeout_s"], opts["max_connections"]), ws="none",
        loop="asyncio", lifespan="off", interface="asgi3", log_config=None, access_log=False,
        proxy_headers=False, server_header=False, date_header=True,
        backlog=opts["backlog"], timeout_keep_alive=opts["keepalive_s"], timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=MAX_HEAD,
        ssl_certfile=opts["tls_cert"] or None, ssl_keyfile=opts["tls_key"] or None,
        ssl_context_factory=_ssl_min_tls12 if tls else None)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = str(listen).rpartition(":")
    try:
        return (host or "127.0.0.1").strip("[]"), int(port)
    except ValueError:
        raise ValueError(f"[api] listen must be HOST:PORT, got {listen!r}") from None


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket (SO_REUSEADDR; IPv6 when ``host`` has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def public_url(config: Any, sock: socket.socket) -> str:
    """``[api] public_url``, or the address actually bound (https with TLS)."""
    configured = rs.cfg(config, "api", "public_url", "")
    if configured:
        return configured.rstrip("/")
    host, port = sock.getsockname()[:2]
    scheme = "https" if rs.cfg(config, "api", "tls_cert", "") else "http"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _local_metrics() -> str:
    from gateway.metrics import REGISTRY

    return REGISTRY.render() + _own_metrics()


def _own_metrics() -> str:
    return (f"# HELP nabd_api_connections_evicted_total API connections closed to make room (max_connections)\n"
            f"# TYPE nabd_api_connections_evicted_total counter\n"
            f"nabd_api_connections_evicted_total {Counters.evicted}\n"
            f"# HELP nabd_api_connections_timed_out_total API connections closed by header_timeout_s\n"
            f"# TYPE nabd_api_connections_timed_out_total counter\n"
            f"nabd_api_connections_timed_out_total {Counters.timed_out}\n")


# -- in this process (tests, tools) -------------------------------------------------------------

class ApiServer:
    """A running API in a thread of this process: ``.url``, ``.port``, ``.shutdown()``."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket, public: str,
                 tls: bool):
        self._server, self._thread, self._sock = server, thread, sock
        self.host, self.port = sock.getsockname()[:2]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"   # where it listens
        self.public_url = public                                            # what its links say

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


def start_api(config: Any, db, listen: str | None = None, metrics: Callable[[], str] | None = None) -> ApiServer:
    """Start the API in a background thread of this process (tests); ``listen`` overrides
    ``[api] listen``. ``nabd-gateway serve`` uses ``ApiProcess`` instead."""
    opts = api_options(config)
    host, port = parse_listen(listen or rs.cfg(config, "api", "listen", "127.0.0.1:8080"))
    sock = bind(host, port, opts["backlog"])
    url = public_url(config, sock)
    app = build_app(settings_from_config(config, url), db, metrics or _local_metrics, config)
    quiet_uvicorn_logs()
    server = uvicorn.Server(uvicorn_config(app, opts))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="nabd-api", daemon=True)
    t.start()
    end = time.monotonic() + 10
    while not server.started and t.is_alive() and time.monotonic() < end:
        time.sleep(0.01)
    if not server.started:
        raise RuntimeError("the API did not start")
    return ApiServer(server, t, sock, url, bool(opts["tls_cert"]))


# -- in its own process (nabd-gateway serve) ----------------------------------------------------

class ApiProcess:
    """The API in a child process: bind here, serve there, answer its metrics requests."""

    RESTART_DELAY_S = 1.0

    def __init__(self, config_path: str, config: Any):
        self.config_path, self.config = str(config_path), config
        opts = api_options(config)
        host, port = parse_listen(rs.cfg(config, "api", "listen", "127.0.0.1:8080"))
        self.sock = bind(host, port, opts["backlog"])
        self.url = public_url(config, self.sock)
        self.proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "ApiProcess":
        self._spawn()
        t = threading.Thread(target=self._watch, name="nabd-api-watch", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _spawn(self) -> None:
        parent, child = socket.socketpair()
        child.set_inheritable(True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.web.server", "--config", self.config_path,
             "--listen-fd", str(self.sock.fileno()), "--metrics-fd", str(child.fileno()), "--url", self.url],
            pass_fds=(self.sock.fileno(), child.fileno()), stdin=subprocess.PIPE, close_fds=True)
        child.close()
        t = threading.Thread(target=_answer_metrics, args=(parent,), name="nabd-api-metrics", daemon=True)
        t.start()

    def _watch(self) -> None:
        """Restart the API if it dies; the ingest goes on meanwhile."""
        while not self._stop.wait(0.5):
            if self.proc is not None and self.proc.poll() is not None and not self._stop.is_set():
                log.error("API process exited %s; restarting it", self.proc.returncode)
                if self._stop.wait(self.RESTART_DELAY_S):
                    return
                self._spawn()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdin:
            self.proc.stdin.close()
        self.sock.close()


def _answer_metrics(conn: socket.socket) -> None:
    """Parent side: one byte asks, the rendered registry (length-prefixed) answers; EOF ends."""
    from gateway.metrics import REGISTRY

    with conn:
        while True:
            try:
                if not conn.recv(1):
                    return
                body = REGISTRY.render().encode()
                conn.sendall(len(body).to_bytes(4, "big") + body)
            except OSError:
                return


class RemoteMetrics:
    """Child side: the ingest's metrics, asked at most once a second (a flood of /metrics
    requests costs the ingest one render a second)."""

    def __init__(self, conn: socket.socket, max_age_s: float = 1.0):
        self.conn, self.max_age_s = conn, max_age_s
        self.conn.settimeout(5)
        self._lock = threading.Lock()
        self._text, self._at = "", -1e9

    def __call__(self) -> str:
        with self._lock:
            if time.monotonic() - self._at > self.max_age_s:
                try:
                    self.conn.sendall(b"?")
                    n = int.from_bytes(_recv_exact(self.conn, 4), "big")
                    self._text = _recv_exact(self.conn, n).decode()
                    self._at = time.monotonic()
                except OSError as e:
                    return f"# ingest metrics unavailable: {type(e).__name__}\n" + _own_metrics()
            return self._text + _own_metrics()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("metrics channel closed")
        buf += chunk
    return bytes(buf)


def _exit_with_parent(server: uvicorn.Server) -> None:
    """The parent holds our stdin: EOF means it is gone, and so should we be."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    server.should_exit = True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.web.server",
                                description="the gateway's API process (started by nabd-gateway serve)")
    p.add_argument("--config", required=True)
    p.add_argument("--listen-fd", type=int, required=True)
    p.add_argument("--metrics-fd", type=int, required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gateway.config import load

    # below the ingest for the CPU: on a small gateway box (2 cores) a busy API must not take
    # the time the ingest needs to commit and acknowledge readings
    os.nice(API_NICE)
    cfg = load(args.config)
    sock = socket.socket(fileno=args.listen_fd)
    metrics = RemoteMetrics(socket.socket(fileno=args.metrics_fd))
    app = build_app(settings_from_config(cfg, args.url), cfg.database_handle(), metrics, cfg)
    quiet_uvicorn_logs()
    server = uvicorn.Server(uvicorn_config(app, api_options(cfg)))
    threading.Thread(target=_exit_with_parent, args=(server,), daemon=True).start()
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
