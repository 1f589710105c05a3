"""The tool registry: dispatch to runners, manual (external) tools in the sandbox, limits from
agent.yaml, and logs/tool_use.jsonl lines that validate against the published schema."""
from __future__ import annotations

import json
import socket
import threading
import time
import types
from pathlib import Path

import jsonschema
import pytest
import yaml

from janus_git import audit, tools
from janus_git.config import config_from_text
from janus_git.lifecycle import new_proposal
from janus_git.tools import RUNNERS, RunResult, ToolRefused

from conftest import git, within

PROJECT = Path(__file__).resolve().parent.parent
HAVE_BWRAP = tools.doctor()["bwrap_usable"]
ISOLATIONS = [pytest.param("bwrap", marks=pytest.mark.skipif(not HAVE_BWRAP, reason="no bwrap")),
              "reduced"]


def config(limits: dict | None = None, **tool_specs):
    data = yaml.safe_load((PROJECT / "state" / "agent.yaml").read_text())
    data["limits"] = {**data["limits"], "timeout_s": 10, "memory_mb": 256, **(limits or {})}
    for name, spec in tool_specs.items():
        data["tools"][name] = {**data["tools"].get(name, {}), **spec}
    return config_from_text(yaml.safe_dump(data))


def prop(tool: str, args, type_: str = "analysis"):
    return new_proposal(mission="M-TEST", type_=type_, tool=tool, args=args, rationale="t",
                        created_by="test")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A real repository: the in-process tools read committed blobs (tools/blobs.py)."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.json").write_text('{"a": [1, 2, 3]}\n')
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "docs")
    return root


def test_every_shipped_tool_has_a_runner():
    cfg = config()
    for name, spec in cfg.tools.items():
        assert spec.get("runner", name) in RUNNERS, name
    assert {"python", "curl", "git", "rg", "jq", "sqlite3"} <= {
        n for n, s in cfg.tools.items() if s.get("runner") == "external" and not s["auto_exec"]}
    assert cfg.tools["shell"]["auto_exec"] and cfg.tools["file_chunker"]["auto_exec"]
    assert RUNNERS["node_generator"] == "janus_git.tools.node_generator"
    assert RUNNERS["process_chunk"] == "janus_git.tools.process_chunk"
    assert RUNNERS["llama_bench"] == "janus_git.tools.llama_bench"


def test_an_agent_yaml_naming_the_old_runner_name_still_runs_llama_bench():
    """`runner: optimization_experiment` (before the runner took its tool's name) is read as
    llama_bench: a repository made then keeps working."""
    assert tools.runner_name({"runner": "optimization_experiment"}, "llama_bench") == \
        "llama_bench"
    assert tools.runner_name({}, "llama_bench") == "llama_bench"
    cfg = config()
    cfg.tools["llama_bench"]["runner"] = "optimization_experiment"
    spec, runner = tools._runner(prop("llama_bench", {"threads": 1, "batch": 32,
                                                      "n_ctx": 256}), cfg)
    assert runner.__name__ == "janus_git.tools.llama_bench"


def test_unknown_tool_is_refused_and_execute_does_not_raise(repo):
    p = prop("nmap", ["-sS", "10.0.0.0/8"])
    with pytest.raises(ToolRefused, match="unknown tool 'nmap'; registered tools: "):
        tools.check(p, config(), repo)
    res = tools.execute(p, config(), repo)
    assert res.status == "failed" and res.isolation == "none" and "unknown tool" in res.error
    audit.validate_line(tools.tool_use_line(p, res))


def test_unknown_runner_and_uninstalled_runner_module(repo, monkeypatch):
    cfg = config(ghost={"risk": "low", "runner": "teleport"})
    with pytest.raises(ToolRefused, match="runner 'teleport', which janus-git does not have"):
        tools.check(prop("ghost", []), cfg, repo)
    monkeypatch.setitem(RUNNERS, "teleport", "janus_git.tools.no_such_module_xyz")
    with pytest.raises(ToolRefused, match="runner 'teleport' is not installed"):
        tools.check(prop("ghost", []), cfg, repo)


