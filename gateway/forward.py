"""Forwarder: sends the outbox to the national FHIR server and the observatory, until accepted.

Outbox rows are written by the store transaction (kind ``fhir``, ``partition_key`` = device id,
body ``{"reading_id": N}``: the reading's Observations are rendered from its signed bytes when the
row is sent; a body holding a transaction Bundle is sent as it is) and by the observatory's daily push (kind
``observatory``). The forwarder:

- sends each partition (one device, or the observatory) strictly in ``id`` order: a row is tried
  only when every earlier row of its partition has been accepted; partitions are independent, so
  one device whose bundles are refused does not hold the others back;
- adds the Device and Patient resources to each Bundle (conditional creates on their nabd
  identifiers, references rewritten to the entries), so that the national server resolves them;
- marks a row sent (``sent_at``) only after a 2xx whose transaction-response entries are all 2xx;
  never deletes; a failure (connection refused, timeout, 5xx, 4xx) records ``last_error`` and schedules
  the next attempt with exponential backoff and full jitter (base x 2^attempts, capped, times a
  random factor in [0.5, 1]): a server that is down delays forwarding, never loses it;
- a reading attached to a patient after it was sent (the console's inbox) gets a second row, body
  ``{"reading_id": N, "update": true}``: its Observations go as conditional updates, so the national
  record gains the patient; the row comes after the first in the device's partition, so the update
  never overtakes the create;
- re-sends are harmless: every entry is a POST with ``ifNoneExist`` on its identifier, so a bundle
  that the server applied but whose response was lost (timeout) creates nothing the second time.
  (Conditional create is not atomic under concurrent requests on many servers, which is why one
  gateway forwards one device's rows one at a time: no two bundles with the same identifiers race.)
- claims a row with a lease (``next_attempt_at`` moved past the HTTP timeout, guarded by its old
  value) so that two gateway processes never send the same row at the same time.
"""
from __future__ import annotations

import datetime as dt
import json
import random
import threading
import urllib.error
import urllib.request

from gateway import fhir
from gateway import recordstore as rs


