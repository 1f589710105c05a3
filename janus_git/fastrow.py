"""A fast YAML reader for the proposal files janus-git writes: the mapping PyYAML's safe loader
would give, for the strict subset of YAML that `Proposal.to_yaml` emits, or None to say "read
it the slow way".

Rebuilding the index of 100,000 proposals with PyYAML takes ~30 s, nearly all of it in
PyYAML's Python constructor (libyaml only scans).  This reader accepts a file only when every
line is one of the few shapes the dumper writes: block mappings and sequences (nested, of
one-line scalars), plain and quoted scalars without escapes, `{}`, `[]`, and long top-level
strings folded over lines.  Anything else (a comment, an escape, a block scalar, an anchor, a
flow collection, a tab, a duplicate key, odd indentation, a date) returns None and the caller
parses the file with PyYAML, which also writes the exact error.  Scalars are typed by PyYAML's
own resolver table and built by its own constructor, so `1:20`, `yes` or `0o17` mean here what
they mean there.

It knows nothing of the proposal's fields: what it returns goes through
`proposal.proposal_from_dict`, the one check driven by the field table, and the index makes
its row from the Proposal with the same function on both paths.  A new field in the table
needs nothing here.  tests/test_fastrow.py checks `load(text) == yaml.safe_load(text)` on every
shape the dumper writes and on random edits of them.
"""
from __future__ import annotations

import math
import re
from typing import Any

import yaml

from . import proposal, safeyaml
from .errors import ConfigError

_STR_TAG = "tag:yaml.org,2002:str"
_SQ = re.compile(r"'((?:[^']|'')*)'\Z")
_DQ = re.compile(r'"([^"\\]*)"\Z')  # double-quoted without escapes: its content, as it is
# what may start a plain scalar here (conservative: no YAML indicator characters; letters
# beyond ASCII, as the dumper writes them with allow_unicode)
_PLAIN_START = re.compile(r"[A-Za-z0-9_./<(~$^=+]|[^\x00-\xbf]|-[^\s]")
# characters YAML does not allow unescaped, plus tabs and CR (never emitted by the dumper)
# (NEL, LS and PS are line breaks to YAML 1.1; a BOM only belongs at the start); a class of
# the few refused, not of the many allowed: it compiles in microseconds, not milliseconds
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")
_ASCII_UNSAFE = bytes([*range(0x0a), *range(0x0b, 0x20), 0x7f])
# a top-level field: its name, what follows the colon (trailing spaces, which YAML drops, left
# out), and the indented lines under it; or any other line (the fourth group), so that the
# matches cover the text without a gap
_CHUNK = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(?: +([^\n]*[^ \n]))? *\n((?:[ -][^\n]*\n)*)"
                    r"|([^\n]*\n)")
_IMPLICIT = yaml.resolver.Resolver.yaml_implicit_resolvers
_CONSTRUCT = yaml.constructor.SafeConstructor()
_BUILD = {"tag:yaml.org,2002:int": _CONSTRUCT.construct_yaml_int,
          "tag:yaml.org,2002:float": _CONSTRUCT.construct_yaml_float,
          "tag:yaml.org,2002:bool": _CONSTRUCT.construct_yaml_bool}
_MAX_DEPTH = 16                       # well inside safeyaml's bound
_MAX_LINES = safeyaml.MAX_NODES // 3  # a line holds at most three nodes (`- key: value`)


class _Slow(Exception):
    """Not in the strict subset: read this file with PyYAML."""