def test_a_runner_may_be_an_object(repo, monkeypatch):
    seen = {}

    def execute(proposal, config, root, *, cancel, on_start, context):
        seen["context"] = context
        return RunResult("succeeded", 0, None, "in-process", {}, b"ok", {"nodes/x.yaml": b"x"},
                         ["fake"], {}, "a", "b")

    fake = types.SimpleNamespace(check=lambda p, c, r: None, execute=execute)
    monkeypatch.setitem(RUNNERS, "fake", fake)
    cfg = config(fakey={"risk": "low", "runner": "fake"})
    res = tools.execute(prop("fakey", []), cfg, repo, context="CTX")
    assert res.output == b"ok" and seen["context"] == "CTX"
    assert tools.tool_use_line(prop("fakey", []), res)["files"] == ["nodes/x.yaml"]


def test_a_crashing_runner_becomes_a_failed_run(repo, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setitem(RUNNERS, "boom", types.SimpleNamespace(check=lambda *a: None,
                                                               execute=boom))
    res = tools.execute(prop("b", []), config(b={"risk": "low", "runner": "boom"}), repo)
    assert res.status == "failed" and res.error == "tool crashed: RuntimeError: kaboom"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_python_tool_runs_sandboxed_without_the_daemons_secrets(repo, monkeypatch, isolation):
    monkeypatch.setenv("JANUS_SECRET", "s3cr3t-token")
    p = prop("python", ["-c", "import os\nfor k, v in os.environ.items(): print(k, v)"])
    tools.check(p, config(), repo)
    res = tools.execute(p, config(), repo, isolation=isolation)
    assert res.status == "succeeded" and res.isolation == isolation
    assert b"s3cr3t" not in res.output and b"JANUS" not in res.output
    assert res.argv[0] == "python3"


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("code,limit,limits", [
    ("a = []\nwhile True: a.append(b'x' * 10**7)", "memory", {"memory_mb": 256}),
    ("while True: pass", "cpu", {"timeout_s": 4, "cpu_percent": 25}),  # 1 CPU second
    ("import time; time.sleep(30)", "timeout", {"timeout_s": 1}),
    ("import os\nf = open(os.environ['TMPDIR'] + '/w', 'wb')\n"
     "for _ in range(200): f.write(b'x' * 2**20)", "disk", {"disk_write_mb": 50}),
    ("import os, time\nfor _ in range(1000):\n    if os.fork() == 0: time.sleep(30)\n"
     "time.sleep(30)", "pids", {"pids": 20}),
])
def test_limits_come_from_agent_yaml_and_the_run_fails_with_the_limit_named(
        repo, isolation, code, limit, limits):
    cfg = config(python={"limits": limits})
    p = prop("python", ["-c", code])
    res = tools.execute(p, cfg, repo, isolation=isolation)
    assert res.status == "failed" and res.limit_hit == limit, (res.error, res.output[-200:])
    assert res.limits["memory_mb"] == limits.get("memory_mb", 256)
    line = tools.tool_use_line(p, res)
    audit.validate_line(line)
    assert line["limit_hit"] == limit and line["isolation"] == isolation
    held = line["confinement"]
    assert held["landlock"] == (isolation == "reduced" and tools.doctor()["landlock"])
    assert set(held["cgroups"]) == {k for k, ok in tools.doctor()["cgroups"].items() if ok}


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_network_only_for_tools_that_declare_it(repo, isolation):
    if isolation == "reduced" and not tools.doctor()["network_isolation"]:
        pytest.skip("the reduced sandbox cannot take the network away here")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2); print('in')"
    try:
        closed = tools.execute(prop("python", ["-c", code]), config(), repo, isolation=isolation)
        assert closed.status == "failed" and b"in\n" not in closed.output
        assert not closed.network
        cfg = config(python={"network": True})
        opened = tools.execute(prop("python", ["-c", code]), cfg, repo, isolation=isolation)
        assert opened.status == "succeeded" and opened.output == b"in\n" and opened.network
    finally:
        server.close()


