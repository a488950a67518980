"""`map`: events in, one NDJSON line per request out; rejections on the errors stream."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from ..evaluate import Mapper
from ..events import InputError, read_events
from ..problems import SettingsError
from .common import (
    EXIT_OK,
    EXIT_REJECTED,
    UsageError,
    add_mapping_options,
    fail,
    load_set_or_exit,
    read_settings,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("map", help="map events to requests (a dry run: nothing is sent)",
                                   description=__doc__)
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="events: a JSON object, a JSON array, NDJSON or a batch envelope (default: stdin)")
    add_mapping_options(parser)
    parser.add_argument("--errors", metavar="FILE", help="write rejections and skips here (default: stderr)")
    parser.add_argument("--show-secrets", action="store_true", help="print secret settings instead of ***")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        mapping_set = load_set_or_exit(args.mappings)
        settings = read_settings(args.settings, args.overrides)
        try:
            mapper = Mapper(mapping_set, settings, mask_secrets=not args.show_secrets)
        except SettingsError as exc:
            raise UsageError("bad settings:\n" + "\n".join(exc.messages)) from None
        source: IO[str] = open(args.file, encoding="utf-8") if args.file else sys.stdin
    except UsageError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{args.file}: {exc.strerror}")
    errors: IO[str] = open(args.errors, "w", encoding="utf-8") if args.errors else sys.stderr
    out = sys.stdout
    dumps = json.dumps
    rejected = False
    try:
        for index, event in enumerate(read_events(source)):
            if isinstance(event, InputError):
                errors.write(dumps({"event": index, "messageId": None, "reason": event.reason}) + "\n")
                rejected = True
                continue
            result = mapper.map(event, index)
            for request in result.requests:
                out.write(dumps(request.to_output(), ensure_ascii=False) + "\n")
            for line in result.error_lines():
                errors.write(dumps(line, ensure_ascii=False) + "\n")
            rejected = rejected or result.rejected
    finally:
        if source is not sys.stdin:
            source.close()
        if errors is not sys.stderr:
            errors.close()
    out.flush()
    return EXIT_REJECTED if rejected else EXIT_OK
