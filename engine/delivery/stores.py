"""Which outbox `--state` names: a folder (the embedded SQLite store) or a `postgresql://` URL (the
shared PostgreSQL store). The PostgreSQL driver is imported only when a URL is given."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .outbox import Outbox, PartitionOf

DATABASE_SCHEMES = ("postgresql", "postgres")


def is_database_url(state: str) -> bool:
    return urlsplit(str(state)).scheme in DATABASE_SCHEMES


def without_password(state: str) -> str:
    """`--state` as it may be printed: a URL's password (in the address or a password= parameter)
    replaced by ***; a folder as it is."""
    parts = urlsplit(str(state))
    if parts.scheme not in DATABASE_SCHEMES:
        return str(state)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*=-/%")))


def open_outbox(state: str, *, create: bool = True, exclusive: bool = True, read_only: bool = False,
                partition_of: PartitionOf | None = None, tenant: str = "") -> Outbox:
    """The outbox `state` names. A folder: SQLiteOutbox (`exclusive`: the folder's lock; `create`:
    make it if missing). A URL: PostgresOutbox (tables created or migrated unless `read_only`;
    `partition_of(method, url, unit)` names the lease each recorded request is delivered under; `tenant`:
    whose events it reads and records, '' without --tenants). A folder has no tenants.
    Raises OutboxError (and, for a folder, FileNotFoundError or OSError)."""
    if is_database_url(state):
        from .postgres_outbox import PostgresOutbox
        return PostgresOutbox(state, tenant=tenant, partition_of=partition_of, read_only=read_only)
    from .sqlite_outbox import SQLiteOutbox
    return SQLiteOutbox(state, exclusive=exclusive, create=create, read_only=read_only)


def record_lanes(outbox: Outbox, lane_of: PartitionOf) -> None:
    """Record each request a shared store is given from now on under its lane (its lease partition)."""
    if hasattr(outbox, "partition_of"):  # (the SQLite store has no partitions: one process delivers it all)
        outbox.partition_of = lane_of