def test_git_tool_sees_the_repository_read_only(repo):
    res = tools.execute(prop("git", ["log", "--format=%s"]), config(), repo)
    assert res.status == "succeeded", res.output
    assert res.output == b"docs\n"  # the fixture's one commit
    res = tools.execute(prop("git", ["commit", "--allow-empty", "-m", "x"]), config(), repo)
    assert res.status == "failed"


def test_jq_reads_a_repository_file(repo):
    import shutil
    if not shutil.which("jq"):
        pytest.skip("jq is not installed")
    res = tools.execute(prop("jq", [".a | length", "docs/a.json"]), config(), repo)
    assert res.status == "succeeded" and res.output == b"3\n"


@pytest.mark.parametrize("args,reason", [
    ({"code": "x"}, "args must be a list of strings"),
    ([1], "args must be a list of strings"),
    (["a\x00b"], "NUL byte"),
    ("print('x", "cannot split the arguments"),
])
def test_external_args_of_the_wrong_shape_are_refused(repo, args, reason):
    with pytest.raises(ToolRefused, match=reason):
        tools.check(prop("python", args), config(), repo)


def test_external_tool_without_command_or_not_installed(repo):
    cfg = config(nocmd={"risk": "high", "runner": "external"},
                 missing={"risk": "high", "runner": "external",
                          "command": ["no-such-binary-xyz"]})
    with pytest.raises(ToolRefused, match="has no command"):
        tools.check(prop("nocmd", []), cfg, repo)
    res = tools.execute(prop("missing", []), cfg, repo)
    assert res.status == "failed" and res.error == \
        "missing: no-such-binary-xyz is not installed on this machine"


def test_cancel_and_on_start(repo):
    cancel = threading.Event()
    pids = []

    def started(pid):
        pids.append(pid)
        threading.Timer(0.3, cancel.set).start()

    t0 = time.monotonic()
    res = tools.execute(prop("python", ["-c", "import time; time.sleep(30)"]), config(), repo,
                        cancel=cancel, on_start=started)
    assert res.limit_hit == "cancelled" and res.status == "failed"
    assert len(pids) == 1 and time.monotonic() - t0 < within(4)


def test_tool_use_schema_is_valid_and_lines_roundtrip_through_jsonl(repo, tmp_path):
    jsonschema.Draft202012Validator.check_schema(tools.TOOL_USE_SCHEMA)
    assert audit.tool_use_schema() == tools.TOOL_USE_SCHEMA
    log = tmp_path / "tool_use.jsonl"
    runs = [prop("shell", ["ls", "docs"]), prop("file_chunker", {"path": "docs/a.json"}),
            prop("python", ["-c", "print(1)"]), prop("shell", ["rm", "-rf", "/"]),
            prop("python", ["-c", "import sys; sys.exit(3)"])]
    with log.open("w") as f:
        for p in runs:
            f.write(json.dumps(tools.tool_use_line(p, tools.execute(p, config(), repo)),
                               sort_keys=True) + "\n")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    validator = jsonschema.Draft202012Validator(tools.TOOL_USE_SCHEMA)
    for line in lines:
        validator.validate(line)
    assert [x["status"] for x in lines] == ["succeeded", "succeeded", "succeeded", "failed",
                                            "failed"]
    assert lines[4]["exit_code"] == 3 and lines[4]["error"] == "exit status 3"
    for key in ("cpu_seconds", "peak_rss_mb", "bytes_written", "wall_seconds",
                "cpu_peak_percent"):
        assert key in lines[2]["resources"]
    bad = dict(lines[0], limit_hit="gremlins")
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)


def test_doctor_reports_isolation_and_why():
    d = tools.doctor()
    assert d["isolation"] in ("bwrap", "reduced") and isinstance(d["why"], str) and d["why"]
    assert "cgroups" in d and "fork_bomb_guard" in d
