"""Bounded YAML loading: the attacks a pushed file can carry are refused quickly, as a
ConfigError naming the reason, through safeyaml and through the proposal and agent.yaml
loaders; ordinary files load exactly as yaml.safe_load reads them."""
from __future__ import annotations

import time

import pytest
import yaml

from janus_git import safeyaml
from janus_git.config import AGENT_PATH, config_from_text
from janus_git.errors import ConfigError
from janus_git.proposal import parse_proposal, shard_path

from conftest import ROOT, within

PID = "20261129-224708577-a05a72"
PROPOSAL = f"""\
id: {PID}
mission: STUDY-004-BETA
type: analysis
tool: shell
args:
- ls
- -la
- missions
rationale: List the missions directory to see which chunks remain for the archaeology pass.
created_at: '2026-11-29T22:47:08.577694Z'
created_by: janus-agent
digest: sha256:a3a90ce9f13e3dfa4a3341aa13853ea943a5fb934f0ba6d55e1fcd9c658a345c
risk: low
status: succeeded
note: ''
decision:
  rule: auto:whitelist
  by: janus-agent@localhost
  digest: sha256:a3a90ce9f13e3dfa4a3341aa13853ea943a5fb934f0ba6d55e1fcd9c658a345c
  at: '2026-11-29T22:47:09.102311Z'
  reason: analysis with a low-risk tool in beta mode
execution:
  started_at: '2026-11-29T22:47:09.412001Z'
  ended_at: '2026-11-29T22:47:09.871220Z'
  exit_code: 0
  limit_hit: null
  isolation: bwrap
  resources: {{cpu_s: 0.01, max_rss_kb: 3120, wall_s: 0.46}}
  output: logs/runs/{PID}.txt
  files: []
"""
PROPOSAL_PATH = shard_path(PID)


