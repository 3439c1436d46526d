"""The store's writer: verify + store batches in a child process, acknowledge in the parent.

Why a process: the network thread (paho, pure Python) and verification/storage (also mostly
Python) compete for one GIL in one process; profiled in a drain, the writer held the GIL ~3/4 of
the time and the network thread waited, so the gateway ran at a fraction of what paho alone reads.
In a child process the two run on two cores.

- ``BatchStore`` does the work of one batch on its own connection: ``Store.process`` (verify and
  store in ONE transaction), as a ``worker.BatchWorker``: retried with backoff on a fresh
  connection after a database error (locked, connection lost: nothing was committed, nothing is
  acknowledged meanwhile); a message that makes the store raise anything else is isolated and
  quarantined (``malformed``, "gateway error") instead of blocking the queue.
- ``ProcessWriter`` (parent side) sends each batch of ``Pending`` tuples over a pipe (``Link``)
  to the child (``multiprocessing`` spawn context) and gets back, only after the commit, the
  verdict kinds and the signed device acks; its callback then acknowledges the messages to the
  broker on the connection they came from. At most ``max_inflight`` (2) batches are in the child:
  one being stored, the next waiting in the pipe; the batcher takes a slot (``reserve``) before it
  collects a batch, so what arrives meanwhile makes the next batch larger rather than queueing
  small ones. Beyond that the bounded queue fills and paho stops reading: backpressure, never a
  drop.
- The child dies (bug, OOM kill): the parent starts a new one and sends it every batch not yet
  answered, in order. Nothing of those was acknowledged; whatever the dead child had committed
  comes back as duplicates and is acknowledged then. The parent dies: the child reads EOF and
  exits (a batch in progress commits or rolls back; either way it was not acknowledged).
- The child ignores SIGINT/SIGTERM: the parent drains it (``stop``) as part of its graceful stop.
"""
from __future__ import annotations

import collections
import datetime as dt
import fcntl
import logging
import marshal
import multiprocessing
import signal
import threading
import time
from typing import Any, Callable, Tuple

from gateway import jws
from gateway.db import Database
from gateway.quarantine import Rejected
from gateway.store import BatchResult, Message, Store
from gateway.verify import Verdict, reject
from gateway.worker import BatchWorker

log = logging.getLogger("nabd.gateway.writer")
UTC = dt.timezone.utc

# One received reading as the ingest hands it on: (topic, raw bytes, receipt time as a Unix time in
# s, retain flag, mid, qos, connection epoch, SHA-256 hex of the raw bytes, the parsed JWS as
# ``wire_parsed`` gives it or None). A plain tuple of plain values, sent as is to the store process
# (a datetime there cost the network process 1.4 us per message to pickle); the store process uses
# the first four, the digest and the parse, the ingest's results thread mid, qos and epoch.
Pending = Tuple[str, bytes, float, bool, int, int, int, str, Any]


def wire_parsed(p: jws.Compact | Verdict) -> tuple:
    """``verify.parse``'s result as plain values for the link: (payload, device, key version,
    length of the signing input, signature) for a token, (reason, detail, device) for a reject.

    Why the network process parses: after its fast path it used ~19 us of CPU per reading against
    the store process's ~49 (the bottleneck); base64url, the JSON with its duplicate-member check
    and the header check are ~14 us of the store's work that need no key and no database. What
    crosses is the parsed payload (rebuilt by ``marshal`` in ~3.6 us), not the JSON text. Side by
    side in bench.gateway's drains (7 pairs, 2026-11-30): store process 49.0 -> 43.4 us a
    reading, network process 18.7 -> 30.6, ``ingest_over_raw`` median 0.936 -> 0.976. The store
    process still verifies the signature, over ``raw[:length]``: the bytes received."""
    if isinstance(p, jws.Compact):
        return (p.payload, p.kid_device, p.kid_version, len(p.signing_input), p.signature)
    return (p.reason, p.detail, p.device)


