"""The batch worker: stores batches of MQTT messages on one long-lived database connection.

``take_batch`` and ``wait_drained`` are how the ingest's writer thread (gateway/ingest.py) and the
status thread collect batches from their queues and let them empty at a graceful stop.

Used by the readings' store process (``writer.BatchStore``) and the status thread
(``status.StatusWorker``). A subclass says how a batch is stored (``store_batch``: one
transaction, committed on return) and how one message that breaks the store is quarantined
(``quarantine_error``); the worker does the rest, the same for both:

- a database error (locked, connection lost: nothing was committed) keeps the batch
  unacknowledged and retries it on a fresh connection, with backoff from 50 ms to 2 s (an outage
  is logged once when it begins and once when it clears, not at every retry);
- anything else is a bug or a message the store cannot handle: the batch is retried one message
  at a time, and the message that still fails is quarantined (``malformed``, "gateway error")
  instead of blocking the queue.
"""
from __future__ import annotations

import collections
import logging
import queue
import re
import threading
import time
from typing import Any, Callable

from gateway.db import Database
from gateway.store import BatchResult, Message


def db_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the database is unavailable now": retry, never quarantine."""
    import sqlite3

    from gateway.db import DatabaseError

    errs: list[type[BaseException]] = [sqlite3.OperationalError, DatabaseError]
    try:
        import psycopg

        errs += [psycopg.OperationalError, psycopg.InterfaceError]
    except ImportError:
        pass
    return tuple(errs)


MAX_RETRY_S = 2.0        # the longest wait between two attempts while the database is unavailable
OUTAGE_REMIND_S = 60.0   # an outage still going on is logged again this often


def one_line(e: BaseException) -> str:
    """An exception as one log line: psycopg's messages span lines (libpq's hint); a URL's
    password, should a driver ever quote one, is masked."""
    return re.sub(r"://([^:@/\s]+):[^@/\s]*@", r"://\1:***@", " ".join(str(e).split())) or type(e).__name__


def take_batch(q: queue.Queue, batch_max: int, wait_s: float = 0.0) -> list:
    """Up to ``batch_max`` messages from ``q``: the first within 0.1 s (else an empty list, so
    the caller can look at its stop flag), then what is queued, waiting for more up to ``wait_s``
    after the first arrived."""
    try:
        first = q.get(timeout=0.1)
    except queue.Empty:
        return []
    batch = [first]
    deadline = time.monotonic() + wait_s
    while len(batch) < batch_max:
        try:
            batch.append(q.get_nowait())
            continue
        except queue.Empty:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            batch.append(q.get(timeout=left))
        except queue.Empty:
            break
    return batch


