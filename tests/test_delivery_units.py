"""The small parts of delivery: the rate limiter, backoff and answer classes, sealing secrets, the outbox."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from delivery_helpers import deliver, hand_made
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.delivery.config import RateWindow, RetryPolicy
from engine.delivery.outbox import DeadLetter, NewEvent, NewUnit
from engine.delivery.ratelimit import RateLimiter
from engine.delivery.retry import DEAD, DELIVERED, ITEM_ERRORS, RETRY, STOP, backoff, classify, retry_after
from engine.delivery.sealing import MissingSecret, Sealer
from engine.delivery.sqlite_outbox import OutboxLocked, SQLiteOutbox


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=0.05), min_size=1, max_size=300))
def test_a_limited_sequence_fits_every_fixed_window(gaps: list[float]) -> None:
    # Send as soon as the limiter allows, after random pauses; then no fixed window of any alignment
    # holds more than the limit (the server's windows are fixed, the limiter's sliding).
    limiter = RateLimiter([RateWindow("burst", 5, 0.1), RateWindow("steady", 20, 1.0)], margin=0.0)
    now, sent = 0.0, []
    for gap in gaps:
        now += gap
        now += limiter.delay(now)
        limiter.record(now)
        sent.append(now)
    for limit, span in ((5, 0.1), (20, 1.0)):
        for offset in (0.0, span / 3, span / 2):
            windows: dict[int, int] = {}
            for t in sent:
                # (/ then floor, not //: 0.3 // 0.1 is 2.0, which put a send at the start of a
                # window into the window before it — a false failure hypothesis found)
                index = math.floor((t + offset) / span + 1e-9)
                windows[index] = windows.get(index, 0) + 1
            assert max(windows.values()) <= limit


def test_retry_after_pauses_the_endpoint_and_time_scale_shrinks_it() -> None:
    limiter = RateLimiter([RateWindow("burst", 10, 1.0)], time_scale=20)
    limiter.pause(2, now=100.0)
    assert limiter.delay(100.0) == pytest.approx(0.1)
    assert limiter.delay(100.2) == 0
    assert retry_after("3") == 3 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0


def test_answers_are_classified_as_the_set_says() -> None:
    policy = RetryPolicy(statuses=frozenset({429, 500, 502, 503, 504, 524}))
    stop = {401: "key", 403: "scope"}
    assert [classify(policy, s, stop, 400, True).action for s in (202, 429, 503, 524, None, 401, 403, 400, 404)] == \
        [DELIVERED, RETRY, RETRY, RETRY, RETRY, STOP, STOP, ITEM_ERRORS, DEAD]
    assert classify(policy, 400, stop, 400, False).action == DEAD  # a single request: no items to name


def test_backoff_is_capped_jittered_and_exponential() -> None:
    policy = RetryPolicy(initial=0.5, multiplier=2, max_delay=60, jitter=0.5)
    rng = random.Random(1)
    for attempt in range(1, 15):
        base = min(60, 0.5 * 2 ** (attempt - 1))
        for _ in range(20):
            delay = backoff(policy, attempt, rng)
            assert base * 0.5 <= delay <= min(base * 1.5, 60)


def test_sealing_keeps_secrets_out_and_puts_them_back() -> None:
    sealer = Sealer({"privateKey": 'pk_"quoted"/key'}, "00ff")
    text = '{"Authorization": "Klaviyo-API-Key pk_\\"quoted\\"/key"}'
    sealed = sealer.seal(text)
    assert "pk_" not in sealed and "{{secret:00ff:privateKey}}" in sealed
    assert sealer.unseal(sealed) == text
    assert sealer.mask(text) == '{"Authorization": "Klaviyo-API-Key ***"}'
    assert sealer.mask(sealed) == '{"Authorization": "Klaviyo-API-Key ***"}'
    forged = "{{secret:0000:privateKey}}"  # a placeholder with another nonce is left alone
    assert sealer.unseal(forged) == forged
    with pytest.raises(MissingSecret):
        Sealer({}, "00ff").unseal(sealed)


def test_outbox_is_atomic_resumable_and_exclusive(tmp_path: Path) -> None:
    outbox = SQLiteOutbox(tmp_path)
    unit = NewUnit(0, "r", "POST", "/x", "{}", "json", "{}")
    try:
        with pytest.raises(OutboxLocked):
            SQLiteOutbox(tmp_path)
        assert outbox.add_events("s", 0, [NewEvent("a", "pending", units=[unit]), NewEvent("b", "rejected", "no")]) == 2
        assert outbox.add_events("s", 1, [NewEvent("b", "rejected", "no"), NewEvent("c", "pending", units=[unit])]) == 3
        with pytest.raises(ValueError):
            outbox.add_events("s", 5, [NewEvent("z", "pending")])
        pending = outbox.pending_units(0, 10)
        assert [u.id for u in pending] == [1, 2]
        done = outbox.mark_delivered([1])
        assert done.delivered == 1
        dead = outbox.mark_dead([2], DeadLetter(400, "{}", "bad", 1))
        assert dead.dead == 1
        assert outbox.counts().events == {"pending": 0, "delivered": 1, "rejected": 1, "skipped": 0, "dead": 1}
        assert [d["messageId"] for d in outbox.dead_letters()] == ["c"]
        assert outbox.requeue_dead() == 1
        assert outbox.counts().events["pending"] == 1
    finally:
        outbox.close()


def test_other_4xx_are_dead_lettered_at_once(tmp_path: Path, fake_klaviyo: object) -> None:
    fake = fake_klaviyo()  # type: ignore[operator]
    stats, counts = deliver(tmp_path, [], fake.url, units=hand_made("POST", "/api/unknown-endpoint", [{"a": 1}]))
    assert counts["dead"] == 1 and stats.requests == 1 and stats.retried == 0


def test_the_worker_as_a_server_runs_it(tmp_path: Path, fake_klaviyo: Any) -> None:
    # serve's way: the worker runs until stopped; requests are recorded from other threads and notified.
    import asyncio
    import threading
    import time

    from delivery_helpers import SETTINGS

    import engine
    from engine.delivery.config import DeliveryPlan
    from engine.delivery.ingest import Ingester
    from engine.delivery.worker import DeliveryWorker, WorkerOptions

    fake = fake_klaviyo(time_scale=50)
    mapping_set = engine.load_mapping_set("klaviyo")
    outbox = SQLiteOutbox(tmp_path)
    sealer = Sealer({"privateKey": SETTINGS["privateKey"]}, "0123abcd")
    ingester = Ingester(mapping_set, SETTINGS, outbox, sealer)
    worker = DeliveryWorker(DeliveryPlan.for_set(mapping_set), outbox, sealer, fake.url,
                            WorkerOptions(time_scale=50, linger=0.05, poll=0.05))

    def requests() -> None:
        for n in range(5):
            ingester.record_batch("serve", [{"type": "track", "userId": f"u{n}", "event": "E", "messageId": f"s{n}-{i}"}
                                            for i in range(20)])
            worker.notify()
            time.sleep(0.05)
        deadline = time.monotonic() + 20
        while outbox.counts().events["delivered"] < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        worker.stop()

    thread = threading.Thread(target=requests)
    try:
        thread.start()
        stats = asyncio.run(asyncio.wait_for(worker.run(), 30))
        thread.join()
        assert stats.delivered_events == 100
        assert outbox.counts().events == {"pending": 0, "delivered": 100, "rejected": 0, "skipped": 0, "dead": 0}
        assert len(fake.store.snapshot()["records"]["events"]) == 100
    finally:
        outbox.close()
