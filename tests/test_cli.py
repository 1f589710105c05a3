"""The `janus-git` command through typer's runner (and `cli.main`, which maps errors to exit
codes), plus a few runs of the real installed command."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml
from typer.testing import CliRunner

from janus_git import cli
from janus_git.cli import app
from janus_git.proposal import shard_path

from conftest import AGENT, ALICE, MALLORY, git

runner = CliRunner()


def who_env(who):
    return {"GIT_AUTHOR_NAME": who[0], "GIT_AUTHOR_EMAIL": who[1],
            "GIT_COMMITTER_NAME": who[0], "GIT_COMMITTER_EMAIL": who[1]}


def jg(root, *args, who=None, ok=True):
    """Run `janus-git ARGS -C ROOT` in-process; return the result (exit 0 unless OK is False)."""
    argv = list(args)
    if root is not None:
        sep = argv.index("--") if "--" in argv else len(argv)
        argv[sep:sep] = ["-C", str(root)]
    env = {"COLUMNS": "200", **(who_env(who) if who else {})}
    r = runner.invoke(app, argv, env=env)
    if ok:
        assert r.exit_code == 0, (r.output, r.exception)
    return r


def main(argv, capsys, monkeypatch, who=None):
    """`janus-git ARGV` through cli.main (the real error handler): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["janus-git", *map(str, argv)])
    for k, v in (who_env(who) if who else {}).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def propose(root, *args, **kw):
    r = jg(root, "propose", "--json", *args, **kw)
    return json.loads(r.stdout)


def listed(root, *args):
    return json.loads(jg(root, "list", "--json", *args).stdout)


# -- propose ---------------------------------------------------------------------------------
def test_propose_argv_after_double_dash(state_dir):
    p = propose(state_dir, "-m", "STUDY-002-BETA", "-t", "analysis", "--tool", "shell",
                "-r", "look around", "--", "ls", "-la")
    assert p["args"] == ["ls", "-la"] and p["status"] == "proposed"
    assert p["risk"] == "low" and p["created_by"] == f"{ALICE[0]} <{ALICE[1]}>"
    assert (state_dir / shard_path(p["id"])).is_file()
    info = git(state_dir, "log", "-1", "--format=%ae%n%(trailers:only,unfold)").stdout.split("\n")
    assert info[:3] == [ALICE[1], f"Janus-Proposal: {p['id']}",
                        "Janus-Transition: new -> proposed"]
    assert git(state_dir, "status", "--porcelain").stdout == ""


def test_propose_args_json(state_dir):
    p = propose(state_dir, "-m", "STUDY-004-BETA", "-t", "process_chunk", "--tool", "file_chunker",
                "--args-json", '{"path": "missions/docs/x.md", "chunk": 2}')
    assert p["args"] == {"path": "missions/docs/x.md", "chunk": 2}
    on_disk = yaml.safe_load((state_dir / shard_path(p["id"])).read_text())
    assert on_disk["args"] == p["args"] and on_disk["digest"] == p["digest"]
    r = jg(state_dir, "propose", "-m", "OPT-001-BETA", "-t", "x", "--tool", "shell",
           "--args-json", "{nope",
           ok=False)
    assert r.exit_code == 1 and "--args-json is not valid JSON" in str(r.exception)


