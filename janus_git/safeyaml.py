"""Bounded YAML loading.  Every YAML file janus-git reads from a commit was written by whoever
could push, so nothing may expand it, recurse over it or convert it before it is measured:

- size is checked before parsing;
- nesting depth, node count *with aliases expanded*, tags and integer lengths are checked on
  the composed node graph, before any Python object is built.  An alias is the same node object
  as its anchor, so one memoised walk measures the expanded document in time linear in the
  unexpanded one (a "billion laughs" is refused in microseconds);
- libyaml is quadratic in flow nesting and its composer recurses in C (a segfault near 25,000
  levels), so a document that could be nested beyond _BLIND levels is first streamed as parser
  events, stopping at the depth or node limit, before it is composed;
- a key twice in one mapping is refused, at any depth: PyYAML keeps the last value while a
  forge's file view (and a person reading top to bottom) shows the first, so a reviewer would
  approve one value and the daemon act on another.  Keys are compared as PyYAML builds them
  (`yes` and `true`, `1` and `0x1` are one key), in the same walk that measures the graph.

Every refusal, and any parse failure, is a ConfigError that names the reason."""
from __future__ import annotations

from itertools import chain
from typing import Any

import yaml

from .errors import ConfigError

try:  # libyaml is ~7x faster; fall back to the pure-Python classes where it is missing
    from yaml import CSafeLoader as _Loader
    _BLIND = 1000
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]
    _BLIND = 200  # the pure-Python composer recurses, three frames a level

MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_INT_DIGITS = 100

# Every collection needs one of these characters of its own ("-" or "?" or ":" for a block
# one, a bracket for a flow one) and each of them starts at most three nodes, so their count
# bounds depth and node count from the raw text.  Up to _BLIND (above) of them libyaml parses in
# well under a millisecond and the C composer needs a few hundred KiB of stack; past that, depth
# and node count are measured on the event stream first.
_STRUCTURE = (b"-", b"?", b":", b"[", b"{", b",")
_STRUCTURE_STR = tuple(c.decode() for c in _STRUCTURE)

_T = "tag:yaml.org,2002:"
# YAML's standard scalar and collection types, as the safe loader resolves them without a tag.
# !!binary, !!set, !!omap and !!pairs are left out: nothing janus-git writes uses them and the
# bytes, sets and tuples they build break every json.dumps downstream.
SAFE_TAGS = frozenset(_T + t for t in ("null", "bool", "int", "float", "str", "timestamp",
                                       "merge", "seq", "map"))
_INT = _T + "int"
_NOT_INT = SAFE_TAGS - {_INT}
_STR = _T + "str"
_Scalar, _Sequence = yaml.ScalarNode, yaml.SequenceNode
# builds a non-string key as PyYAML would; called through the table, never construct_object,
# which would remember every node it built (this one is shared by every load)
_KEYS = yaml.constructor.SafeConstructor()
_BUILD_KEY = yaml.constructor.SafeConstructor.yaml_constructors
_DIGITS = frozenset("0123456789abcdefABCDEF")
_BUSY = (-1, -1)  # memo entry of a collection being measured: meeting it again is a cycle
_HINT = "fix the file or `git revert` the commit that brought it"


def load(text: bytes | str, path: str, *, max_bytes: int = MAX_BYTES,
         max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH,
         max_int_digits: int = MAX_INT_DIGITS) -> Any:
    """Parse one YAML document from TEXT (read from PATH) within the limits, or raise
    ConfigError naming the limit it passed."""
    _check_size(text, path, max_bytes)
    try:
        if len(text) > _BLIND and _structure_chars(text) > _BLIND:
            _check_events(text, path, max_depth, max_nodes)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _Budget(path, max_nodes, max_depth, max_int_digits).measure(node, 1)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "maximum nesting depth" in problem:
            # the C parser's own nesting cap (PyYAML 6.0.4's wheels have one; 6.0.3's do
            # not), which it can meet before our event walk reaches MAX_DEPTH: the same
            # refusal, named the same way
            _too_deep(path, max_depth)
        raise ConfigError(path, None, f"not valid YAML{where}: {problem}",
                          "fix the syntax or `git revert` the commit that broke it") from None
    except RecursionError:  # a backstop: the limits above keep every recursion shallow
        raise ConfigError(path, None, "nested too deeply to read", _HINT) from None
    except (ValueError, OverflowError) as e:  # e.g. a timestamp in year 0
        raise ConfigError(path, None, f"a value YAML cannot convert: {e}", _HINT) from None


