"""A tiny Prometheus registry: counters (with labels) and gauges, rendered as text format 0.0.4.

``REGISTRY`` is the process-wide registry; ``/metrics`` (gateway/web/ops.py; the API process asks the ingest process for it) serves ``REGISTRY.render()``.
Thread-safe: the writer thread, the network thread and the API thread all update it.
"""
from __future__ import annotations

import threading


def _fmt_labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    esc = [str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values]
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, esc, strict=True)) + "}"


def _fmt_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labelnames = name, help, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        if not labels:
            self._values[()] = 0.0

    def _key(self, labels: dict) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def value(self, **labels) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            items = sorted(self._values.items())
        for key, v in items:
            lines.append(f"{self.name}{_fmt_labels(self.labelnames, key)} {_fmt_value(v)}")
        return "\n".join(lines)


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        k = self._key(labels)
        with self._lock:
            self._values[k] = self._values.get(k, 0.0) + amount


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        k = self._key(labels)
        with self._lock:
            self._values[k] = float(value)

    def inc(self, amount: float = 1.0, **labels) -> None:
        k = self._key(labels)
        with self._lock:
            self._values[k] = self._values.get(k, 0.0) + amount


class Registry:
    def __init__(self):
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, m: _Metric) -> _Metric:
        with self._lock:
            old = self._metrics.get(m.name)
            if old is not None:
                if type(old) is not type(m) or old.labelnames != m.labelnames:
                    raise ValueError(f"metric {m.name} already registered differently")
                return old
            self._metrics[m.name] = m
            return m

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        return self._add(Counter(name, help, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels))  # type: ignore[return-value]

    def get(self, name: str) -> _Metric | None:
        return self._metrics.get(name)

    def render(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
        return "\n".join(m.render() for m in metrics) + "\n"


REGISTRY = Registry()

READINGS_ACCEPTED = REGISTRY.counter("nabd_readings_accepted_total", "Readings verified and committed")
READINGS_DUPLICATE = REGISTRY.counter("nabd_readings_duplicate_total",
                                      "Readings received again with the same bytes (acknowledged, not stored)")
QUARANTINE = REGISTRY.counter("nabd_quarantine_total", "Messages rejected into quarantine, by reason", ("reason",))
QUARANTINE_SUPPRESSED = REGISTRY.counter(
    "nabd_quarantine_suppressed_total",
    "Rejected messages past their device's quarantine budget: counted, not kept (a device flooding)", ("device",))
QUEUE_DEPTH = REGISTRY.gauge("nabd_ingest_queue_depth", "Messages waiting between the network thread and the writer")
FORWARD_PENDING = REGISTRY.gauge("nabd_forward_pending", "Outbox rows not yet accepted by the national FHIR server")
BATCHES = REGISTRY.counter("nabd_ingest_batches_total", "Transactions committed by the ingest writer")
ACKS_SENT = REGISTRY.counter("nabd_acks_sent_total", "Signed acknowledgements published to devices")