def unwire_parsed(t: tuple, raw: bytes) -> jws.Compact | Verdict:
    if len(t) == 5:
        return jws.Compact(raw[:t[3]], t[4], t[0], t[1], t[2])
    return reject(t[0], t[1], t[2])


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Checkpointer:
    """SQLite: copies the WAL into the database file from a thread of its own (PASSIVE checkpoints,
    every ``every`` s), instead of the committing connection doing it inside a commit every 1,000
    pages (``wal_autocheckpoint``, turned off on the writer's connection). sqlite releases the GIL
    while it copies, so the copy runs beside the next batch's verification. A PASSIVE checkpoint
    never blocks the writer or readers; one that fails is logged and retried, and the WAL grows
    meanwhile (nothing is lost: the WAL is durable)."""

    def __init__(self, db, every: float = 0.2):
        self.db, self.every = db, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nabd-wal-checkpoint", daemon=True)

    def start(self) -> "Checkpointer":
        self._thread.start()
        return self

    def _loop(self) -> None:
        conn = None
        while not self._stop.wait(self.every):
            try:
                conn = conn or self.db.open()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except Exception as e:  # noqa: BLE001 - logged and retried on a fresh connection
                log.error("WAL checkpoint failed, retrying: %s", e)
                conn = None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class BatchStore(BatchWorker):
    """One batch at a time on one long-lived connection (used inside the writer process)."""

    log = log

    def __init__(self, db_url: str, kek: bytes, forward: bool, skew: int, quarantine: Any = None):
        super().__init__(Database(db_url))
        self.store = Store(self.db, kek, forward=forward, skew=skew, quarantine=quarantine)
        self._checkpointer = Checkpointer(self.db).start() if self.db.dialect == "sqlite" else None

    def opened(self, conn: Any) -> None:
        if self._checkpointer is not None:
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the Checkpointer does it

    def store_batch(self, conn: Any, batch: list[Message]) -> BatchResult:
        return self.store.process(conn, batch)

    def quarantine_error(self, conn: Any, m: Message) -> BatchResult:
        v = reject("malformed", "gateway error while storing this message (see the gateway log)")
        self.db.begin(conn)
        suppressed = self.store.quarantine.file(conn, [Rejected(m.received_at, v.reason, m.topic, None, m.raw,
                                                                v.detail)])
        conn.commit()
        return BatchResult([v], [], suppressed)

    def shutdown(self) -> None:
        self.close()
        if self._checkpointer is not None:
            self._checkpointer.stop()


