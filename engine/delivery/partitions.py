"""A shared outbox's partitions: a lane, or one of the parts a split lane is cut into.

A lane (`lane:` of the delivery section's endpoints) keeps one subject's requests in input order.
In a shared outbox each partition is leased to one worker at a time, so a lane that is one
partition is delivered by one process however many run. `order.partitions: {LANE: K}` splits a
lane into K partitions named `LANE#i/K` (i = 0 … K-1); a request goes to the part chosen by a
stable hash (CRC-32, the same in every process and release, unlike Python's salted `hash()`) of
its **ordering key**: the first of `subject_identifiers`, in their declared order, that the
request's first subject has, as `NAME=VALUE` ('' for a request about no identified subject). Requests
with one ordering key are always in one partition, so one worker delivers them, in input order.

What a split lane cannot order: two requests about one subject whose ordering keys differ (the
subject known by `email` in one and by `external_id` alone in another; or a request about several
subjects, keyed by its first) may go to different partitions, hence different workers, and then
leave in either order. A lane of one partition (the default) orders by any identifier shared.

The budget: a worker holding m of a lane's K partitions sends at most m/K of each rate limit of
the endpoints that lane calls (`lane_share`), so all workers together stay within the published
limits; one holding all K has all of it.
"""

from __future__ import annotations

import zlib

SEPARATOR = "#"
MAX_LANE_PARTITIONS = 64  # each is a lease, a worker task and a query per refill: more buys nothing on one database


def partition_name(lane: str, index: int, count: int) -> str:
    """The partition `index` of a lane split in `count` (the lane itself when it is not split)."""
    return lane if count <= 1 else f"{lane}{SEPARATOR}{index}/{count}"


def stable_index(key: str, count: int) -> int:
    """Which of `count` partitions a key belongs to: the same in every process (CRC-32, not hash())."""
    return zlib.crc32(key.encode("utf-8")) % count if count > 1 else 0


def lane_share(partition: str) -> tuple[str, float]:
    """The lane a partition belongs to, and the share of that lane it is (1.0 for a whole lane)."""
    lane, separator, part = partition.rpartition(SEPARATOR)
    if separator:
        index, slash, count = part.partition("/")
        if slash and index.isdigit() and count.isdigit() and int(count) > 0:
            return lane, 1.0 / int(count)
    return partition, 1.0