def test_propose_unknown_tool_is_a_user_error(state_dir, capsys, monkeypatch):
    code, out, err = main(["propose", "-C", state_dir, "-m", "STUDY-002-BETA", "-t", "analysis",
                           "--tool", "rm", "--", "-rf", "/"], capsys, monkeypatch)
    assert code == 1
    assert err.startswith("janus-git: unknown tool 'rm'; registered tools: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_propose_for_an_unknown_mission_is_refused(state_dir, capsys, monkeypatch):
    head = git(state_dir, "rev-parse", "HEAD").stdout
    code, out, err = main(["propose", "-C", state_dir, "-m", "STUDY-999", "-t", "analysis",
                           "--tool", "shell", "--", "ls"], capsys, monkeypatch)
    assert code == 1 and out == ""
    assert err.startswith("janus-git: unknown mission 'STUDY-999': known missions are ")
    assert "STUDY-004-BETA, OPT-001-BETA, STUDY-002-BETA" in err and err.count("\n") == 1
    assert git(state_dir, "rev-parse", "HEAD").stdout == head
    assert not list((state_dir / "proposals").rglob("*.yaml"))


# -- list -------------------------------------------------------------------------------------
A, B = "STUDY-004-BETA", "OPT-001-BETA"  # missions the templates have


@pytest.fixture
def filled(state_dir):
    a = propose(state_dir, "-m", A, "-t", "analysis", "--tool", "shell", "--", "ls")
    b = propose(state_dir, "-m", B, "-t", "process_chunk", "--tool", "file_chunker",
                "--args-json", '{"path": "x", "chunk": 1}')
    c = propose(state_dir, "-m", A, "-t", "generate_new_nodes", "--tool", "node_generator",
                "--args-json", '{"count": 2}')
    jg(state_dir, "reject", c["id"], "--reason", "not today")
    return state_dir, a, b, c


def test_list_filters(filled):
    root, a, b, c = filled
    ids = lambda *args: [r["id"] for r in listed(root, *args)]  # noqa: E731
    assert ids() == [a["id"], b["id"], c["id"]]
    assert ids("--status", "rejected") == [c["id"]]
    assert ids("-s", "proposed", "-s", "rejected") == [a["id"], b["id"], c["id"]]
    assert ids("--mission", A) == [a["id"], c["id"]]
    assert ids("--tool", "file_chunker") == [b["id"]]
    assert ids("--type", "generate_new_nodes") == [c["id"]]
    assert ids("--since", "2999-01-01") == []
    assert ids("--since", a["created_at"][:10]) == [a["id"], b["id"], c["id"]]
    assert ids("--since", b["created_at"]) == [b["id"], c["id"]]
    assert ids("-n", "2") == [a["id"], b["id"]]
    row = listed(root, "--status", "rejected")[0]
    assert set(row) >= {"id", "path", "status", "mission", "type", "tool", "risk", "created_at",
                        "created_by", "digest", "note", "error"}
    assert row["note"] == "not today"


def test_list_status_takes_comma_lists_and_refuses_unknown_ones(filled, capsys, monkeypatch):
    root, a, b, c = filled
    ids = lambda *args: [r["id"] for r in listed(root, *args)]  # noqa: E731
    assert ids("-s", "proposed,rejected") == [a["id"], b["id"], c["id"]]
    assert ids("-s", "rejected, approved", "-s", "running") == [c["id"]]
    for command in (["list"], ["list", "--json"], ["watch", "--count", "1"]):
        code, out, err = main([*command, "-C", root, "-s", "proposed,done"], capsys,
                              monkeypatch)
        assert code == 2 and out == "" and "Usage:" in err
        flat = " ".join(err.replace("│", " ").split())
        assert "unknown status 'done'; valid: proposed, approved, running, succeeded, failed, " \
               "rejected, duplicate, archived, suspended, interrupted, reverted, invalid" in flat


def shown(root, width: int, *argv: str) -> list[str]:
    """The lines `janus-git ARGV -C ROOT` prints in a WIDTH-column terminal."""
    r = runner.invoke(app, [*argv, "-C", str(root)], env={"COLUMNS": str(width)})
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout.splitlines()


@pytest.fixture
def crowded(filled):
    """Rows that overflowed the old table: the longest status, type and tool, a note of many
    lines, a broken file's error, and text that looks like rich markup."""
    root, a, b, c = filled
    jg(root, "reject", b["id"], "--reason", "first line\nsecond line\n" + "and on " * 40)
    path = root / shard_path(a["id"])
    data = yaml.safe_load(path.read_text())  # one `note:` key: a second makes it invalid
    data.update(status="interrupted", note="killed by the stop [bold]x[/] [/]")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    broken = propose(root, "-m", A, "-t", "analysis", "--tool", "shell", "--", "true")
    (root / shard_path(broken["id"])).write_text("id: [what happened\n")
    git(root, "commit", "-qam", "crowd")
    rows = {r["id"]: r for r in listed(root)}
    assert rows[a["id"]]["status"] == "interrupted" and rows[broken["id"]]["status"] == "invalid"
    return root, rows


@pytest.mark.parametrize("argv", [["list"], ["watch", "--count", "1", "--interval", "0"]])
def test_list_and_watch_fit_80_columns_with_whole_ids_and_statuses(crowded, argv):
    root, rows = crowded
    lines = shown(root, 80, *argv)
    assert lines[0].startswith("4 proposals") and lines[1].split() == [
        "id", "status", "type", "tool", "age", "note"]
    assert len(lines) == 2 + len(rows), "a row wrapped"
    for line, (pid, row) in zip(lines[2:], rows.items()):
        assert len(line) <= 80, line
        assert line.split()[:2] == [pid, row["status"]], line  # whole, and `show` takes it
    note = next(ln for ln in lines if "first line sec" in ln)  # newlines folded, then cut
    assert note.rstrip().endswith("…")
    pid = lines[-1].split()[0]
    assert json.loads(jg(root, "show", pid, "--json").stdout)["id"] == pid


def test_at_100_columns_the_types_and_tools_are_whole_too(crowded):
    root, rows = crowded
    lines = shown(root, 100, "list")
    assert len(lines) == 2 + len(rows) and all(len(ln) <= 100 for ln in lines)
    for line, row in zip(lines[2:], rows.values()):
        if row["status"] != "invalid":
            assert line.split()[2:4] == [row["type"], row["tool"]]


def test_list_wide_shows_every_column_whole(crowded):
    root, rows = crowded
    lines = shown(root, 80, "list", "--wide")
    assert lines[1].split() == ["id", "status", "mission", "type", "tool", "risk", "created_at",
                                "note"]
    text = "\n".join(lines)
    for pid, row in rows.items():
        line = next(ln for ln in lines if ln.startswith(pid))
        assert row["status"] in line.split()
        for col in ("mission", "type", "tool", "created_at"):
            assert row[col] is None or row[col] in line.split()
    assert "…" not in text
    assert "and on " * 2 in text  # the note whole, over as many lines as it needs
    assert "killed by the stop [bold]x[/] [/]" in text  # text, not rich markup
    assert "not valid YAML" in text


def test_list_marks_the_broken_file_in_table_and_json(filled):
    root, a, b, c = filled
    path = shard_path(b["id"])
    (root / path).write_text("id: [what happened\n")
    git(root, "commit", "-qam", "oops")
    rows = {r["id"]: r for r in listed(root)}
    assert rows[a["id"]]["status"] == "proposed" and rows[c["id"]]["status"] == "rejected"
    assert rows[b["id"]]["status"] == "invalid"
    assert rows[b["id"]]["error"].startswith(f"{path}: not valid YAML at line")
    table = jg(root, "list").stdout
    assert a["id"] in table and c["id"] in table
    line = next(ln for ln in table.splitlines() if b["id"] in ln)
    assert "invalid" in line and "not valid YAML" in table
    assert "3 proposals" in table


def test_list_empty_repo(state_dir):
    assert listed(state_dir) == []
    assert "0 proposals" in jg(state_dir, "list").stdout


# -- show -------------------------------------------------------------------------------------
def test_show_record_and_history(filled):
    root, a, b, c = filled
    info = json.loads(jg(root, "show", c["id"][:20], "--json").stdout)
    assert info["id"] == c["id"] and info["record"]["status"] == "rejected"
    assert [h["transition"] for h in info["history"]] == ["proposed -> rejected",
                                                         "new -> proposed"]
    assert info["history"][0]["author"] == f"{ALICE[0]} <{ALICE[1]}>"
    text = jg(root, "show", c["id"]).stdout
    assert text.startswith(f"# {shard_path(c['id'])}\n")
    assert "status: rejected" in text and "proposed -> rejected" in text
    assert text.index("proposed -> rejected") < text.index("new -> proposed"), "newest first"


def test_show_a_broken_file_still_shows_its_history(filled):
    root, a, b, c = filled
    (root / shard_path(a["id"])).write_text("- nonsense\n")
    git(root, "commit", "-qam", "nonsense")
    info = json.loads(jg(root, "show", a["id"], "--json").stdout)
    assert info["record"] == {} and "must be a mapping" in info["error"]
    assert len(info["history"]) == 2


def test_show_unknown_id(state_dir, capsys, monkeypatch):
    code, _, err = main(["show", "-C", state_dir, "20990101"], capsys, monkeypatch)
    assert code == 1 and "no proposal has an id starting with '20990101'" in err


# -- export -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "md"])
def test_export_to_stdout_and_file(filled, tmp_path, fmt):
    root, a, b, c = filled
    text = jg(root, "export", "--format", fmt).stdout
    out = tmp_path / f"export.{fmt}"
    r = jg(root, "export", "-f", fmt, "-o", str(out))
    assert r.stdout.strip() == f"wrote {out}"
    assert out.read_text() == text
    ids = [a["id"], b["id"], c["id"]]
    if fmt == "json":
        assert [r["id"] for r in json.loads(text)] == ids
    elif fmt == "jsonl":
        assert [json.loads(line)["id"] for line in text.splitlines()] == ids
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["id"] for r in rows] == ids and rows[2]["status"] == "rejected"
    else:
        lines = text.splitlines()
        assert lines[0].startswith("| id | status |") and len(lines) == 5
        assert all(i in text for i in ids)


