"""`map`: events in, one NDJSON line per request out; rejections on the errors stream."""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any

from ..evaluate import Mapper, MapResult
from ..events import InputError, read_events
from ..problems import SettingsError
from ..strict_json import NotStrictJSON, json_line, strict_bytes, unsendable
from .common import (
    EXIT_OK,
    EXIT_REJECTED,
    UsageError,
    add_debug_option,
    add_mapping_options,
    configure_logging,
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
    add_debug_option(parser)
    parser.add_argument("--errors", metavar="FILE", help="write rejections and skips here (default: stderr)")
    parser.add_argument("--show-secrets", action="store_true", help="print secret settings instead of ***")
    parser.add_argument("--explain", nargs="?", const="-", metavar="FILE",
                        help="per event, each rule's outcome and why, and the source path of each field, "
                             "one JSON line per event (to the errors stream, or FILE)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.debug)
    try:
        mapping_set = load_set_or_exit(args.mappings)
        settings = read_settings(args.settings, args.overrides)
        try:
            mapper = Mapper(mapping_set, settings, mask_secrets=not args.show_secrets,
                            explain=args.explain is not None)
        except SettingsError as exc:
            raise UsageError("bad settings:\n" + "\n".join(exc.messages)) from None
        # (bytes: a line that is not UTF-8 is rejected alone, and nothing depends on the locale)
        source: IO[bytes] = open(args.file, "rb") if args.file else sys.stdin.buffer
    except UsageError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{args.file}: {exc.strerror}")
    errors: IO[str] = open(args.errors, "w", encoding="utf-8") if args.errors else sys.stderr
    explain = _explain_stream(args.explain, errors)
    sys.stdout.flush()
    write = sys.stdout.buffer.write
    mapper_map = mapper.map
    rejected = False
    try:
        for index, event in enumerate(read_events(source)):
            if isinstance(event, InputError):
                errors.write(json_line({"event": index, "messageId": event.message_id, "reason": event.reason}) + "\n")
                if explain is not None:  # (no rule saw it)
                    explain.write(json_line({"event": index, "explain": [], "result": "rejected"}) + "\n")
                rejected = True
                continue
            result = mapper_map(event, index)
            if result.requests:
                write(output_lines(result))
            if result.rejection is not None or result.item_rejections or result.skipped is not None \
                    or result.warnings:
                for line in result.error_lines():
                    errors.write(json_line(line) + "\n")
                rejected = rejected or result.rejected
            if explain is not None:
                explain.write(json_line(mapper.explanation(result)) + "\n")
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        if errors is not sys.stderr:
            errors.close()
        if explain is not None and explain is not errors:
            explain.close()
    sys.stdout.buffer.flush()
    return EXIT_REJECTED if rejected else EXIT_OK


def _explain_stream(path: str | None, errors: IO[str]) -> IO[str] | None:
    """Where --explain writes: nowhere, the errors stream (`--explain` alone) or its FILE."""
    if path is None:
        return None
    return errors if path == "-" else open(path, "w", encoding="utf-8")


def output_lines(result: MapResult) -> bytes:
    """The event's requests as `map` prints them, one strict JSON line each (UTF-8); a request that
    has no strict JSON text rejects the whole event instead (nothing half-printed)."""
    lines = []
    for request in result.requests:
        try:
            lines.append(strict_bytes(request.to_output()))
        except NotStrictJSON as exc:
            result.reject(unsendable(request.rule, exc))
            return b""
    lines.append(b"")
    return b"\n".join(lines)
