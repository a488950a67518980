"""The fake API: a product feature (the `fake-<default set>` command, `send --fake`, `check --fake`,
the tests' fake fixture), not part of delivery.

- `config`: the `fake:` part of a set's delivery section (FakeConfig, RecordSpec, FakeJob), parsed
  and checked by this package (`fake_config(plan)`);
- `server.FakeServer(plan, FakeOptions(...))`: a fake of the API on a loopback port;
- `spec_trim`: `python -m engine.fake.spec_trim FULL.json --mappings SET` regenerates the trimmed
  OpenAPI copy a set ships, which the fake validates bodies against.

Requests are checked against the OpenAPI document by engine/openapi_check.py, which stays beside the
engine: `validate` (spec_check.py) and the case runner use it too.
"""
