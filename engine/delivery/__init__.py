"""Delivery: the requests a mapping set makes, sent — durably, batched, rate-limited, retried.

The pieces, each usable on its own (`send` and `serve` put them together):

- `config.DeliveryPlan.for_set(mapping_set)`: the set's `delivery` section compiled — endpoints and
  rate limits, batching, order rules, retry policy, stop statuses (the fake API's `fake:` part is
  compiled by engine/fake, which registers it);
- `outbox.Outbox` / `outbox.SQLiteOutbox(state_dir)`: the durable store of events and their requests;
- `ingest.Ingester(mapping_set, settings, outbox, sealer)`: maps events and records them, atomically,
  before anything is sent (`record_batch` for one request, `record_groups` for a server's concurrent
  requests in one transaction, `ingest` for a stream that may resume);
- `worker.DeliveryWorker(plan, outbox, sealer, base_url)`: `await worker.run()` drains the outbox;
- `sealing.Sealer`: keeps secret settings out of the store and out of anything printed;

A server (one process) wires them like this:

    plan = DeliveryPlan.for_set(mapping_set)
    outbox = SQLiteOutbox(state_dir)
    sealer = Sealer(secret_settings, nonce_kept_in(outbox))     # see cli/send_command.py
    ingester = Ingester(mapping_set, settings, outbox, sealer)
    worker = DeliveryWorker(plan, outbox, sealer, base_url)
    # in the event loop: task = asyncio.create_task(worker.run())
    # per HTTP request:  ingester.record_batch("serve", messages); worker.notify()   (then answer 200)
    #                    (serve/commits.py gathers concurrent requests into one record_groups call)
    # on shutdown:       worker.stop(); await task; outbox.close()

Nothing here knows a particular API: everything comes from the mapping set.
"""