def _laughs(indent: str = "") -> str:
    """The classic billion laughs: nine levels of nine aliases, 10^9 nodes once expanded."""
    lines = [f'{indent}a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{indent}{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _flow(kind: str, n: int) -> str:
    return "[" * n + "]" * n if kind == "list" else "{a: " * n + "1" + "}" * n


def _block(kind: str, n: int) -> str:
    """N nested block collections: compact `- - - x`, or mappings indented one more a level."""
    if kind == "list":
        return "- " * n + "x\n"
    return "".join(" " * i + "a:\n" for i in range(n - 1)) + " " * (n - 1) + "b: 1\n"


# (name, the value put under `args:` of a proposal and under `approvers:` of agent.yaml, the
# reason).  A value on its own line is indented, so it nests inside the field.
ATTACKS = [
    ("billion laughs", "\n" + _laughs("  "), "too many nodes after expanding aliases "
     "(limit 100000)"),
    ("list 900 deep", _flow("list", 900), "nested deeper than 64 levels"),
    ("map 900 deep", _flow("map", 900), "nested deeper than 64 levels"),
    ("list 100,000 deep", _flow("list", 100_000), "nested deeper than 64 levels"),
    ("map 100,000 deep", _flow("map", 100_000), "nested deeper than 64 levels"),
    ("block list 100,000 deep", "\n  " + _block("list", 100_000), "nested deeper than 64 levels"),
    ("integer of 100,000 digits", "9" * 100_000, "an integer with 100000 digits (limit 100)"),
    ("2 MB", "x" * 2_000_000, "too large: 2,0"),
    ("python tag", "!!python/object/apply:os.system [echo hi]", "the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    ("alias to itself", "&a [*a]", "a structure that contains itself"),
]


def _refused(text: str, path: str = "x.yaml", **limits: int) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        safeyaml.load(text, path, **limits)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    return e.value


@pytest.fixture(params=["libyaml", "pure-python"])
def loader(request, monkeypatch):
    """Run a test with libyaml and again with the pure-Python classes PyYAML falls back to."""
    if request.param == "pure-python":
        monkeypatch.setattr(safeyaml, "_Loader", yaml.SafeLoader)
        monkeypatch.setattr(safeyaml, "_BLIND", 200)
    return request.param


def test_billion_laughs_is_refused_at_once(loader):
    start = time.perf_counter()
    e = _refused(_laughs())
    assert time.perf_counter() - start < within(1)
    assert e.problem == "too many nodes after expanding aliases (limit 100000)"


@pytest.mark.parametrize("kind", ["list", "map"])
@pytest.mark.parametrize("n", [65, 900, 100_000])
def test_deep_flow_nesting_is_refused(loader, kind, n):
    start = time.perf_counter()
    assert _refused(_flow(kind, n)).problem == "nested deeper than 64 levels"
    assert time.perf_counter() - start < within(1)


@pytest.mark.parametrize("kind", ["list", "map"])
@pytest.mark.parametrize("n", [65, 900])
def test_deep_block_nesting_is_refused(loader, kind, n):
    assert _refused(_block(kind, n)).problem == "nested deeper than 64 levels"


def test_a_100000_deep_compact_block_list_is_refused(loader):
    """`- - - ... x`: 200 KB that segfaults libyaml's composer when it is not measured first."""
    assert _refused(_block("list", 100_000)).problem == "nested deeper than 64 levels"


@pytest.mark.parametrize("kind", ["list", "map"])
def test_64_levels_still_load(loader, kind):
    assert safeyaml.load(_flow(kind, 64), "x.yaml") == yaml.safe_load(_flow(kind, 64))
    assert safeyaml.load(_block(kind, 64), "x.yaml") == yaml.safe_load(_block(kind, 64))


def test_depth_counts_what_aliases_bring_in(loader):
    text = "a: &a " + _flow("list", 40) + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n"
    assert _refused(text).problem == "nested deeper than 64 levels"
    text = "a: &a " + _flow("list", 40) + "\nb: " + "[" * 20 + "*a" + "]" * 20 + "\n"
    assert safeyaml.load(text, "x.yaml") == yaml.safe_load(text)


def test_node_limit_counts_aliases_in_full(loader):
    text = "a: &a [1, 2, 3, 4]\nb: [*a, *a, *a]\n"  # 1 + (1 + 5) + (1 + 1 + 3 * 5) = 24 nodes
    assert safeyaml.load(text, "x.yaml", max_nodes=24) == yaml.safe_load(text)
    assert "(limit 23)" in _refused(text, max_nodes=23).problem


def test_a_long_flat_list_is_refused_before_it_is_composed(loader):
    text = "[" + "1, " * 150_000 + "1]"
    start = time.perf_counter()
    assert _refused(text).problem == "too many nodes after expanding aliases (limit 100000)"
    if loader == "libyaml":  # the pure-Python parser takes ~1 s to stream 100,000 events
        assert time.perf_counter() - start < within(1)


def test_integers_are_bounded(loader):
    assert _refused("n: " + "9" * 100_000).problem == "an integer with 100000 digits (limit 100)"
    assert _refused("n: -" + "9" * 101).problem == "an integer with 101 digits (limit 100)"
    assert safeyaml.load("n: " + "9" * 100, "x.yaml") == {"n": int("9" * 100)}
    assert safeyaml.load("n: 1_000", "x.yaml") == {"n": 1000}
    assert safeyaml.load("n: '" + "9" * 5000 + "'", "x.yaml") == {"n": "9" * 5000}


def test_size_is_checked_before_parsing(loader):
    e = _refused(b"a: [" + b"x" * 2_000_000)  # not even valid YAML: never parsed
    assert e.problem == "too large: 2,000,004 bytes (limit 1,048,576)"
    e = _refused("a: " + "é" * 600_000)  # counted in UTF-8 bytes
    assert e.problem == "too large: 1,200,003 bytes (limit 1,048,576)"
    assert safeyaml.load("a: " + "x" * 1_000_000, "x.yaml") == {"a": "x" * 1_000_000}


@pytest.mark.parametrize("text,tag", [
    ("a: !!python/object/apply:os.system [echo hi]",
     "tag:yaml.org,2002:python/object/apply:os.system"),
    ("a: !!python/name:os.system", "tag:yaml.org,2002:python/name:os.system"),
    ("a: !!set {x: null}", "tag:yaml.org,2002:set"),
    ("a: !!binary aGk=", "tag:yaml.org,2002:binary"),
    ("a: [1, !custom 2]", "!custom"),
])
def test_only_standard_tags(loader, text, tag):
    assert _refused(text).problem.startswith(f"line 1: the tag {tag!r} is not allowed")


def test_explicit_standard_tags_load(loader):
    text = "a: !!str 12\nb: !!int '7'\nc: !!float 1\nd: !!map {x: !!seq [1]}\nt: 2026-01-02\n"
    assert safeyaml.load(text, "x.yaml") == yaml.safe_load(text)


def test_a_recursive_alias_is_refused(loader):
    assert "contains itself" in _refused("a: &a [1, *a]").problem
    assert "contains itself" in _refused("&m {k: *m}").problem


def test_a_small_anchor_and_alias_still_load(loader):
    text = ("defaults: &d {timeout_s: 5, memory_mb: 256}\n"
            "shell: {limits: *d}\npython: {limits: {<<: *d, timeout_s: 9}}\n")
    assert safeyaml.load(text, "x.yaml") == yaml.safe_load(text)
    assert safeyaml.load(text, "x.yaml")["python"]["limits"] == {"timeout_s": 9,
                                                                 "memory_mb": 256}


def test_ordinary_files_load_as_safe_load_reads_them(loader):
    for text in (PROPOSAL, (ROOT / AGENT_PATH).read_text(), (ROOT / AGENT_PATH).read_bytes()):
        assert safeyaml.load(text, "x.yaml") == yaml.safe_load(text)
    assert safeyaml.load("", "x.yaml") is None
    assert safeyaml.load("# nothing\n", "x.yaml") is None


def test_a_large_ordinary_file_takes_the_measured_path_and_loads(loader):
    """Over _BLIND structure characters the events are streamed first: same result."""
    text = "".join(f"- {{id: {i}, tags: [a, b], note: 'x: y'}}\n" for i in range(300))
    assert safeyaml.load(text, "x.yaml") == yaml.safe_load(text)


@pytest.mark.parametrize("text,words", [
    ("a: [1\n", "not valid YAML at line 2:"),
    ("a: 1\n---\nb: 2\n", "not valid YAML at line 2: but found another document"),
    ("a: *nowhere\n", "not valid YAML at line 1: found undefined alias"),
    ("a: 0000-01-01\n", "a value YAML cannot convert: year 0 is out of range"),
    (b"a: \xff\n", "not valid YAML"),
])
def test_broken_files_are_config_errors(loader, text, words):
    assert words in str(_refused(text))


def _proposal_with_args(value: str) -> str:
    return PROPOSAL.replace("args:\n- ls\n- -la\n- missions\n", f"args: {value}\n")


@pytest.mark.parametrize("value,reason", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_parse_proposal_refuses_each_attack(value, reason):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        parse_proposal(_proposal_with_args(value), PROPOSAL_PATH)
    assert time.perf_counter() - start < within(1)
    assert str(e.value).startswith(f"{PROPOSAL_PATH}: ") and reason in str(e.value), str(e.value)


@pytest.mark.parametrize("value,reason", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_config_from_text_refuses_each_attack(value, reason):
    text = (ROOT / AGENT_PATH).read_text() + f"\nextra: {value}\n"
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        config_from_text(text)
    assert time.perf_counter() - start < within(1)
    assert str(e.value).startswith(f"{AGENT_PATH}: ") and reason in str(e.value), str(e.value)


def test_the_ordinary_proposal_still_parses():
    p = parse_proposal(PROPOSAL, PROPOSAL_PATH)
    assert p.args == ["ls", "-la", "missions"]
    assert p.execution["resources"]["max_rss_kb"] == 3120
    small_alias = _proposal_with_args("[&f missions, *f]")
    assert parse_proposal(small_alias, PROPOSAL_PATH).args == ["missions", "missions"]


# Duplicate keys: PyYAML keeps the last value, a forge's file view shows the reviewer the
# first (and so does a person reading top to bottom).  Every mapping, at any depth, in every
# file janus-git parses, refuses them.
@pytest.mark.parametrize("text,key,line,first", [
    ("a: 1\nb: 2\na: 3\n", "a", 3, 1),
    ("top:\n  x: 1\n  y: 2\n  x: 3\n", "x", 4, 2),
    ("- {k: 1, k: 2}\n", "k", 1, 1),
    ("'a': 1\na: 2\n", "a", 2, 1),               # quoted or not, the same string
    ('"\\x61": 1\na: 2\n', "a", 2, 1),           # an escape that spells the same string
    ("yes: 1\ntrue: 2\n", "true", 2, 1),          # both are the boolean True to PyYAML
    ("1: a\n0x1: b\n", "0x1", 2, 1),              # both are the integer 1
    ("1: a\n1.0: b\n", "1.0", 2, 1),              # 1 == 1.0 as a dict key
    ("~: a\nnull: b\n", "null", 2, 1),
    ("<<: {a: 1}\n<<: {b: 2}\n", "<<", 2, 1),
])
def test_a_duplicate_key_is_refused_naming_the_key_and_its_lines(loader, text, key, line, first):
    e = _refused(text)
    assert e.problem.startswith(f"line {line}: the key {key!r} appears twice in one mapping "
                                f"(first at line {first})"), e.problem


def test_keys_that_only_look_alike_or_repeat_in_other_mappings_load(loader):
    for text in ("a: 1\nA: 2\n'1': x\n1: y\n",          # distinct keys to PyYAML too
                 "x: {k: 1}\ny: {k: 2}\nz: [{k: 1}, {k: 2}]\n",
                 "base: &b {a: 1, b: 2}\nover: {<<: *b, a: 9}\n",  # a merge is not a duplicate
                 "a: &k {n: 1}\nb: *k\nc: *k\n"):
        assert safeyaml.load(text, "x.yaml") == yaml.safe_load(text)


def test_a_proposal_with_a_duplicate_field_is_invalid():
    """The classic: a reviewer sees the first `args`, the daemon would run the last."""
    text = PROPOSAL.replace("rationale:", "args:\n- cat\n- .git/config\nrationale:")
    with pytest.raises(ConfigError) as e:
        parse_proposal(text, PROPOSAL_PATH)
    assert str(e.value).startswith(f"{PROPOSAL_PATH}: line 9: the key 'args' appears twice "
                                   "in one mapping (first at line 5)"), str(e.value)


def test_a_proposal_with_a_duplicate_nested_key_is_invalid():
    text = PROPOSAL.replace("  rule: auto:whitelist\n", "  rule: auto:whitelist\n  rule: x\n")
    with pytest.raises(ConfigError, match="the key 'rule' appears twice"):
        parse_proposal(text, PROPOSAL_PATH)


def test_a_proposal_the_fast_reader_would_read_is_refused_the_slow_way_too():
    from janus_git import fastrow
    text = PROPOSAL.replace("risk: low\n", "risk: low\nrisk: high\n")
    assert fastrow.fast_proposal(PROPOSAL_PATH, text.encode()) is None
    with pytest.raises(ConfigError, match="the key 'risk' appears twice"):
        parse_proposal(text, PROPOSAL_PATH)


def test_agent_yaml_with_a_duplicate_key_is_invalid():
    text = (ROOT / AGENT_PATH).read_text() + "\napprovers: []\n"
    with pytest.raises(ConfigError) as e:
        config_from_text(text)
    assert str(e.value).startswith(f"{AGENT_PATH}: line ") and "'approvers' appears twice" \
        in str(e.value)


def test_a_mission_with_a_duplicate_key_is_invalid():
    from janus_git.missions import parse_mission
    text = (ROOT / "missions" / "OPT-001-BETA.yaml").read_text() + "status: done\n"
    with pytest.raises(ConfigError, match="the key 'status' appears twice"):
        parse_mission(text, "missions/x.yaml")
