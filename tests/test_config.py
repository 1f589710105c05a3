"""state/agent.yaml: defaults, and every error one line naming the file and the field."""
from __future__ import annotations

import pytest
import yaml

from janus_git.config import AGENT_PATH, DEFAULTS, SCHEMA, config_from_text, load_config
from janus_git.errors import ConfigError

from conftest import ROOT


def _err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        config_from_text(text)
    msg = str(e.value)
    assert "\n" not in msg, "one line"
    assert msg.startswith(AGENT_PATH + ": "), "names the file"
    return e.value


def test_the_template_is_valid_and_documents_every_top_level_key():
    text = (ROOT / AGENT_PATH).read_text()
    cfg = config_from_text(text)
    assert cfg.mode in ("alpha", "beta")
    assert "shell" in cfg.tools
    for key in SCHEMA["properties"]:
        assert f"\n{key}:" in text or text.startswith(f"{key}:"), f"{key} missing from template"


def test_empty_file_takes_the_defaults():
    cfg = config_from_text("")
    assert cfg.data == DEFAULTS
    assert cfg.identity.email == "janus-agent@localhost"
    assert config_from_text("# only a comment\n").data == DEFAULTS


def test_partial_sections_merge_with_defaults():
    cfg = config_from_text("limits: {timeout_s: 5}\ncontrols: {governor: {kp: 1.0}}\n")
    assert cfg.data["limits"]["timeout_s"] == 5
    assert cfg.data["limits"]["memory_mb"] == DEFAULTS["limits"]["memory_mb"]
    assert cfg.data["controls"]["governor"] == {"target_cpu_percent": 80, "kp": 1.0, "ki": 0.1}


def test_tool_limits_override_the_global_ones():
    cfg = config_from_text("tools: {shell: {risk: low, limits: {timeout_s: 7}}}\n")
    assert cfg.tool_limits("shell")["timeout_s"] == 7
    assert cfg.tool_limits("shell")["memory_mb"] == 2048
    assert cfg.tool_limits("nope") == cfg.data["limits"]


@pytest.mark.parametrize("text,field,words", [
    ("colour: red\n", "colour", "unknown field"),
    ("limits: {timeout_s: 10, walltime: 3}\n", "limits.walltime", "unknown field"),
    ("tools: {shell: {risk: low, sudo: true}}\n", "tools.shell.sudo", "unknown field"),
    ("mode: gamma\n", "mode", "'gamma' is not one of"),
    ("mode: 2\n", "mode", "is not one of"),
    ("limits: {timeout_s: ten}\n", "limits.timeout_s", "is not of type 'integer'"),
    ("limits: {timeout_s: 0}\n", "limits.timeout_s", "less than the minimum"),
    ("require_signed_approvals: maybe\n", "require_signed_approvals", "not of type 'boolean'"),
    ("approvers: alice@example.com\n", "approvers", "not of type 'array'"),
    ("approvers: [{name: Alice}]\n", "approvers.0", "'email' is a required property"),
    ("tools: {shell: {auto_exec: true}}\n", "tools.shell", "'risk' is a required property"),
    ("tools: {shell: {risk: extreme}}\n", "tools.shell.risk", "is not one of"),
    ("controls: {tick_hz: 0}\n", "controls.tick_hz", "less than or equal to the minimum"),
    ("notifications: {daily_summary_at: '6pm'}\n", "notifications.daily_summary_at",
     "does not match"),
    ("agent: {name: x}\n", "agent", "'email' is a required property"),
])
def test_errors_name_the_field(text, field, words):
    e = _err(text)
    assert e.field == field
    assert str(e).startswith(f"{AGENT_PATH}: {field}: ") and words in str(e), str(e)