def _check_size(text: bytes | str, path: str, max_bytes: int) -> None:
    size = len(text) if isinstance(text, bytes) or text.isascii() else len(
        text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ConfigError(path, None, f"too large: {size:,} bytes (limit {max_bytes:,})", _HINT)


def _structure_chars(text: bytes | str) -> int:
    if isinstance(text, bytes):
        return sum(text.count(c) for c in _STRUCTURE)
    return sum(text.count(c) for c in _STRUCTURE_STR)


def _check_events(text: bytes | str, path: str, max_depth: int, max_nodes: int) -> None:
    """Stream the parser's events (libyaml's parser keeps its own stack: no recursion) and stop
    at the first collection past MAX_DEPTH, before libyaml's per-level cost adds up, or at the
    node past MAX_NODES, before composing them all."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.NodeEvent):  # scalar, alias, collection start
            nodes += 1
            if nodes > max_nodes:
                _too_many(path, max_nodes)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    _too_deep(path, max_depth)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _too_deep(path: str, max_depth: int) -> None:
    raise ConfigError(path, None, f"nested deeper than {max_depth} levels", _HINT)


def _too_many(path: str, max_nodes: int) -> None:
    raise ConfigError(path, None, f"too many nodes after expanding aliases (limit {max_nodes})",
                      _HINT)


class _Budget:
    """One walk over the composed graph.  seen memoises each collection's (nodes, height) by
    identity: an alias is its anchor's node, so it counts the whole of what it refers to
    without being walked twice."""

    def __init__(self, path: str, max_nodes: int, max_depth: int, max_int_digits: int) -> None:
        self.path = path
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.max_int_digits = max_int_digits
        self.seen: dict[int, tuple[int, int]] = {}

    def measure(self, node: yaml.Node, depth: int) -> tuple[int, int]:
        """(nodes, levels of collections) of NODE, a collection DEPTH levels down, or of a
        scalar."""
        if node.__class__ is _Scalar:
            self._scalar(node)
            return 1, 0
        self._tag(node)
        self.seen[id(node)] = _BUSY
        nodes, height = 1, 0
        children = node.value if node.__class__ is _Sequence else chain.from_iterable(node.value)
        for child in children:
            if child.__class__ is _Scalar:  # the common case, inline: this loop is the cost
                nodes += 1
                if child.tag not in _NOT_INT:
                    self._scalar(child)
                continue
            n, h = self._child(child, depth + 1)
            nodes += n
            height = max(height, h)
            if nodes > self.max_nodes:
                break
        if nodes > self.max_nodes:
            _too_many(self.path, self.max_nodes)
        if isinstance(node, yaml.MappingNode):
            self._unique_keys(node)
        self.seen[id(node)] = (nodes, height + 1)
        return nodes, height + 1

    def _child(self, node: yaml.Node, depth: int) -> tuple[int, int]:
        known = self.seen.get(id(node))
        if known is _BUSY:
            raise ConfigError(self.path, None, "an alias inside the node it refers to "
                              "(a structure that contains itself)", _HINT)
        if depth > self.max_depth or (known and depth + known[1] - 1 > self.max_depth):
            _too_deep(self.path, self.max_depth)
        return known or self.measure(node, depth)

    def _unique_keys(self, node: yaml.MappingNode) -> None:
        """Refuse a mapping that holds one key twice.  Called once every scalar under it
        was checked (an integer's length before it is converted).  The common case, every
        key a distinct string, costs one set comprehension; otherwise _duplicate looks."""
        pairs = node.value
        if len({k.value for k, _ in pairs if k.tag == _STR}) < len(pairs):
            self._duplicate(pairs)

    def _duplicate(self, pairs: list) -> None:
        """A key of the str tag is its text; another scalar is built as PyYAML would (a
        merge key `<<` has no constructor: its text); a collection key cannot be hashed,
        which construction refuses anyway."""
        first: dict[Any, int] = {}
        for key, _value in pairs:
            if key.__class__ is not _Scalar:
                continue
            tag = key.tag
            build = None if tag == _STR else _BUILD_KEY.get(tag)
            value = key.value if build is None else build(_KEYS, key)
            line = key.start_mark.line + 1
            if value in first:
                raise ConfigError(self.path, None, f"line {line}: the key {key.value!r} appears "
                                  f"twice in one mapping (first at line {first[value]}); "
                                  "PyYAML would keep the last value, a forge shows the first",
                                  "keep one of them")
            first[value] = line

    def _scalar(self, node: yaml.ScalarNode) -> None:
        tag = node.tag
        if tag == _INT and len(node.value) > self.max_int_digits:
            digits = sum(c in _DIGITS for c in node.value)
            if digits > self.max_int_digits:
                raise ConfigError(self.path, None, f"an integer with {digits} digits "
                                  f"(limit {self.max_int_digits})", _HINT)
        elif tag not in SAFE_TAGS:
            self._tag(node)

    def _tag(self, node: yaml.Node) -> None:
        if node.tag not in SAFE_TAGS:
            mark = node.start_mark
            raise ConfigError(self.path, None, f"line {mark.line + 1}: the tag {node.tag!r} is "
                              "not allowed (only YAML's standard types: null, bool, int, "
                              "float, str, timestamp, seq, map)", _HINT)
