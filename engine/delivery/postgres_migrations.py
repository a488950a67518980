"""The PostgreSQL outbox's tables, as numbered migrations applied in order by the product itself.

`schema_version` holds one row per migration applied. A database whose highest version is above
`LATEST` was migrated by a newer release: it is refused (its tables may mean something this code
does not know), never written to. To change the tables, append a migration — never edit one that
was released: databases in the field already ran it.

Every table carries `tenant` (text, '' for a single deployment) in its key from version 1, so that
one database can hold several destinations' events without reshaping the tables.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE meta (
    tenant TEXT NOT NULL DEFAULT '',
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE TABLE sources (
    tenant TEXT NOT NULL DEFAULT '',
    id TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    next_index BIGINT NOT NULL DEFAULT 0,
    created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    idx BIGINT NOT NULL,
    message_id TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    notes TEXT,
    raw TEXT,
    created DOUBLE PRECISION NOT NULL,
    finished DOUBLE PRECISION,
    UNIQUE (tenant, source, idx)
);
CREATE INDEX events_by_status ON events (tenant, source, status);
CREATE INDEX events_by_message_id ON events (tenant, source, message_id);
-- partition: the lease a unit is delivered under (a lane of the mapping set's delivery section)
CREATE TABLE units (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL DEFAULT '',
    partition TEXT NOT NULL DEFAULT '',
    event_id BIGINT NOT NULL REFERENCES events (id),
    position INTEGER NOT NULL,
    rule TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    headers TEXT NOT NULL,
    body_kind TEXT,
    body TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    response TEXT,
    finished DOUBLE PRECISION
);
CREATE INDEX units_pending ON units (tenant, partition, id) WHERE status = 'pending';
CREATE INDEX units_by_event ON units (event_id);
CREATE INDEX units_dead ON units (tenant, id) WHERE status = 'dead';
CREATE TABLE jobs (
    tenant TEXT NOT NULL DEFAULT '',
    partition TEXT NOT NULL DEFAULT '',
    job_id TEXT NOT NULL,
    batch TEXT NOT NULL,
    units TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, job_id)
);
-- One row per (tenant, partition) ever recorded: who delivers it, until when (the database's clock),
-- and a generation that grows with each new holder (marks carry it: a fence against a lost lease).
-- replays grows when dead units are put back, so the holder reads the partition from its start again.
CREATE TABLE leases (
    tenant TEXT NOT NULL DEFAULT '',
    partition TEXT NOT NULL,
    holder TEXT,
    generation BIGINT NOT NULL DEFAULT 0,
    expires TIMESTAMPTZ,
    replays BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, partition)
);
-- Workers alive (renewed with their leases): each takes a fair share of the partitions.
CREATE TABLE workers (
    holder TEXT PRIMARY KEY,
    seen TIMESTAMPTZ NOT NULL
);
"""),
    # Request chains: a unit may carry its chain's next step, run with the unit's answer.
    (2, """
ALTER TABLE units ADD COLUMN chain TEXT;
"""),
)

LATEST = MIGRATIONS[-1][0]

SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
