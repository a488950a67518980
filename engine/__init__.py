"""A declarative mapping engine: Segment events in, HTTP requests out, rules in YAML.

    import engine
    mapping_set = engine.load_mapping_set()   # the default bundled set; load, validate, compile: once
    mapper = engine.Mapper(mapping_set, {"privateKey": "pk_..."})
    result = mapper.map({"type": "track", "userId": "u1", "event": "Signed Up"})
    result.requests   # [Request(method, url, headers, body_kind, body, ...)]
    result.rejection  # or the reason the event was rejected
"""

from .delivery import config as delivery_config  # noqa: F401 - registers the delivery section's compiler
from .evaluate import ItemRejection, Mapper, MapResult, Request
from .events import InputError, read_events
from .fake import config as fake_config  # noqa: F401 - registers the delivery section's `fake:` part
from .mapping_set import MappingSet, bundled_set_names, load_mapping_set
from .problems import MappingSetError, Position, Problem, SettingsError

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "ItemRejection",
    "MapResult",
    "Mapper",
    "MappingSet",
    "MappingSetError",
    "Position",
    "Problem",
    "Request",
    "SettingsError",
    "bundled_set_names",
    "load_mapping_set",
    "read_events",
]