def test_the_agent_can_never_approve():
    e = _err("agent: {name: bot, email: Bot@Example.com}\n"
             "approvers: [{email: alice@example.com}, {email: bot@example.COM}]\n")
    assert e.field == "approvers" and "can never approve" in str(e)
    assert "remove the agent's e-mail" in str(e)
    # ... not even by default identity
    e = _err("approvers: [{email: janus-agent@localhost}]\n")
    assert e.field == "approvers"


@pytest.mark.parametrize("text,words", [
    ("mode: [beta\n", "not valid YAML at line"),
    ("- beta\n- alpha\n", "must be a mapping"),
    ("just words\n", "must be a mapping"),
])
def test_broken_file(text, words):
    assert words in str(_err(text))


def test_load_config_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="state/agent.yaml: missing .*janus-git init"):
        load_config(tmp_path)


def test_approvers_and_principals_are_case_insensitive():
    cfg = config_from_text("approvers: [{email: Alice@Example.com}, "
                           "{email: bob@example.com, principal: Bob}]\n")
    assert cfg.approver_emails == {"alice@example.com", "bob@example.com"}
    assert cfg.approver_principals() == {"alice@example.com", "bob"}


def test_schema_validates_the_template_with_jsonschema():
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(yaml.safe_load((ROOT / AGENT_PATH).read_text()), SCHEMA)


@pytest.mark.parametrize("text,words", [
    ("model: {path: notes/model.gguf}", "anyone who can push may replace"),
    ("model: {path: state/../notes/m.gguf}", "anyone who can push may replace"),
    ("tools: {x: {risk: low, runner: external, command: [notes/run.sh]}}",
     "not a system program"),
    ("tools: {x: {risk: low, runner: external, command: [/repo/run.sh]}}",
     "not a system program"),
    ("allowed_signers: notes/signers", "allowed_signers"),
    ("allowed_signers: state/STOP", "allowed_signers"),
])
def test_paths_in_the_configuration_stay_where_only_approvers_write(text, words):
    """A file the configuration names (signers, model, a tool's program) must not be one that
    anyone who can push may replace."""
    assert words in str(_err(text))


def test_paths_that_are_guarded_or_outside_the_repository_are_fine():
    cfg = config_from_text("model: {path: /opt/models/m.gguf}\nallowed_signers: state/signers\n"
                           "tools: {x: {risk: low, runner: external, command: [/usr/bin/jq]}}\n")
    assert cfg["allowed_signers"] == "state/signers"


def test_an_unknown_timezone_is_refused_by_name():
    with pytest.raises(ConfigError, match="notifications.timezone.*Mars/Olympus"):
        config_from_text("notifications: {timezone: Mars/Olympus}")
    assert config_from_text("notifications: {timezone: Europe/Paris}")[
        "notifications"]["timezone"] == "Europe/Paris"


def test_a_text_that_passed_the_schema_is_not_checked_again_but_an_edit_is(tmp_path):
    """load_config marks the agent.yaml text (and schema) that passed under .git/janus/, so
    a read command needs no jsonschema; any other text is checked in full."""
    import subprocess
    import sys
    root = tmp_path / "st"
    (root / ".git" / "janus").mkdir(parents=True)
    (root / "state").mkdir()
    agent = root / AGENT_PATH
    agent.write_text((ROOT / AGENT_PATH).read_text())
    load_config(root)
    mark = root / ".git" / "janus" / "agent-yaml-valid"
    assert mark.is_file()
    probe = ("import sys; from pathlib import Path; from janus_git.config import load_config; "
             f"load_config(Path({str(root)!r})); print('jsonschema' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr  # marked: not even imported
    agent.write_text(agent.read_text().replace("mode: beta", "mode: gamma"))
    with pytest.raises(ConfigError, match="mode"):
        load_config(root)  # another text: checked, and refused
    mark.write_text("0" * 64)  # a mark naming something else checks the text again
    agent.write_text((ROOT / AGENT_PATH).read_text() + "\nunknown_key: 1\n")
    with pytest.raises(ConfigError, match="unknown_key"):
        load_config(root)
