"""`outbox`: look into an outbox (--state DIR, or a postgresql:// URL) and replay its dead letters.

    $PROG outbox status --state state/          # events and requests by status, per input
    $PROG outbox dead-letters --state state/    # each dead request with the answer that condemned it
    $PROG outbox rejected --state state/        # events the mapping rejected or skipped, with reasons
    $PROG outbox replay --state state/ [--unit ID]...   # dead letters back to pending, as they were
    $PROG outbox replay --remap --state state/ --settings …  # or: dead events mapped again (the mapping
                                                             # fixed), --rejected: rejected ones too
    $PROG send --resume --state state/ --settings …     # …then deliver them
                                                        # (a shared database: running workers do)

Output is NDJSON (status: one line per input and a total); secrets are printed as ***.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..delivery.config import DeliveryPlan
from ..delivery.ingest import Ingester
from ..delivery.outbox import Outbox, OutboxError
from ..delivery.sealing import Sealer
from ..delivery.stores import is_database_url, open_outbox, record_lanes, without_password
from ..mapping_set import PROGRAM
from ..problems import SettingsError
from ..strict_json import json_line
from .common import EXIT_OK, EXIT_REJECTED, UsageError, add_mapping_options, fail, load_set_or_exit, read_settings


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("outbox", help="inspect a send's outbox and replay dead letters",
                                   description=(__doc__ or "").replace("$PROG", PROGRAM),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("status", "events and requests by status"),
                       ("dead-letters", "dead-lettered requests with the answer that condemned them"),
                       ("rejected", "events rejected (or skipped) by the mapping, with the reason"),
                       ("replay", "put dead letters back to pending; then `send --resume --state DIR`")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--state", required=True, metavar="DIR|URL",
                            help="the outbox folder of `send --state`, or a postgresql:// URL (a shared outbox)")
        action.add_argument("--tenant", default="", metavar="NAME",
                            help="with a postgresql:// --state: this tenant's events (a name in the --tenants file "
                                 "of serve and worker; default: those recorded without --tenants)")
        if name == "replay":
            action.add_argument("--unit", type=int, action="append", metavar="ID",
                                help="only this dead request (its `unit` in dead-letters; repeatable)")
            action.add_argument("--remap", action="store_true",
                                help="map the dead events again from their input, with the current mapping set and "
                                     "settings, instead of resending the stored requests")
            action.add_argument("--rejected", action="store_true",
                                help="with --remap: map the events the mapping rejected again too")
            add_mapping_options(action)
        if name == "rejected":
            action.add_argument("--skipped", action="store_true", help="list skipped events instead")
        action.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "replay" and args.rejected and not args.remap:
        return fail("--rejected needs --remap")
    if args.action == "replay" and args.remap and args.unit:
        return fail("--remap maps whole events again: leave out --unit")
    if args.tenant and not is_database_url(args.state):
        return fail(f"--tenant {args.tenant}: only a shared outbox (--state postgresql://…) has tenants")
    try:
        # Only replay writes; the others read, beside a running server or in a read-only folder.
        writes = args.action == "replay"
        outbox = open_outbox(args.state, exclusive=writes, create=False, read_only=not writes, tenant=args.tenant)
    except (FileNotFoundError, OutboxError) as exc:
        return fail(str(exc))
    masker = Sealer({}, outbox.get_meta("seal_nonce") or "0")
    out = sys.stdout
    try:
        if args.action == "status":
            for source in outbox.sources():
                counts = outbox.counts(source["id"])
                out.write(json.dumps({"source": source["id"], "input": source["label"],
                                      "events": counts.events, "requests": counts.units}) + "\n")
            total = outbox.counts()
            line = {"total": True, "events": total.events, "requests": total.units, "outbox": outbox.where}
            if args.tenant:
                line["tenant"] = args.tenant
            out.write(json.dumps(line) + "\n")
        elif args.action == "dead-letters":
            for letter in outbox.dead_letters():
                out.write(masker.mask(json_line(letter)) + "\n")
        elif args.action == "rejected":
            for event in outbox.events("skipped" if args.skipped else "rejected"):
                out.write(masker.mask(json_line(event)) + "\n")
        elif args.action == "replay" and args.remap:
            return remap(args, outbox)
        elif args.action == "replay":
            count = outbox.requeue_dead(args.unit)
            print(f"{count} dead request(s) back to pending; {_how_to_deliver(args.state, 'them')}", file=sys.stderr)
    finally:
        outbox.close()
    return EXIT_OK


def remap(args: argparse.Namespace, outbox: Outbox) -> int:
    """Map dead (and, with --rejected, rejected) events again from their raw input; one line each."""
    try:
        mapping_set = load_set_or_exit(args.mappings)
        recorded_by = outbox.get_meta("mapping_set")
        if recorded_by is not None and recorded_by != mapping_set.name:
            raise UsageError(f"--state {without_password(args.state)} holds events of mapping set '{recorded_by}', not "
                             f"'{mapping_set.name}'")
        try:
            settings = mapping_set.resolve_settings(read_settings(args.settings, args.overrides))
        except SettingsError as exc:
            raise UsageError("bad settings:\n" + "\n".join(exc.messages)) from None
    except UsageError as exc:
        return fail(str(exc))
    record_lanes(outbox, DeliveryPlan.for_set(mapping_set).lane_of)
    secrets = {name: str(settings[name]) for name in mapping_set.secret_settings if settings.get(name)}
    sealer = Sealer(secrets, outbox.get_meta("seal_nonce") or Sealer.new_nonce())
    ingester = Ingester(mapping_set, settings, outbox, sealer)
    outcomes: dict[str, int] = {}
    for stored in outbox.events_to_remap(["dead", "rejected"] if args.rejected else ["dead"]):
        record = ingester.remap(stored.raw, stored.index)
        status = outbox.remap_event(stored.id, record)
        outcomes[status] = outcomes.get(status, 0) + 1
        line = {"source": stored.source, "event": stored.index, "was": stored.status, "now": status,
                "requests": len(record.units)}
        if record.reason is not None:
            line["reason"] = record.reason
        print(sealer.mask(json_line(line)))
    told = ", ".join(f"{count} {status}" for status, count in sorted(outcomes.items())) or "none"
    print(f"mapped again: {told}; {_how_to_deliver(args.state, 'the pending ones')}", file=sys.stderr)
    return EXIT_REJECTED if outcomes.get("rejected") else EXIT_OK


def _how_to_deliver(state: str, what: str) -> str:
    shown = without_password(state)
    if is_database_url(state):  # the workers sharing it read the replayed requests at their next renewal
        return (f"the running workers deliver {what} (or: {PROGRAM} worker --state {shown} --settings … "
                "--until-empty)")
    return f"deliver {what} with: {PROGRAM} send --resume --state {shown} --settings …"
