"""`check`: does the private key work, and which scopes does the mapping set need?

Makes the one call the mapping set declares for this (`check:` in its delivery section: a call that
changes nothing) with the settings given as for `send`, and prints what the answer means, then the
scopes each of the set's endpoints needs. Exit 0: the key works; 2: it cannot be used (401: not a
valid key; 403: it lacks a scope, named) or bad usage; 1: no clear answer (network error, 429, 5xx).
The key itself is never printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..delivery.key_check import REFUSED, USABLE, check_key
from ..delivery.sealing import Sealer
from ..evaluate import Mapper
from ..fake.config import fake_config
from ..fake.server import FakeOptions, FakeServer
from ..mapping_set import DEFAULT_SET
from .common import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, UsageError, add_mapping_options, fail, prepare_delivery


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("check", help="check that the private key works and list the scopes the set needs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mapping_options(parser)
    parser.add_argument("--base-url", metavar="URL",
                        help="call here instead of the mapping set's base URL (also: the environment variable "
                             f"<SET NAME>_BASE_URL, e.g. {DEFAULT_SET.upper()}_BASE_URL)")
    parser.add_argument("--fake", action="store_true",
                        help="check against a fake API started in-process (it accepts the key given)")
    parser.add_argument("--allow-compatibility-only", action="store_true",
                        help="check with a mapping set marked compatibility_only")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        setup = prepare_delivery(args, "check")
        if setup.plan.key_check is None:
            raise UsageError(f"mapping set '{setup.mapping_set.name}' declares no key check "
                             "(a check: entry in its delivery section naming the endpoint to call)")
        if args.fake and setup.plan.spec_path is None:
            raise UsageError(f"--fake: mapping set '{setup.mapping_set.name}' names no OpenAPI spec, "
                             "so there is no fake of its API")
    except UsageError as exc:
        return fail(str(exc))
    mapping_set, plan, settings = setup.mapping_set, setup.plan, setup.settings
    secrets = {name: str(settings[name]) for name in mapping_set.secret_settings if settings.get(name)}
    headers = Mapper(mapping_set, setup.given_settings).settings_headers()
    fake: FakeServer | None = None
    base_url = setup.base_url
    try:
        if args.fake:
            auth_setting = fake_config(plan).auth_setting
            key = settings.get(auth_setting) if auth_setting else None
            fake = FakeServer(plan, FakeOptions(api_keys=[str(key)] if key else None)).start()
            base_url = fake.url
        result = check_key(plan, base_url, headers, Sealer(secrets, Sealer.new_nonce()))
    finally:
        if fake is not None:
            fake.stop()
    for line in result.lines:
        print(line)
    sys.stdout.flush()
    if result.verdict == USABLE:
        return EXIT_OK
    return EXIT_USAGE if result.verdict == REFUSED else EXIT_REJECTED