def test_export_filters_and_bad_format(filled, capsys, monkeypatch):
    root, a, b, c = filled
    rows = json.loads(jg(root, "export", "-s", "rejected").stdout)
    assert [r["id"] for r in rows] == [c["id"]]
    code, _, err = main(["export", "-C", root, "-f", "xml"], capsys, monkeypatch)
    assert code == 1 and "unknown format 'xml'" in err


def test_export_empty_csv_has_a_header(state_dir):
    assert jg(state_dir, "export", "-f", "csv").stdout.startswith("id,status,mission")


# -- schema -----------------------------------------------------------------------------------
def test_schema_out_writes_valid_json_schemas(filled, tmp_path):
    import jsonschema
    root, a, b, c = filled
    out = tmp_path / "schemas"
    r = jg(None, "schema", "--out", str(out))
    names = sorted(p.name for p in out.iterdir())
    assert {"agent.schema.json", "proposal.schema.json"} <= set(names)
    assert len(r.stdout.splitlines()) == len(names)
    schemas = {p.name.split(".")[0]: json.loads(p.read_text()) for p in out.iterdir()}
    for s in schemas.values():
        jsonschema.Draft202012Validator.check_schema(s)
    for p in (a, b, c):
        jsonschema.validate(yaml.safe_load((root / shard_path(p["id"])).read_text()),
                            schemas["proposal"])
    jsonschema.validate(yaml.safe_load((root / "state/agent.yaml").read_text()),
                        schemas["agent"])
    if "mission" in schemas:
        for m in (root / "missions").glob("*.yaml"):
            jsonschema.validate(yaml.safe_load(m.read_text()), schemas["mission"])
    bad = yaml.safe_load((root / shard_path(a["id"])).read_text())
    bad["status"] = "done"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas["proposal"])
    # stdout form: one JSON object of all of them
    assert set(json.loads(jg(None, "schema").stdout)) == set(schemas)


