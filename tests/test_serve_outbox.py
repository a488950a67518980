"""What `serve` needs of the outbox: requests recorded from several threads at once, none lost."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.delivery.ingest import Ingester
from engine.delivery.outbox import SQLiteOutbox
from engine.delivery.sealing import Sealer
from engine.mapping_set import load_mapping_set


def test_concurrent_record_batch_loses_nothing(tmp_path: Path) -> None:
    # Each HTTP request records its messages with one record_batch call, from a worker thread; the
    # end of the source must be found inside the transaction, or two requests would share indexes
    # and the second one's events would be taken for already recorded (and silently dropped).
    outbox = SQLiteOutbox(tmp_path)
    ingester = Ingester(load_mapping_set("klaviyo"), {"privateKey": "pk_x", "listId": "L"}, outbox,
                        Sealer({"privateKey": "pk_x"}, "abcd"))

    def client(number: int) -> None:
        for i in range(25):
            ingester.record_batch("serve", [
                {"type": "track", "event": "E", "userId": f"u{number}", "messageId": f"{number}-{i}-{j}",
                 "timestamp": "2026-11-01T12:00:00Z"} for j in range(2)])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert outbox.counts().total_events == 8 * 25 * 2
        assert outbox.progress("serve") == 8 * 25 * 2
        ids = [e["messageId"] for e in outbox.events("pending")]
        assert len(set(ids)) == 400
    finally:
        outbox.close()
