"""Reading configuration YAML safely and fast, with errors that never quote a value.

Shared by the standalone loader (SmtpAccounts and Secrets) and the API keys
file (``gateway/apikeys.py``): both are files that may hold secrets, so every
error names a position and a problem, never the text found there.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:  # libyaml's parser: ~10x faster than PyYAML's pure-Python one; PyYAML wheels ship it
    from yaml import CSafeLoader as _SafeBase
except ImportError:  # pragma: no cover - a PyYAML built without libyaml
    from yaml import SafeLoader as _SafeBase  # type: ignore[assignment]


class ConfigError(Exception):
    """A load that found problems; ``problems`` holds one line per problem, none with a value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Unusual(Exception):
    """A node the fast path of ``ConfigLoader`` leaves to PyYAML's own construction."""


_STR, _SEQ, _MAP = (f"tag:yaml.org,2002:{name}" for name in ("str", "seq", "map"))
_SCALAR_TAGS = [f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "binary", "timestamp", "str")]


class ConfigLoader(_SafeBase):
    """PyYAML's safe loader (libyaml's parser where available) that builds plain documents itself.

    Why: for 10,000 accounts and their Secrets (4.7 MB, 1.1 million nodes),
    PyYAML's generic construction (a generator per mapping, memo tables,
    per-node dispatch) and its resolver took 0.55 s of CPU, 40% of the YAML
    time and a fifth of ``mailgate serve``'s start; ``yaml.load_all`` of
    them takes 0.8 s here, 1.3 s with ``CSafeLoader``. A document made only of
    mappings, sequences and scalars of the safe tags is built by one direct
    walk; any other (an alias of a collection, a merge key, ``!!set``, an
    unknown tag, a collection as a key, deep nesting) is built by PyYAML as
    before, so the result and the errors are those of ``yaml.safe_load_all``,
    with the same implicit typing. One difference, on purpose: a scalar whose
    explicit tag does not fit its value (``!!int abc``) is a marked YAML
    error, not a ValueError quoting the value (which crashed the load).
    """

    def construct_document(self, node: Node) -> Any:
        try:
            return self._plain(node, set())
        except (_Unusual, RecursionError):
            return super().construct_document(node)

    def _plain(self, node: Node, containers: set[int]) -> Any:
        tag = node.tag
        if type(node) is ScalarNode:
            if tag == _STR:
                return node.value
            construct = _SCALARS.get(tag)
            if construct is None:
                raise _Unusual
            return construct(self, node)
        if id(node) in containers:  # an alias: PyYAML shares one object (and allows recursion)
            raise _Unusual
        containers.add(id(node))
        if tag == _MAP and type(node) is MappingNode:
            mapping = {}
            for key_node, value_node in node.value:
                if type(key_node) is not ScalarNode:  # unhashable: PyYAML refuses it, with its marks
                    raise _Unusual
                mapping[self._plain(key_node, containers)] = self._plain(value_node, containers)
            return mapping
        if tag == _SEQ and type(node) is SequenceNode:
            return [self._plain(item, containers) for item in node.value]
        raise _Unusual

    def resolve(self, kind: type[Node], value: str, implicit: tuple[bool, bool]) -> str:
        """``BaseResolver.resolve`` without building two lists per node (libyaml calls it for every node).

        The same implicit resolvers by first character; this class has neither
        wildcard nor path resolvers (checked below), the only other branches there.
        """
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in self.yaml_implicit_resolvers.get(value[:1], ()):
                    if regexp.match(value):
                        return tag
            return self.DEFAULT_SCALAR_TAG
        return self.DEFAULT_SEQUENCE_TAG if kind is SequenceNode else self.DEFAULT_MAPPING_TAG


def _value_free(tag: str, construct: Any) -> Any:
    """A scalar constructor whose failures are marked YAML errors naming the tag, never the value."""
    short = tag.replace("tag:yaml.org,2002:", "!!")

    def construct_or_refuse(loader: ConfigLoader, node: Node) -> Any:
        try:
            return construct(loader, node)
        except Exception:  # int("abc"), a 13th month, bool("maybe"): their texts quote the value
            raise ConstructorError(None, None, f"expected a valid {short} value", node.start_mark) from None

    return construct_or_refuse


for _tag in _SCALAR_TAGS:
    ConfigLoader.add_constructor(_tag, _value_free(_tag, ConfigLoader.yaml_constructors[_tag]))
_SCALARS = {tag: ConfigLoader.yaml_constructors[tag] for tag in _SCALAR_TAGS}
assert None not in ConfigLoader.yaml_implicit_resolvers and not ConfigLoader.yaml_path_resolvers, "see resolve"


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """Position and problem only: PyYAML's own message quotes the source line."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        position = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"invalid YAML: {position}{error.problem or error.context or 'syntax error'}"
    return "invalid YAML"