# -- approve / reject ---------------------------------------------------------------------------
def test_approve_as_an_approver(filled):
    root, a, b, c = filled
    r = jg(root, "approve", a["id"], who=ALICE)
    assert f"approved {a['id']}" in r.stdout
    info = git(root, "log", "-1", "--format=%an <%ae>%n%(trailers:only,unfold)").stdout
    assert info.strip().splitlines() == [f"{ALICE[0]} <{ALICE[1]}>", f"Janus-Proposal: {a['id']}",
                                 "Janus-Transition: proposed -> approved"]
    assert listed(root, "-s", "approved")[0]["id"] == a["id"]


def test_approve_by_a_non_approver_is_refused(filled, capsys, monkeypatch):
    root, a, b, c = filled
    head = git(root, "rev-parse", "HEAD").stdout
    code, out, err = main(["approve", "-C", root, a["id"]], capsys, monkeypatch, who=MALLORY)
    assert code == 1
    assert err == (f"janus-git: you ({MALLORY[1]}) are not in approvers in state/agent.yaml; "
                   "ask an approver, or add yourself there in a reviewed commit\n")
    assert git(root, "rev-parse", "HEAD").stdout == head
    # nor can the agent's identity, even if someone runs the CLI as it
    code, _, err = main(["approve", "-C", root, a["id"]], capsys, monkeypatch, who=AGENT)
    assert code == 1 and "not in approvers" in err


