"""A network link that tests cut and restore: a TCP relay on loopback between a client (a clinic
broker's bridge) and a server (the regional broker). ``cut()`` drops every connection through it
and refuses new ones (connection refused, as a dead uplink router); ``restore()`` listens again on
the same port."""
from __future__ import annotations

import socket
import threading


class Link:
    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.host = host
        self.target = target_port
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._srv: socket.socket | None = None
        self.port = 0
        self.restore()

    def restore(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((self.host, self.port))
        srv.listen(64)
        self.port = srv.getsockname()[1]
        self._srv = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def cut(self) -> None:
        srv, self._srv = self._srv, None
        if srv is not None:
            try:
                srv.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            srv.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    close = cut

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                a, _ = srv.accept()
            except OSError:
                return
            try:
                b = socket.create_connection((self.host, self.target), timeout=5)
            except OSError:
                a.close()
                continue
            # the 5-s timeout is for connecting only: kept, it made every recv from the server
            # raise after 5 s without a message, and the relay cut a quiet bridge (at 10,000
            # devices, every bridge, again and again, while the region waited for its herd)
            b.settimeout(None)
            with self._lock:
                if self._srv is not srv:      # cut meanwhile
                    a.close()
                    b.close()
                    return
                self._conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(x, y), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