class Forwarder:
    def __init__(self, config, db, *, timeout: float | None = None, backoff_base: float | None = None,
                 backoff_cap: float | None = None, batch: int = 200):
        self.db = db
        self.fhir_url = (rs.cfg(config, "fhir_forward", "url") or "").rstrip("/")
        self.fhir_enabled = bool(rs.cfg(config, "fhir_forward", "enabled", bool(self.fhir_url)))
        self.fhir_token = rs.cfg(config, "fhir_forward", "token")
        self.obs_endpoint = rs.cfg(config, "observatory", "endpoint")
        self.timeout = float(timeout if timeout is not None else rs.cfg(config, "fhir_forward", "timeout_s", 15.0))
        self.backoff_base = float(backoff_base if backoff_base is not None
                                  else rs.cfg(config, "fhir_forward", "backoff_base_s", 2.0))
        self.backoff_cap = float(backoff_cap if backoff_cap is not None
                                 else rs.cfg(config, "fhir_forward", "backoff_cap_s", 600.0))
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    # -- scheduling -------------------------------------------------------------------------------
    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failures (full jitter in [0.5, 1])."""
        delay = min(self.backoff_cap, self.backoff_base * (2 ** min(max(attempts - 1, 0), 30)))
        return delay * random.uniform(0.5, 1.0)

    def _kinds(self) -> list[str]:
        kinds = []
        if self.fhir_enabled and self.fhir_url:
            kinds.append("fhir")
        if self.obs_endpoint:
            kinds.append("observatory")
        return kinds

    def pending(self) -> int:
        with self.db.connect() as conn:
            return int(rs.rows(conn, "SELECT COUNT(*) AS n FROM outbox WHERE sent_at IS NULL")[0]["n"])

    def run_once(self, now: dt.datetime | None = None) -> dict:
        """One pass over every partition's head rows; returns {'sent': n, 'failed': n, 'waiting': n}."""
        now = now or rs.now_utc()
        kinds = self._kinds()
        stats = {"sent": 0, "failed": 0, "waiting": 0}
        if not kinds:
            return stats
        marks = ",".join("?" for _ in kinds)
        with self.db.connect() as conn:
            rows = rs.rows(conn, rs.q(self.db, f"SELECT id, kind, partition_key, attempts, next_attempt_at "
                                               f"FROM outbox WHERE sent_at IS NULL AND kind IN ({marks}) "
                                               f"ORDER BY id"), tuple(kinds))
        by_part: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            by_part.setdefault((r["kind"], r["partition_key"] or ""), []).append(r)
        for part_rows in by_part.values():
            for r in part_rows:
                if self._stop.is_set():
                    return stats
                due = rs.parse_time(r["next_attempt_at"])
                if due is not None and due > now:
                    stats["waiting"] += 1
                    break  # keep the partition's order: nothing after a row that is not due
                if not self._claim(r, now):
                    break  # another process holds it
                ok = self._deliver(r["id"])
                if ok:
                    stats["sent"] += 1
                else:
                    stats["failed"] += 1
                    break
        self.sent += stats["sent"]
        self.failed += stats["failed"]
        self._publish_pending()
        return stats

    def _publish_pending(self) -> None:
        """Set the ``nabd_forward_pending`` gauge (rows not yet accepted)."""
        try:
            from gateway.metrics import REGISTRY
        except ImportError:
            return
        gauge = REGISTRY.get("nabd_forward_pending")
        if gauge is not None:
            gauge.set(self.pending())

    def _claim(self, r: dict, now: dt.datetime) -> bool:
        lease = rs.to_iso(now + dt.timedelta(seconds=self.timeout + 30))
        op = "IS" if self.db.dialect == "sqlite" else "IS NOT DISTINCT FROM"
        old = r["next_attempt_at"]
        with self.db.connect() as conn:
            n = rs.execute(conn, rs.q(self.db, f"UPDATE outbox SET next_attempt_at = ? WHERE id = ? "
                                               f"AND sent_at IS NULL AND next_attempt_at {op} ?"),
                           (lease, r["id"], old))
            conn.commit()
        return n == 1

    # -- delivery ---------------------------------------------------------------------------------
    def _deliver(self, row_id) -> bool:
        with self.db.connect() as conn:
            row = rs.rows(conn, rs.q(self.db, "SELECT id, kind, partition_key, body, attempts FROM outbox "
                                              "WHERE id = ?"), (row_id,))[0]
            try:
                if row["kind"] == "fhir":
                    url, payload, headers = self._fhir_request(conn, row)
                else:
                    url, payload, headers = self._observatory_request(row)
                error = None
            except Exception as e:  # a row we cannot build stays, with the reason
                error = f"cannot build request: {type(e).__name__}: {e}"
        if error is None:
            error = self._post(url, payload, headers, expect_transaction=row["kind"] == "fhir")
        now = rs.now_utc()
        with self.db.connect() as conn:
            if error is None:
                rs.execute(conn, rs.q(self.db, "UPDATE outbox SET sent_at = ?, last_error = NULL, "
                                               "attempts = ? WHERE id = ?"),
                           (rs.to_iso(now), int(row["attempts"] or 0) + 1, row_id))
            else:
                attempts = int(row["attempts"] or 0) + 1
                nxt = now + dt.timedelta(seconds=self.backoff(attempts))
                rs.execute(conn, rs.q(self.db, "UPDATE outbox SET attempts = ?, next_attempt_at = ?, "
                                               "last_error = ? WHERE id = ?"),
                           (attempts, rs.to_iso(nxt), error[:1000], row_id))
            conn.commit()
        return error is None

    def _fhir_request(self, conn, row: dict) -> tuple[str, bytes, dict]:
        body = rs.load_json(row["body"])
        if "reading_id" in body:  # written by the ingest: the reading's Observations, rendered now
            resources = rs.reading_observations(self.db, conn, int(body["reading_id"]))
            if not resources:
                raise ValueError(f"reading {body['reading_id']} has no observations")
        else:  # a stored transaction Bundle
            resources = [e["resource"] for e in body.get("entry", [])]
        extra: dict[str, dict] = {}
        for res in resources:
            for key in ("device", "subject"):
                ref = (res.get(key) or {}).get("reference", "")
                kind, _, ident = ref.partition("/")
                if kind == "Device" and ref not in extra:
                    info = rs.device_info(self.db, conn, ident) or {}
                    extra[ref] = fhir.device_resource(ident, info)
                elif kind == "Patient" and ref not in extra:
                    extra[ref] = fhir.patient_resource(ident)
        # entries already in the body (a bundle that carries its own Device) are kept as they are
        present = {fhir.business_identifier(r) for r in resources}
        resources += [r for r in extra.values() if fhir.business_identifier(r) not in present]
        out = fhir.transaction_bundle(resources, update_observations=bool(body.get("update")))
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        if self.fhir_token:
            headers["Authorization"] = f"Bearer {self.fhir_token}"
        return self.fhir_url, json.dumps(out, separators=(",", ":")).encode(), headers

    def _observatory_request(self, row: dict) -> tuple[str, bytes, dict]:
        body = rs.load_json(row["body"])
        return self.obs_endpoint, json.dumps(body, separators=(",", ":")).encode(), \
            {"Content-Type": "application/json", "Idempotency-Key": body.get("key", str(row["id"]))}

    def _post(self, url: str, payload: bytes, headers: dict, expect_transaction: bool) -> str | None:
        """None when accepted, else a short error (never the payload: it may name a patient token)."""
        req = urllib.request.Request(url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            return f"HTTP {e.code}: {detail}"
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            return f"unreachable: {getattr(e, 'reason', e)}"
        if not 200 <= status < 300:
            return f"HTTP {status}"
        if expect_transaction:
            try:
                resp_bundle = json.loads(text)
                bad = [e.get("response", {}).get("status", "") for e in resp_bundle.get("entry", [])
                       if not str(e.get("response", {}).get("status", "")).startswith("2")]
            except (ValueError, AttributeError):
                return "response is not a JSON Bundle"
            if resp_bundle.get("type") != "transaction-response":
                return f"response is a {resp_bundle.get('type')!r} bundle, not transaction-response"
            if bad:
                return f"entries refused: {bad[:5]}"
        return None

    # -- thread loop --------------------------------------------------------------------------------
    def start(self, interval: float = 1.0) -> "Forwarder":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="nabd-forward", daemon=True)
        self._thread.start()
        return self

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                stats = self.run_once()
            except Exception:  # database briefly unavailable: try again next round
                stats = {"sent": 0}
            if not stats["sent"]:
                self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.timeout + 5)
            self._thread = None
