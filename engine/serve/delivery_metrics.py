"""The series a process delivering a shared outbox exposes: its delivery totals, its leases, the backlog.

Used by `worker --metrics-port` and by `serve --tenants`: the backlog is read from the database when
scraped, for every tenant and lane, so any one process shows it all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..delivery.tenant_deliveries import TenantDeliveries
from .metrics import Metrics, Series

if TYPE_CHECKING:  # (the PostgreSQL driver is imported only when a URL is given)
    from ..delivery.postgres_outbox import PostgresOutbox

# counter -> the WorkerStats field it reads
DELIVERY_TOTALS = {"events_delivered_total": "delivered_events", "events_dead_lettered_total": "dead_events",
                   "retries_total": "retried", "rate_limited_total": "rate_limited", "job_polls_total": "job_polls"}


def count_deliveries(metrics: Metrics, total: Callable[[str], float], takeovers: Callable[[], float],
                     store: PostgresOutbox, leases_held: Callable[[], dict[str, int]]) -> None:
    """Read `total(field)` (summed over the process's tenants) for each delivery counter, the lease
    takeovers, the leases held by tenant and the store's backlog by tenant and lane, when scraped."""
    for counter, field in DELIVERY_TOTALS.items():
        metrics.counter_from(counter, lambda field=field: total(field))  # type: ignore[misc]
    metrics.counter_from("lease_takeovers_total", takeovers)
    metrics.gauge_series("leases_held", lambda: {(("tenant", t),): float(n) for t, n in leases_held().items()})
    metrics.gauge_series("backlog", lambda: backlog_series(store))


def backlog_series(store: PostgresOutbox) -> Series:
    return {(("lane", lane), ("tenant", tenant)): float(n) for (tenant, lane), n in store.backlog().items()}


def shared_delivery_metrics(deliveries: TenantDeliveries) -> Metrics:
    """A worker's metrics (worker --metrics-port)."""
    metrics = Metrics()

    def total(field: str) -> float:
        return float(getattr(deliveries.sum_stats(), field))

    store = next(iter(deliveries.deliveries.values())).store
    count_deliveries(metrics, total, lambda: deliveries.counters.takeovers, store, deliveries.leases_held)
    return metrics
