"""A fast reader for the index: the columns of a proposal file, for the strict subset of YAML
that janus-git itself writes, or None to say "read it the slow way".

Rebuilding the index of 100,000 proposals with PyYAML takes ~30 s, nearly all of it in
PyYAML's Python constructor (libyaml only scans).  This reader accepts a file only when every
line is one of the few shapes `Proposal.to_yaml` emits (block mappings and sequences of plain
or single-quoted scalars, `{}`, `[]`) and the record validates; anything else — a comment, a
double-quoted or block scalar, an anchor, a flow collection, an unknown or duplicate field, a
wrong type, odd indentation — returns None and the caller parses the file with PyYAML, which
also writes the exact error.  So a row from here is always the row the slow path would give
(tests/test_store_index.py checks that differentially).
"""
from __future__ import annotations

import functools
import re
from typing import Any

import yaml

_STR_TAG = "tag:yaml.org,2002:str"
_SQ = re.compile(r"'((?:[^']|'')*)'\Z")
# what may start a plain scalar here (conservative: no YAML indicator characters)
_PLAIN_START = re.compile(r"[A-Za-z0-9_./<(~$^=+]|-[^\s]")
# characters YAML does not allow unescaped, plus tabs and CR (never emitted by the dumper)
# (NEL, LS and PS are line breaks to YAML 1.1; a BOM only belongs at the start)
_UNSAFE_ASCII = re.compile("[^\n\x20-\x7e]")
_UNSAFE = re.compile("[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd"
                     "\U00010000-\U0010ffff]")


class _Slow(Exception):
    """Not in the strict subset: read this file with PyYAML."""


def _plain_ok(v: str) -> bool:
    return (bool(_PLAIN_START.match(v)) and ": " not in v and " #" not in v
            and not v.endswith((":", " ")) and "#" not in v[:1])


def _implicit_tag(v: str) -> str:
    """The tag PyYAML's SafeLoader gives the plain scalar V (what Resolver.resolve does)."""
    for tag, regexp in _IMPLICIT.get(v[:1], ()):
        if regexp.match(v):
            return tag
    return _STR_TAG


_IMPLICIT = yaml.resolver.Resolver.yaml_implicit_resolvers


@functools.lru_cache(maxsize=4096)
def _scalar(v: str) -> tuple[str, str | None]:
    """(kind, string value or None) of a one-line scalar: kind is str, other, dict, list."""
    if v == "{}":
        return "dict", None
    if v == "[]":
        return "list", None
    m = _SQ.match(v)
    if m:
        return "str", m.group(1).replace("''", "'")
    if v.startswith("'"):
        raise _Slow
    if not _plain_ok(v):
        raise _Slow
    tag = _implicit_tag(v)
    if tag == _STR_TAG:
        return "str", v
    if tag == "tag:yaml.org,2002:null":
        return "null", None
    return "other", None


# The nested blocks the dumper writes (mappings and sequences of one-line scalars, up to four
# levels deep), as one regular expression: checking a block is then a single C-level match.
_SCAL = (r"(?:'(?:[^'\n]|'')*'|\{\}|\[\]|(?:[A-Za-z0-9_./<(~$^=+]|-(?=[^\s]))"
         r"(?:[^\n:#]|:(?=[^ \n])|(?<=[^ ])#)*)")
_NKEY = r"[A-Za-z_][A-Za-z0-9_.-]*"


def _seq_re(n: int) -> str:
    return rf"(?: {{{n}}}- {_SCAL}\n)+"


def _map_re(n: int, depth: int) -> str:
    nested = (rf"(?:{_map_re(n + 2, depth - 1)}|{_seq_re(n)}|{_seq_re(n + 2)})?"
              if depth else "")
    return rf"(?: {{{n}}}{_NKEY}:(?: {_SCAL}\n|\n{nested}))+"


_BLOCK = re.compile(rf"{_map_re(2, 3)}|{_seq_re(0)}|{_seq_re(2)}")
_CHUNK = re.compile(r"([a-z_]+):(?: ([^\n]*))?\n((?:[ -][^\n]*\n)*)")


def _fold(first: str, rest: list[str]) -> str:
    """A multi-line flow scalar folded the way YAML folds it (no blank lines allowed)."""
    parts = [first.rstrip(" ")] + [r.strip(" ") for r in rest]
    if any(p == "" for p in parts):
        raise _Slow
    return " ".join(parts)


def _top_value(value: str | None, body: str) -> tuple[str, str | None]:
    """(kind, str value) of a top-level field: VALUE after the colon, BODY the indented
    lines under it."""
    if value is None:
        if not body:
            return "null", None
        if not _BLOCK.fullmatch(body):
            raise _Slow
        return ("list" if body.lstrip(" ").startswith("- ") else "dict"), None
    if not body:
        return _scalar(value)
    cont = body[:-1].split("\n")
    if any(not c.startswith(" ") for c in cont):
        raise _Slow
    if value.startswith("'"):  # a long single-quoted string, folded by the dumper
        m = _SQ.match(_fold(value, cont))
        if not m:
            raise _Slow
        return "str", m.group(1).replace("''", "'")
    if not _plain_ok(value) or any("#" in c or ": " in c or c.endswith(":")
                                   or not _PLAIN_START.match(c.lstrip(" ")) for c in cont):
        raise _Slow
    whole = _fold(value, cont)
    if _implicit_tag(whole) != _STR_TAG:
        raise _Slow
    return "str", whole


def parse_top(text: bytes) -> dict[str, tuple[str, str | None]] | None:
    """Top-level fields of TEXT as {name: (kind, str value)}, or None if not in the subset."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not s or " \n" in s or not s.endswith("\n"):
        return None
    if (_UNSAFE_ASCII if s.isascii() else _UNSAFE).search(s):
        return None
    out: dict[str, tuple[str, str | None]] = {}
    pos = 0
    try:
        for m in _CHUNK.finditer(s):
            if m.start() != pos or m.group(1) in out:
                return None
            pos = m.end()
            out[m.group(1)] = _top_value(m.group(2), m.group(3))
    except _Slow:
        return None
    return out if pos == len(s) else None


_TYPES: dict[str, tuple[str, ...]] = {
    "id": ("str",), "mission": ("str",), "type": ("str",), "tool": ("str",),
    "rationale": ("str",), "created_at": ("str",), "created_by": ("str",),
    "digest": ("str",), "status": ("str",), "risk": ("str",), "note": ("str",),
    "decision": ("dict",), "execution": ("dict",), "duplicate_of": ("str", "null"),
    "args": ("list", "dict", "str", "null"), "approvals": ("list",),
}
_REQUIRED = ("id", "mission", "type", "tool", "rationale", "created_at", "created_by",
             "digest", "status")


def fast_columns(path: str, text: bytes, statuses: frozenset[str]) -> dict[str, Any] | None:
    """The index columns of a valid proposal file in the strict subset, else None."""
    top = parse_top(text)
    if top is None:
        return None
    for name, (kind, _) in top.items():
        allowed = _TYPES.get(name)
        if allowed is None or kind not in allowed:
            return None
    if any(name not in top for name in _REQUIRED):
        return None
    v = {name: value for name, (_, value) in top.items()}
    pid = v["id"]
    if v["status"] not in statuses or path != f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml":
        return None
    return {"id": pid, "path": path, "status": v["status"], "mission": v["mission"],
            "type": v["type"], "tool": v["tool"], "risk": v.get("risk", "unknown"),
            "created_at": v["created_at"], "created_by": v["created_by"], "digest": v["digest"],
            "note": v.get("note", ""), "error": None}
