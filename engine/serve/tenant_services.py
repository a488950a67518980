"""`serve --tenants FILE`: one server for several tenants of a shared outbox, a Service per tenant.

A request's write key picks the tenant (an unknown key is answered 401 by the app, as Segment does);
the tenant's Service maps the messages with its settings and records them under its name, so each
tenant's events, partitions, leases, rate limits and dead letters stay apart. One Metrics for the
process: counters summed over the tenants, the backlog by tenant and lane, leases held by tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from ..delivery.config import DeliveryPlan
from ..delivery.leases import LeaseOptions, SharedDelivery
from ..delivery.postgres_outbox import PostgresOutbox
from ..delivery.worker import WorkerOptions
from ..mapping_set import MappingSet
from ..tenants import Tenant
from .app import Accept
from .delivery_metrics import count_deliveries
from .metrics import Metrics
from .server import Service


class TenantServices:
    def __init__(self, mapping_set: MappingSet, plan: DeliveryPlan, tenants: list[Tenant], state: str,
                 base_url: str, options: WorkerOptions | None = None, dedupe_window: float | None = None,
                 deliver: bool = True, lease: LeaseOptions | None = None):
        self.metrics = Metrics()
        self.services: dict[str, Service] = {}
        try:
            for tenant in tenants:
                self.services[tenant.name] = Service(mapping_set, plan, tenant.settings, state, base_url, options,
                                                     self.metrics, dedupe_window, deliver, lease, tenant=tenant.name)
        except BaseException:
            for service in self.services.values():
                service.outbox.close()
            raise
        self.routes: dict[str, Accept] = {key: self.services[t.name].accept for t in tenants for key in t.write_keys}
        # Each Service registered its own readers on the shared Metrics; read the sums instead.
        store = next(iter(self.services.values())).outbox
        assert isinstance(store, PostgresOutbox)
        count_deliveries(self.metrics, self._total, lambda: sum(w.counters.takeovers for w in self._shared()),
                         store, lambda: {name: len(s.worker.partitions_held) for name, s in self.services.items()
                                         if isinstance(s.worker, SharedDelivery)})
        self.metrics.gauge("outbox_depth", lambda: sum(s.pending() for s in self.services.values()))
        self.metrics.gauge("up", lambda: int(all(s.running and s.failure is None for s in self.services.values())))

    def _shared(self) -> list[SharedDelivery]:
        return [s.worker for s in self.services.values() if isinstance(s.worker, SharedDelivery)]

    def _total(self, field: str) -> float:
        return float(sum(getattr(s.worker.stats, field) for s in self.services.values() if s.worker is not None))

    def health(self) -> dict[str, Any]:
        tenants = {name: service.health() for name, service in self.services.items()}
        return {"ok": all(h["ok"] for h in tenants.values()),
                "outbox_depth": sum(h["outbox_depth"] for h in tenants.values()), "tenants": tenants}

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for service in self.services.values():
                await stack.enter_async_context(service.lifespan(app))
            yield

