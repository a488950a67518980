"""The limits a mapping set is loaded and evaluated under, in one place (README: Errors, Limits).

A mapping folder may come from someone else. Each limit bounds the time or memory one hostile file,
expression or template can take; a limit hit at load time is a problem at FILE:LINE:COL naming it,
and one hit while mapping rejects that event with a reason naming the rule and the limit. The
bundled sets are far inside every one of them (their largest rule file is under 20 KB).
"""

from __future__ import annotations

# -- load: YAML ---------------------------------------------------------------------------------------
# Loading takes about 2 s per 100 KB of rules (PyYAML reads YAML in Python, cerberus checks each
# rule): these bound a load to a few seconds. The bundled files are under 20 KB, their sets under 25 KB.
MAX_FILE_BYTES = 128 * 1024  # one rule file (mapping.yaml, an include, the delivery file)
MAX_SET_BYTES = 256 * 1024  # all of a set's YAML files together
MAX_SPEC_BYTES = 16 * 1024 * 1024  # the OpenAPI document a delivery section names (JSON)
MAX_YAML_ALIASES = 100  # alias uses (*name) in one file
MAX_YAML_NODES = 100_000  # nodes of one file's tree, aliases counted as expanded
MAX_YAML_DEPTH = 64  # nesting of mappings and sequences in one file

# -- load: expressions and templates ------------------------------------------------------------------
MAX_EXPRESSION_DEPTH = 64  # nesting of one JMESPath expression's syntax tree (parentheses, a.b.c steps)
MAX_TEMPLATE_DEPTH = 64  # nesting of one template's syntax tree
MAX_TEMPLATE_LOOP_NESTING = 16  # loops inside loops in one template (Python allows 20 nested blocks)

# -- evaluation: templates ----------------------------------------------------------------------------
MAX_TEMPLATE_OUTPUT = 1024 * 1024  # characters a template renders, and any string or list it builds
MAX_TEMPLATE_RANGE = 10_000  # items of one range()
MAX_TEMPLATE_STEPS = 100_000  # loop iterations and calls of one rendering, all together
MAX_INTEGER_BITS = 4096  # the size of an integer `**`, `*` or a call may build