class Handoff:
    """The bounded FIFO between paho's network thread (``put``) and one batcher thread (``take``),
    for the ingest's readings. A ``queue.Queue`` takes a lock and notifies a condition on every
    put and get; here ``put`` is a ``deque.append`` (atomic under the GIL) and wakes the batcher
    only when it sleeps on an empty queue. ``put`` blocks (polling every ms) while ``maxsize``
    items wait: backpressure on the network thread, never a drop."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._q: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._sleeping = False

    def put(self, item: Any) -> None:
        q = self._q
        while len(q) >= self.maxsize:
            time.sleep(0.001)
        q.append(item)
        if self._sleeping:  # the batcher announced it sleeps before it looked at the queue
            self._sleeping = False
            self._wake.set()

    def take(self, batch_max: int, wait_s: float = 0.0) -> list:
        """Up to ``batch_max`` items: the first within 0.1 s (else [], so the caller can look at
        its stop flag); with fewer than ``batch_max`` queued, waits ``wait_s`` once for more."""
        q = self._q
        if not q:
            self._sleeping = True  # before looking: a put after this sees it and wakes us
            if not q:
                self._wake.wait(0.1)
            self._sleeping = False
            self._wake.clear()
            if not q:
                return []
        if len(q) < batch_max and wait_s > 0:
            time.sleep(wait_s)
        pop = q.popleft
        return [pop() for _ in range(min(len(q), batch_max))]

    def qsize(self) -> int:
        return len(self._q)

    def empty(self) -> bool:
        return not self._q


def wait_drained(q: "queue.Queue | Handoff", thread: threading.Thread | None, end: float) -> None:
    """Wait until ``thread`` has taken everything from ``q``, until ``end`` (time.monotonic()), or
    until the thread has died, whichever comes first."""
    while not q.empty() and time.monotonic() < end and thread is not None and thread.is_alive():
        time.sleep(0.02)


class BatchWorker:
    """One batch at a time on one connection (``_conn``, opened on first use and after an error)."""

    log = logging.getLogger("nabd.gateway.worker")
    what = "message(s)"   # in log lines: what a batch holds

    def __init__(self, db: Database):
        self.db = db
        self._conn: Any = None
        self._errors = db_errors()
        self._outage: list | None = None   # [since (monotonic s), retries, last logged] while failing

    # -- what a subclass defines ------------------------------------------------------------------
    def store_batch(self, conn: Any, batch: list[Message]) -> BatchResult:
        """Store ``batch`` in one transaction, committed on return (rolled back on an exception)."""
        raise NotImplementedError

    def quarantine_error(self, conn: Any, m: Message) -> BatchResult:
        """Quarantine ``m``, on which ``store_batch`` failed, in a transaction of its own."""
        raise NotImplementedError

    def opened(self, conn: Any) -> None:
        """Called with each new connection before its first batch."""

    # -- the loop ---------------------------------------------------------------------------------
    def connection(self) -> Any:
        if self._conn is None:
            self._conn = self.db.open()
            self.opened(self._conn)
        return self._conn

    def commit(self, batch: list[Message], stopping: Callable[[], bool] = lambda: False) -> BatchResult | None:
        """Store ``batch``; returns after its commit (retrying while the database is unavailable).
        None only when ``stopping()`` says the process is shutting down and the database stayed
        unavailable for more than a second: nothing of the batch was acknowledged, so the broker
        redelivers it to the next session.

        An outage (PostgreSQL restarted, the network to it down) is logged once when it starts,
        again at most every ``OUTAGE_REMIND_S`` while it lasts, and once when a batch commits
        again, with its length: not a line per retry."""
        delay = 0.05
        while True:
            try:
                result = self._process(self.connection(), batch)
            except self._errors as e:
                self._failed(e, len(batch))
                self.close()
                if stopping() and delay > 1.0:
                    return None
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            if self._outage is not None:
                self._recovered()
            return result

    def _failed(self, e: BaseException, n: int) -> None:
        now = time.monotonic()
        if self._outage is None:
            self._outage = [now, 0, now]          # since, retries, last logged
            self.log.error("database error: %s; %d %s kept unacknowledged, retrying every %g s at most "
                           "(logged again when it clears)", one_line(e), n, self.what, MAX_RETRY_S)
            return
        self._outage[1] += 1
        if now - self._outage[2] >= OUTAGE_REMIND_S:
            self._outage[2] = now
            self.log.error("database still unavailable after %.0f s: %s; nothing acknowledged meanwhile",
                           now - self._outage[0], one_line(e))

    def _recovered(self) -> None:
        assert self._outage is not None
        since, retries, _ = self._outage
        self._outage = None
        self.log.warning("database available again after %.1f s (%d retries); storing the waiting %s",
                         time.monotonic() - since, retries, self.what)

    def _process(self, conn: Any, batch: list[Message]) -> BatchResult:
        try:
            return self.store_batch(conn, batch)
        except self._errors:
            raise
        except Exception:
            if len(batch) == 1:
                self.log.exception("storing failed on one message; quarantining it")
                return self.quarantine_error(conn, batch[0])
            out = BatchResult()
            for m in batch:  # isolate the message that breaks the store
                r = self._process(conn, [m])
                out.verdicts += r.verdicts
                out.acks += r.acks
                for dev, k in r.suppressed.items():
                    out.suppressed[dev] = out.suppressed.get(dev, 0) + k
            return out

    def close(self) -> None:
        """Close the connection (the next batch opens a new one)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = None