def test_approve_twice_and_reject_a_final_one(filled, capsys, monkeypatch):
    root, a, b, c = filled
    jg(root, "approve", a["id"])
    code, _, err = main(["approve", "-C", root, a["id"]], capsys, monkeypatch)
    assert code == 1 and "is approved; only a proposed or interrupted" in err
    code, _, err = main(["reject", "-C", root, c["id"]], capsys, monkeypatch)
    assert code == 1 and "cannot go from rejected to rejected" in err


def test_approve_refuses_over_a_persons_uncommitted_edit(filled, capsys, monkeypatch):
    root, a, b, c = filled
    path = root / shard_path(a["id"])
    path.write_text(path.read_text() + "# thinking\n")
    code, _, err = main(["approve", "-C", root, a["id"]], capsys, monkeypatch)
    assert code == 1 and "uncommitted changes" in err
    assert path.read_text().endswith("# thinking\n")


# -- stop / resume ----------------------------------------------------------------------------
def test_stop_dry_run_changes_nothing_then_stop_and_resume(filled):
    root, a, b, c = filled
    jg(root, "approve", a["id"])
    head = git(root, "rev-parse", "HEAD").stdout
    r = jg(root, "stop", "--dry-run", "--reason", "drill")
    assert r.stdout.startswith("DRY RUN: nothing changed.")
    assert f"would be suspended: {a['id']}" in r.stdout
    assert git(root, "rev-parse", "HEAD").stdout == head
    assert not (root / "state/STOP").exists()
    assert git(root, "status", "--porcelain").stdout == ""

    plan = json.loads(jg(root, "stop", "--reason", "smoke in the lab", "--json").stdout)
    assert plan["commit"] and plan["to_suspend"] == [a["id"]]
    stop_text = (root / "state/STOP").read_text()
    assert "reason: smoke in the lab" in stop_text and ALICE[1] in stop_text
    assert git(root, "log", "-1", "--format=%(trailers:key=Janus-Stop,valueonly)").stdout.strip() \
        == "on"
    assert "already in force" in jg(root, "stop").stdout
    status = json.loads(jg(root, "status", "--json").stdout)
    assert status["stopped"] and status["counts"]["approved"] == 1

    assert jg(root, "resume").stdout.startswith("resumed: ")
    assert not (root / "state/STOP").exists()
    assert git(root, "status", "--porcelain").stdout == ""
    r = jg(root, "resume", ok=False)
    assert r.exit_code == 1 and "no emergency stop is in force" in str(r.exception)


