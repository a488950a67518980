"""`outbox`: look into a send's outbox (--state DIR) and replay its dead letters.

    $PROG outbox status --state state/          # events and requests by status, per input
    $PROG outbox dead-letters --state state/    # each dead request with the answer that condemned it
    $PROG outbox rejected --state state/        # events the mapping rejected or skipped, with reasons
    $PROG outbox replay --state state/ [--unit ID]...   # dead letters back to pending
    $PROG send --resume --state state/ --settings …     # …then deliver them

Output is NDJSON (status: one line per input and a total); secrets are printed as ***.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..delivery.outbox import OutboxError, SQLiteOutbox
from ..delivery.sealing import Sealer
from ..mapping_set import PROGRAM
from ..strict_json import json_line
from .common import EXIT_OK, fail


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
        action.add_argument("--state", required=True, metavar="DIR", help="the outbox folder of `send --state`")
        if name == "replay":
            action.add_argument("--unit", type=int, action="append", metavar="ID",
                                help="only this dead request (its `unit` in dead-letters; repeatable)")
        if name == "rejected":
            action.add_argument("--skipped", action="store_true", help="list skipped events instead")
        action.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        # Only replay writes; the others read, beside a running server or in a read-only folder.
        writes = args.action == "replay"
        outbox = SQLiteOutbox(args.state, exclusive=writes, create=False, read_only=not writes)
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
            out.write(json.dumps({"total": True, "events": total.events, "requests": total.units,
                                  "outbox": str(outbox.path)}) + "\n")
        elif args.action == "dead-letters":
            for letter in outbox.dead_letters():
                out.write(masker.mask(json_line(letter)) + "\n")
        elif args.action == "rejected":
            for event in outbox.events("skipped" if args.skipped else "rejected"):
                out.write(masker.mask(json_line(event)) + "\n")
        elif args.action == "replay":
            count = outbox.requeue_dead(args.unit)
            print(f"{count} dead request(s) back to pending; deliver them with: "
                  f"{PROGRAM} send --resume --state {args.state} --settings …", file=sys.stderr)
    finally:
        outbox.close()
    return EXIT_OK