def load(text: bytes) -> dict[str, Any] | None:
    """The top-level mapping of TEXT as PyYAML would read it, or None if TEXT is not in the
    subset (or not within safeyaml's bounds, which the slow path reports)."""
    if len(text) > safeyaml.MAX_BYTES or not text.endswith(b"\n") or (
            len(text) > 2 * _MAX_LINES and text.count(b"\n") > _MAX_LINES):
        return None
    if text.isascii():  # (the common case: deleting the control characters is quickest)
        if len(text.translate(None, _ASCII_UNSAFE)) != len(text):
            return None
        s = text.decode("ascii")
    else:
        try:
            s = text.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if _UNSAFE.search(s):
            return None
    out: dict[str, Any] = {}
    try:
        for name, value, body, other in _CHUNK.findall(s):
            if other or name in out or (name not in _KEYS_OK and not _str_key(name)):
                return None
            if body:
                out[name] = _top_value(value, body) if value else _block(body)
            elif value:
                known = _KNOWN.get(value, _scalar)
                out[name] = _scalar(value) if known is _scalar else known
            else:  # `key:` alone is null
                out[name] = None
    except _Slow:
        return None
    return out


def replace_top(text: bytes, values: dict[str, str]) -> bytes:
    """TEXT, which load() reads, with each top-level field named in VALUES set to that
    one-line YAML scalar (its text, quoted as needed) in its place, or added at the end;
    every other line as it was."""
    seen: set[str] = set()

    def put(m: re.Match) -> str:
        seen.add(m.group(1))
        return f"{m.group(1)}: {values[m.group(1)]}\n"
    # a top-level field is its line at column 0 and the indented or `- ` lines under it
    field = re.compile(rf"^({'|'.join(map(re.escape, values))}):.*\n(?:[ -].*\n)*", re.M)
    out = field.sub(put, text.decode("utf-8"))
    out += "".join(f"{name}: {v}\n" for name, v in values.items() if name not in seen)
    return out.encode("utf-8")


def fast_proposal(path: str, text: bytes) -> proposal.Proposal | None:
    """The proposal in TEXT, when it is in the subset and valid; None sends the caller to
    parse_proposal (which writes the exact error for a broken file)."""
    data = load(text)
    if data is None:
        return None
    try:
        return proposal.proposal_from_dict(data, path)
    except ConfigError:
        return None


# -- scalars ----------------------------------------------------------------------------------
def _plain_ok(v: str) -> bool:
    return (bool(_PLAIN_START.match(v)) and ": " not in v and " #" not in v
            and not v.endswith((":", " ")) and "#" not in v[:1])


def _implicit_tag(v: str) -> str:
    """The tag PyYAML's SafeLoader gives the plain scalar V (what Resolver.resolve does)."""
    for tag, regexp in _IMPLICIT.get(v[:1], ()):
        if regexp.match(v):
            return tag
    return _STR_TAG


def _scalar(v: str) -> Any:
    """The value of the one-line scalar V (a fresh object for `{}` and `[]`)."""
    first = v[0]
    if first == "'":  # the dumper's quoted strings: ids' dates, empty notes (no cache: unique)
        inner = v[1:-1]
        if v[-1] == "'" and len(v) > 1 and "'" not in inner:
            return inner
        m = _SQ.match(v)
        if m is None:
            raise _Slow
        return m.group(1).replace("''", "'")
    if first == "{" or first == "[":
        if v == "{}":
            return {}
        if v == "[]":
            return []
        raise _Slow
    if first == '"':
        m = _DQ.match(v)
        if m is None:
            raise _Slow
        return m.group(1)
    return _plain(v)


def _plain(v: str) -> Any:
    """The value of the plain scalar V: what PyYAML's resolver and constructor make of it
    (remembered in _KNOWN: the same few words and numbers come back in every file)."""
    if not _plain_ok(v):
        raise _Slow
    tag = _implicit_tag(v)
    if tag == _STR_TAG:
        value: Any = v
    elif tag == "tag:yaml.org,2002:null":
        value = None
    else:
        build = _BUILD.get(tag)
        if build is None or len(v) > safeyaml.MAX_INT_DIGITS:  # a date, a merge key, `=`
            raise _Slow  # (and a number safeyaml would measure: the slow path's to refuse)
        value = build(yaml.ScalarNode(tag, v))
        if isinstance(value, float) and not math.isfinite(value):
            raise _Slow  # nan is unequal to itself: no row should hang on one
    if len(_KNOWN) >= 8192:  # ids and digests pass once: start again with what recurs
        _KNOWN.clear()
    _KNOWN[v] = value
    return value