def _child(conn, db_url: str, kek: bytes, forward: bool, skew: int, quarantine: Any, log_level: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    bs = BatchStore(db_url, kek, forward, skew, quarantine)
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if msg is None:
                return
            n, items = msg
            fromts = dt.datetime.fromtimestamp
            # positional (topic, raw, received_at, mid, qos, epoch, t0, retain, sha256, parsed):
            # keywords cost more per message
            res = bs.commit([Message(it[0], it[1], fromts(it[2], UTC), 0, 1, 0, 0.0, it[3], it[7],
                                     None if it[8] is None else unwire_parsed(it[8], it[1])) for it in items])
            assert res is not None  # commit gives up only when told the process is stopping
            try:
                conn.send((n, [(v.kind, v.reason) for v in res.verdicts], res.acks, res.suppressed))
            except OSError:
                return
    finally:
        bs.shutdown()


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


# the pipes' size: /proc/sys/fs/pipe-max-size (Linux default 1 MiB), at most 4 MiB. A batch of
# 1,024 readings is ~1.1 MB with their parsed payloads: all but the last tenth is in the pipe when
# the store process asks for it, the rest follows as it reads (a blocked write continues in the
# kernel, without the sender's GIL)
PIPE_BYTES = min(_pipe_max(), 4 << 20)


class Link:
    """One end of the parent/store-process link: two one-way pipes (``send`` on one, ``recv`` on
    the other), each as large as the system lets an unprivileged process make it.

    Why not ``multiprocessing.Pipe()``'s socket pair: its buffer (~208 KB) holds a quarter of a
    1,024-reading batch, so the sender wrote a batch in pieces, each waiting for the store process
    to read the one before, and each restart of the sender's write waited for the network
    process's GIL (paho's thread holds it, up to the 5-ms switch interval): the store process, the
    bottleneck, sat in ``recv`` 1-23 ms a batch; with 1-MiB pipes, 0.5-2 ms."""

    def __init__(self, rx, tx):
        self.rx, self.tx = rx, tx

    @classmethod
    def pair(cls, ctx) -> tuple["Link", "Link"]:
        down_rx, down_tx = ctx.Pipe(duplex=False)
        up_rx, up_tx = ctx.Pipe(duplex=False)
        for c in (down_tx, up_tx):
            if PIPE_BYTES > 65536 and hasattr(fcntl, "F_SETPIPE_SZ"):  # never below the default
                try:
                    fcntl.fcntl(c.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
                except OSError as e:  # over the user's pipe quota: the default size works, slower
                    log.debug("pipe size %d refused (%s); keeping the default", PIPE_BYTES, e)
        return cls(up_rx, down_tx), cls(down_rx, up_tx)

    # marshal, not pickle: the same interpreter at both ends and only plain values cross (tuples,
    # lists, dicts, text, bytes, numbers, None); a batch of parsed readings is ~3x faster to write
    # (2.3 against 7.2 us a reading). Anything else raises ValueError in ``send``.
    def send(self, obj: Any) -> None:
        self.tx.send_bytes(marshal.dumps(obj))

    def recv(self) -> Any:
        return marshal.loads(self.rx.recv_bytes())

    def close(self) -> None:
        for c in (self.rx, self.tx):
            try:
                c.close()
            except OSError:
                pass


class ProcessWriter:
    """Parent side. ``on_result(batch, BatchResult)`` runs on the reader thread after each commit.

    Three threads touch the pipe and none waits on another while it blocks on it: the sender
    thread alone writes (in submission order; after a restart every unanswered batch again, from
    the first), the reader thread alone reads, and ``submit`` only queues. A batch and its result
    are each larger than the pipe's socket buffer (1,024 readings ~0.6 MB one way, their signed
    acks ~0.4 MB the other), so each side must keep reading while the other writes: ``submit`` once
    held the lock while its send waited for the store process, which waited to send a result to
    the reader, which waited for that lock (the gateways of bench fleet's 3,000-device herd, alive
    and storing nothing; tests/gateway/test_writer_pipe.py)."""

    def __init__(self, db_url: str, kek: bytes, *, forward: bool, skew: int,
                 on_result: Callable[[list[Pending], BatchResult], None], max_inflight: int = 2,
                 quarantine: Any = None):
        self._args = (db_url, kek, forward, skew, quarantine)
        self.on_result = on_result
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = threading.Semaphore(max_inflight)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inflight: collections.deque[tuple[int, list[Pending]]] = collections.deque()
        self._n = 0
        self._sent = 0          # the highest batch number sent to the current child
        self._closing = False
        self._proc: Any = None
        self._pipe: Any = None
        self._reader: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> "ProcessWriter":
        with self._lock:
            self._spawn()
        self._reader = threading.Thread(target=self._read_loop, name="nabd-writer-results", daemon=True)
        self._reader.start()
        self._sender = threading.Thread(target=self._send_loop, name="nabd-writer-send", daemon=True)
        self._sender.start()
        return self

    def _spawn(self) -> None:
        parent, child = Link.pair(self._ctx)
        level = logging.getLogger().getEffectiveLevel()
        self._proc = self._ctx.Process(target=_child, args=(child, *self._args, level), name="nabd-store",
                                       daemon=True)
        self._proc.start()
        child.close()
        self._pipe = parent
        self._sent = 0      # a new child: every batch in flight goes to it again, in order

    def reserve(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` s) until the child can take another batch; True when it can.
        The caller then ``submit``s with ``reserved=True`` or gives the slot back (``release``)."""
        return self._slots.acquire(timeout=timeout)

    def release(self) -> None:
        self._slots.release()

    def submit(self, batch: list[Pending], reserved: bool = False) -> None:
        """Hand a batch to the child; blocks while ``max_inflight`` batches are unanswered
        (``reserved``: the caller holds a slot from ``reserve``)."""
        if not reserved:
            self._slots.acquire()
        with self._lock:
            self._n += 1
            self._inflight.append((self._n, batch))
            self._wake.notify_all()

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    nxt = next(((n, b) for n, b in self._inflight if n > self._sent), None)
                    if nxt is not None or self._closing:
                        break
                    self._wake.wait()
                pipe = self._pipe
                if nxt is None:         # closing, everything sent: tell the child to end
                    msg: Any = None
                else:
                    msg = nxt
            try:
                pipe.send(msg)          # blocks while the child is busy; no lock held
            except OSError:
                # the child is gone: the reader restarts it, and the batches go again from the first
                with self._lock:
                    while self._pipe is pipe and not self._closing:
                        self._wake.wait()
                    if self._closing:
                        return
                continue
            if msg is None:
                return
            with self._lock:
                if self._pipe is pipe:
                    self._sent = msg[0]

    def _read_loop(self) -> None:
        while True:
            pipe = self._pipe
            try:
                n, kinds, acks, suppressed = pipe.recv()
            except (EOFError, OSError):
                if self._closing:
                    return
                self._restart(pipe)
                continue
            with self._lock:
                m, batch = self._inflight.popleft()
            assert m == n, (m, n)
            self._slots.release()
            verdicts = [Verdict(k, r) for k, r in kinds]
            try:
                self.on_result(batch, BatchResult(verdicts, acks, suppressed))
            except Exception:
                log.exception("acknowledging a committed batch failed")

    def _restart(self, dead_pipe) -> None:
        with self._lock:
            if self._pipe is not dead_pipe:
                return
            code = self._proc.exitcode if self._proc is not None else None
            log.error("store process ended (exit code %s); restarting it with %d unacknowledged batch(es)",
                      code, len(self._inflight))
            try:
                dead_pipe.close()
            except OSError:
                pass
            if self._proc is not None:
                self._proc.join(timeout=5)
            self.restarts += 1
            time.sleep(min(5.0, 0.1 * self.restarts))
            self._spawn()
            self._wake.notify_all()

    def pending(self) -> int:
        with self._lock:
            return len(self._inflight)

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted batch is committed and acknowledged."""
        end = time.monotonic() + timeout
        while self.pending() and time.monotonic() < end:
            time.sleep(0.01)
        return not self.pending()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closing = True        # the sender sends what is queued, then None: the child ends
            self._wake.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=timeout)
        if self._proc is not None:
            self._proc.join(timeout=timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=5)
        try:
            self._pipe.close()
        except OSError:
            pass
        if self._reader is not None:
            self._reader.join(timeout=2)
