"""The server's counters, gauges and latency histogram, rendered in Prometheus' text format (0.0.4).

A handful of series do not need a client library: `Metrics` keeps them under one lock (the
request handlers and the delivery worker update them from different threads) and `render()` writes
the exposition text. Gauges are read when scraped, from callables (the outbox depth is a query).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..mapping_set import PROGRAM

PREFIX = PROGRAM.replace("-", "_")
# Seconds from the request's receipt to the destination's acceptance.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

COUNTERS = {
    "http_requests_total": "Tracking API requests answered, by endpoint and status.",
    "messages_received_total": "Messages acknowledged: stored in the outbox before the answer.",
    "events_delivered_total": "Events whose requests the destination accepted.",
    "events_rejected_total": "Events the mapping set rejected (recorded with their reason, never sent).",
    "events_skipped_total": "Events no rule of the mapping set sends (recorded with the reason).",
    "events_duplicate_total": "Messages whose messageId was already recorded within the de-duplication window "
                              "(recorded as skipped, never sent again).",
    "events_dead_lettered_total": "Events given up on, kept in the dead letters with the answer that condemned them.",
    "connections_closed_total": "Connections the server closed to protect itself, by reason: head_timeout "
                                "(no request head in time), head_too_large (a head over 16 KiB: answered 400), "
                                "evicted_idle (room made under the cap), over_capacity (over the cap with none idle: "
                                "answered 503 busy, except /health and /metrics).",
    "retries_total": "Destination requests sent again after a retryable failure.",
    "rate_limited_total": "Destination answers with status 429.",
    "job_polls_total": "Looks at the state of an asynchronous job the destination accepted.",
    "deliverer_restarts_total": "Times `serve` started its deliverer process again after it died (a state folder).",
    "lease_takeovers_total": "Partitions this process took over from a worker whose lease had expired (a shared "
                             "outbox).",
}
GAUGES = {
    "outbox_depth": "Events in the outbox not yet delivered, rejected or dead-lettered.",
    "up": "1 while the server and its delivery worker are running.",
    "backlog": "Requests pending in the outbox, by tenant and lane (a shared outbox: all processes' backlog).",
    "leases_held": "Partitions (tenant, lane) this process delivers under a lease, by tenant.",
}
# A labelled gauge's reader: one value per series, each named by its labels.
Series = dict[tuple[tuple[str, str], ...], float]
HISTOGRAM = ("delivery_latency_seconds", "Seconds from an event's receipt to its delivery.")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + text + "}" if text else ""


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _read(reader: Callable[[], float]) -> float:
    try:
        return float(reader())
    except Exception:  # a scrape must not fail because one value cannot be read
        return math.nan


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1


class Metrics:
    """Thread-safe counters by name and labels, gauges read on scrape, one latency histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {name: {} for name in COUNTERS}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._gauge_series: dict[str, Callable[[], Series]] = {}
        self._readers: dict[str, Callable[[], float]] = {}
        self._latency = _Histogram(LATENCY_BUCKETS)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        if name not in COUNTERS:
            raise KeyError(f"unknown counter {name!r}")
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0) + amount

    def value(self, name: str, **labels: str) -> float:
        """One counter's value (the sum over all labels when none are given)."""
        with self._lock:
            series = self._counters[name]
            if labels:
                return series.get(tuple(sorted(labels.items())), 0)
            read = self._readers.get(name)
        return float(read()) if read is not None else sum(series.values())

    def counter_from(self, name: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere (e.g. the delivery worker's statistics), read when scraped."""
        if name not in COUNTERS:
            raise KeyError(f"unknown counter {name!r}")
        self._readers[name] = read

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency.observe(max(0.0, seconds))

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        if name not in GAUGES:
            raise KeyError(f"unknown gauge {name!r}")
        self._gauges[name] = read

    def gauge_series(self, name: str, read: Callable[[], Series]) -> None:
        """A gauge with labels: `read()` gives each series' labels and value, when scraped."""
        if name not in GAUGES:
            raise KeyError(f"unknown gauge {name!r}")
        self._gauge_series[name] = read

    def render(self) -> str:
        lines: list[str] = []
        read = {name: _read(reader) for name, reader in self._readers.items()}
        with self._lock:
            for name, help_text in COUNTERS.items():
                full = f"{PREFIX}_{name}"
                lines += [f"# HELP {full} {help_text}", f"# TYPE {full} counter"]
                series = {(): read[name]} if name in read else (self._counters[name] or {(): 0})
                for key, value in sorted(series.items()):
                    lines.append(f"{full}{_labels(key)} {_number(value)}")
            hist_name, hist_help = HISTOGRAM
            full = f"{PREFIX}_{hist_name}"
            lines += [f"# HELP {full} {hist_help}", f"# TYPE {full} histogram"]
            for bound, count in zip(self._latency.buckets, self._latency.counts, strict=True):
                lines.append(f"{full}_bucket{_labels([('le', _number(bound))])} {count}")
            lines.append(f'{full}_bucket{{le="+Inf"}} {self._latency.count}')
            lines.append(f"{full}_sum {_number(self._latency.total)}")
            lines.append(f"{full}_count {self._latency.count}")
        for name, help_text in GAUGES.items():
            reader = self._gauges.get(name)
            series_reader = self._gauge_series.get(name)
            if reader is None and series_reader is None:
                continue
            full = f"{PREFIX}_{name}"
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} gauge"]
            if reader is not None:
                lines.append(f"{full} {_number(_read(reader))}")
            else:
                assert series_reader is not None
                try:
                    series = series_reader()
                except Exception:  # a scrape must not fail for one reading (e.g. the database away)
                    series = {}
                lines += [f"{full}{_labels(key)} {_number(value)}" for key, value in sorted(series.items())]
        return "\n".join(lines) + "\n"