_KNOWN: dict[str, Any] = {}  # plain scalar -> its (immutable) value


# -- top-level fields -------------------------------------------------------------------------
def _fold(first: str, rest: list[str]) -> str:
    """A multi-line flow scalar folded the way YAML folds it (no blank lines allowed)."""
    parts = [first.rstrip(" ")] + [r.strip(" ") for r in rest]
    if any(p == "" for p in parts):
        raise _Slow
    return " ".join(parts)


def _top_value(value: str, body: str) -> Any:
    """The value of a top-level field whose VALUE after the colon goes on over BODY, the
    indented lines under it: a long string the dumper folded."""
    cont = body[:-1].split("\n")
    if any(not c.startswith(" ") for c in cont):
        raise _Slow
    if value.startswith("'"):  # a long single-quoted string, folded by the dumper
        m = _SQ.match(_fold(value, cont))
        if not m:
            raise _Slow
        return m.group(1).replace("''", "'")
    if not _plain_ok(value) or any("#" in c or ": " in c or c.endswith(":")
                                   or not _PLAIN_START.match(c.lstrip(" ")) for c in cont):
        raise _Slow
    whole = _fold(value, cont)
    if _implicit_tag(whole) != _STR_TAG:
        raise _Slow
    return whole


# -- blocks -----------------------------------------------------------------------------------
# One pass over a block's lines with a stack of the open collections (their indent, and the
# collection).  A key with nothing after its colon waits for the next line: two columns
# further in, or a `- ` at its own column (PyYAML's indentless sequence), opens its value;
# anything else makes it null.  `- key: value` opens a mapping two columns in.  Every other
# shape (a continued scalar, `- - x`, odd indentation) is not in the subset.
_ROW = re.compile(r"( *)(- )?(?:([A-Za-z_][A-Za-z0-9_.-]*):(?: +([^\n]*[^ \n]))?"
                  r"|([^\n]*[^ \n])?) *\n")


def _block(body: str) -> Any:
    rows = _ROW.findall(body)
    at = len(rows[0][0])  # the open collection's indent, and the collection
    into: Any = [] if rows[0][1] else {}
    if at not in (0, 2) or (at == 0 and not rows[0][1]):
        raise _Slow
    stack = [(at, into)]
    waiting: tuple[dict, str, int] | None = None
    for spaces, dash, key, value, scalar in rows:
        n = len(spaces)
        if waiting is not None:
            owner, name, where = waiting
            waiting = None
            if n == where + 2 or (n == where and dash):
                if len(stack) > _MAX_DEPTH:
                    raise _Slow
                at, into = n, [] if dash else {}
                owner[name] = into
                stack.append((at, into))
        if n != at or (not dash and into.__class__ is list):
            while at > n or (at == n and not dash and into.__class__ is list):
                stack.pop()
                if not stack:
                    raise _Slow
                at, into = stack[-1]
            if at != n:
                raise _Slow
        if dash:
            if into.__class__ is not list:
                raise _Slow
            if not key:
                if not scalar or scalar.startswith("- "):
                    raise _Slow  # (`- ` alone is null, `- - x` a list in a list)
                known = _KNOWN.get(scalar, _scalar)
                into.append(_scalar(scalar) if known is _scalar else known)
                continue
            item: dict[str, Any] = {}
            into.append(item)
            at, into = n + 2, item
            stack.append((at, into))
        elif not key or into.__class__ is not dict:
            raise _Slow
        if key in into or (key not in _KEYS_OK and not _str_key(key)):
            raise _Slow
        if value:
            known = _KNOWN.get(value, _scalar)
            into[key] = _scalar(value) if known is _scalar else known
        else:
            into[key] = None
            waiting = (into, key, at)
    return stack[0][1]


def _str_key(key: str) -> bool:
    """Whether PyYAML reads KEY as a string (not `on`, `null`, `yes`...)."""
    if _implicit_tag(key) != _STR_TAG:
        return False
    if len(_KEYS_OK) < 4096:
        _KEYS_OK.add(key)
    return True


_KEYS_OK: set[str] = set()