# -- exit codes -------------------------------------------------------------------------------
def test_not_a_state_repository(tmp_path, capsys, monkeypatch):
    code, _, err = main(["list", "-C", tmp_path], capsys, monkeypatch)
    assert code == 1 and "is not a janus-git state repository" in err and "janus-git init" in err


def test_a_broken_agent_yaml_is_one_line(state_dir, capsys, monkeypatch):
    (state_dir / "state/agent.yaml").write_text("mode: beta\ncolour: red\n")
    code, _, err = main(["propose", "-C", state_dir, "-m", "STUDY-004-BETA", "-t", "analysis",
                         "--tool", "shell", "--", "ls"], capsys, monkeypatch)
    assert code == 1
    assert err == "janus-git: state/agent.yaml: colour: unknown field\n"


@pytest.mark.parametrize("argv", [["list", "--bogus"], ["propose", "--tool", "shell"],
                                  ["show"], ["nonsense-verb"], ["list", "-n", "many"]])
def test_usage_errors_exit_2(state_dir, capsys, monkeypatch, argv):
    code, _, err = main(argv, capsys, monkeypatch)
    assert code == 2 and "Usage:" in err


def test_an_unexpected_error_exits_3_with_a_crash_log(state_dir, capsys, monkeypatch):
    # where the derived index lives is a regular file: no self-healing covers this, and it is
    # not the user's doing (nothing the message could tell them to fix in their input)
    shutil.rmtree(state_dir / ".git" / "janus", ignore_errors=True)
    (state_dir / ".git" / "janus").write_text("")
    code, _, err = main(["list", "-C", state_dir], capsys, monkeypatch)
    assert code == 3
    log = os.path.join(os.environ["JANUS_GIT_HOME"], "crash.log")
    assert err.startswith("janus-git: unexpected error: ") and err.rstrip().endswith(log)
    text = open(log).read()
    assert "janus-git list -C" in text and "Traceback (most recent call last)" in text


def test_a_crash_log_falls_back_when_the_home_is_read_only(state_dir, capsys, monkeypatch,
                                                           tmp_path):
    home = tmp_path / "ro"
    home.mkdir()
    (home / "crash.log").mkdir()  # unwritable as a file even for root
    monkeypatch.setenv("JANUS_GIT_HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    shutil.rmtree(state_dir / ".git" / "janus", ignore_errors=True)
    (state_dir / ".git" / "janus").write_text("")
    code, _, err = main(["list", "-C", state_dir], capsys, monkeypatch)
    fallback = tmp_path / f"janus-git-{os.getuid()}" / "crash.log"
    assert code == 3 and err.rstrip().endswith(str(fallback))
    assert "Traceback" in fallback.read_text()


# -- the real command -------------------------------------------------------------------------
def _exe() -> list[str]:
    found = shutil.which("janus-git")
    return [found] if found else [sys.executable, "-m", "janus_git.cli"]


def test_the_installed_command_and_its_exit_codes(tmp_path):
    root = tmp_path / "st"

    def run(*args):
        return subprocess.run([*_exe(), *map(str, args)], capture_output=True, text=True,
                              timeout=60)

    assert run("init", root).returncode == 0
    p = run("propose", "-C", root, "-m", "STUDY-004-BETA", "-t", "analysis", "--tool", "shell",
            "--json", "--", "ls", "-la")
    assert p.returncode == 0, p.stderr
    pid = json.loads(p.stdout)["id"]
    rows = json.loads(run("list", "-C", root, "--json").stdout)
    assert [r["id"] for r in rows] == [pid]
    bad = run("show", "-C", root, "2099")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert run("list", "-C", root, "--nope").returncode == 2
    (root / ".git" / "janus" / "index.sqlite").unlink()
    shutil.rmtree(root / ".git" / "janus")
    (root / ".git" / "janus").write_text("")
    crash = run("list", "-C", root)
    assert crash.returncode == 3 and "crash.log" in crash.stderr
