"""One process delivering several tenants of a shared outbox: a SharedDelivery per tenant, run together.

Each tenant has its own store view (its events, jobs, dead letters and meta: its seal nonce), its
own sealer (its own secrets), and so its own partitions, leases and rate limits (its own account).
Partitions of a tenant this process has no settings for are never claimed: it says so once per
tenant, and the workers that have its settings deliver them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..mapping_set import PROGRAM
from .leases import LeaseCounters, SharedDelivery, add_up
from .worker import DeliveryStopped, WorkerStats

if TYPE_CHECKING:
    from .postgres_outbox import PostgresOutbox

log = logging.getLogger(f"{PROGRAM}.worker")


class TenantDeliveries:
    """`deliveries`: tenant name -> its SharedDelivery ('' without --tenants)."""

    def __init__(self, deliveries: dict[str, SharedDelivery]):
        self.deliveries = deliveries
        self.stats = WorkerStats()
        self.unknown_tenants: set[str] = set()  # met, told once, left alone
        # tenants whose delivery a configuration error stopped (e.g. their key refused): the others go on
        self.stopped: dict[str, DeliveryStopped] = {}

    @property
    def counters(self) -> LeaseCounters:
        return add_up(LeaseCounters(), [delivery.counters for delivery in self.deliveries.values()])

    @property
    def holders(self) -> list[str]:
        return [delivery.holder for delivery in self.deliveries.values()]

    def sum_stats(self) -> WorkerStats:
        """This process's totals over its tenants (in place: metrics readers hold this object)."""
        return add_up(self.stats, [delivery.stats for delivery in self.deliveries.values()])

    def stop(self) -> None:
        for delivery in self.deliveries.values():
            delivery.stop()

    def input_complete(self) -> None:
        for delivery in self.deliveries.values():
            delivery.input_complete()

    def notify(self, tenant: str) -> None:
        delivery = self.deliveries.get(tenant)
        if delivery is not None:
            delivery.notify()

    def leases_held(self) -> dict[str, int]:
        return {tenant: len(delivery.partitions_held) for tenant, delivery in self.deliveries.items()}

    async def run(self) -> WorkerStats:
        """Run every tenant's delivery until all return (stop(), or --until-empty). A tenant stopped by
        a configuration error (DeliveryStopped) is logged and left stopped while the others go on; when
        every tenant is stopped so, the first error is raised. Any other error stops all and is raised."""
        tasks = {asyncio.create_task(self._run_one(tenant, delivery)): tenant
                 for tenant, delivery in self.deliveries.items()}
        watcher = asyncio.create_task(self._watch_tenants())
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [task for task in done if task.exception() is not None]
            if failed:
                self.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise failed[0].exception()  # type: ignore[misc]
            if self.stopped and len(self.stopped) == len(self.deliveries):
                raise next(iter(self.stopped.values()))
        finally:
            watcher.cancel()
            self.sum_stats()
        return self.stats

    async def _run_one(self, tenant: str, delivery: SharedDelivery) -> None:
        try:
            await delivery.run()
        except DeliveryStopped as exc:
            self.stopped[tenant] = exc
            if len(self.deliveries) > 1:
                log.error("tenant '%s': configuration error, its delivery stopped: %s (nothing was dead-lettered; "
                          "the other tenants go on)", tenant, exc)

    async def _watch_tenants(self) -> None:
        first = next(iter(self.deliveries.values()))
        store: PostgresOutbox = first.store
        while True:
            try:
                found = await asyncio.to_thread(store.tenants_with_partitions)
            except Exception:  # the database away a moment: the deliveries say so themselves
                found = []
            self.tell_unknown(found)
            await asyncio.sleep(first.lease_options.renew_every)

    def tell_unknown(self, tenants: Sequence[str]) -> None:
        for tenant in tenants:
            if tenant not in self.deliveries and tenant not in self.unknown_tenants:
                self.unknown_tenants.add(tenant)
                shown = f"tenant '{tenant}'" if tenant else "the events recorded without --tenants"
                log.warning("%s has requests in the outbox, but this worker has no settings for it (not in "
                            "its --tenants file): leaving its partitions to the workers that have", shown)
