"""The daily summary: figures checked against numbers computed here from a repository with
known timestamps; made at its time in its timezone, once, and sent once across a kill -9."""
from __future__ import annotations

import datetime as dt
import email
import json
import os
import random
import subprocess
from zoneinfo import ZoneInfo

import numpy
import pytest
from test_notify import receiver, smtp  # noqa: F401  (fixtures)

from janus_git.lifecycle import new_proposal
from janus_git.proposal import Status

from conftest import configure, git
from daemonkit import DaemonProcess, run_once, wait_for

TZ = "Europe/Paris"
ZONE = ZoneInfo(TZ)
DAY = dt.date(2026, 11, 20)
AS_OF = dt.datetime(2026, 11, 21, 8, 0, tzinfo=ZONE)


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write(root, p) -> None:
    path = root / p.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(p.to_yaml())


def build_history(root):
    """Runs over the 8 days to DAY and three waiting proposals, committed in one go; returns
    what the test knows: the runs (local end time, status, resources) and the waiting."""
    rng = random.Random(11)
    runs, lines = [], []
    for back in range(8):
        day = DAY - dt.timedelta(days=back)
        for n in range(rng.randint(2, 7) if back else 9):
            hour = 23 if (back == 0 and n == 0) else rng.randint(0, 22)  # 23:xx is still DAY
            ended = dt.datetime.combine(day, dt.time(hour, rng.randint(0, 59)), ZONE)
            status = "failed" if rng.random() < 0.3 else "succeeded"
            res = {"cpu_seconds": round(rng.uniform(0.01, 3), 3),
                   "wall_seconds": round(rng.uniform(0.1, 9), 3),
                   "peak_rss_mb": round(rng.uniform(5, 200), 1)}
            p = new_proposal(mission="TEST", type_="analysis", tool="shell",
                             args=["echo", f"{back}-{n}"], rationale="history",
                             created_by="janus-agent@localhost")
            p.status = Status(status)
            p.execution = {"ended_at": _utc(ended), "resources": res}
            _write(root, p)
            runs.append({"ended": ended, "status": status, "res": res, "id": p.id})
            lines.append({"v": 1, "proposal": p.id, "digest": p.digest, "tool": "shell",
                          "status": status, "ended_at": _utc(ended), "resources": res,
                          "limit_hit": None, "error": "" if status == "succeeded" else "exit 2",
                          "exit_code": 0 if status == "succeeded" else 2})
    # forged lines: a proposal that does not exist, and a failed run claimed a success
    failed = next(r for r in runs if r["status"] == "failed" and r["ended"].date() == DAY)
    for pid, digest in (("20261120-000000-forged", "sha256:" + "0" * 64),
                        (failed["id"], next(x["digest"] for x in lines
                                             if x["proposal"] == failed["id"]))):
        lines.append({"proposal": pid, "digest": digest, "status": "succeeded",
                      "ended_at": _utc(dt.datetime.combine(DAY, dt.time(12), ZONE)),
                      "resources": {"cpu_seconds": 999.0, "wall_seconds": 999.0}})
    waiting = []
    for created in (dt.datetime(2026, 11, 17, 10, 0, tzinfo=ZONE),
                    dt.datetime(2026, 11, 20, 15, 30, tzinfo=ZONE),
                    dt.datetime(2026, 11, 21, 7, 0, tzinfo=ZONE)):
        p = new_proposal(mission="TEST", type_="maintenance", tool="shell",
                         args=["echo", "wait"], rationale="waits",
                         created_by="janus-agent@localhost")
        p.created_at = _utc(created)
        _write(root, p)
        waiting.append({"id": p.id, "created": created})
    (root / "logs" / "tool_use.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    git(root, "add", "proposals", "logs/tool_use.jsonl")
    git(root, "commit", "-qm", "history with known timestamps")
    return runs, waiting


@pytest.fixture
def history(state_dir):
    configure(state_dir, notifications={"timezone": TZ})
    return build_history(state_dir)


def test_figures_match_numbers_computed_independently(sr, history):
    from janus_git.summary.figures import build
    runs, waiting = history
    s = build(sr, DAY, TZ, as_of=AS_OF)
    today = [r for r in runs if r["ended"].date() == DAY]
    ok = [r for r in today if r["status"] == "succeeded"]
    assert (s["executed"], s["succeeded"], s["failed"]) == (len(today), len(ok),
                                                             len(today) - len(ok))
    assert s["success_rate"] == round(len(ok) / len(today), 4)
    assert s["unverified_lines"] == 2  # the forged lines count nowhere
    for key in ("cpu_seconds", "wall_seconds", "peak_rss_mb"):
        values = [r["res"][key] for r in today]
        got = s["resources"][key]
        assert got["median"] == pytest.approx(numpy.percentile(values, 50))
        assert got["p95"] == pytest.approx(numpy.percentile(values, 95))
        assert got["max"] == max(values)
    per_hour = [sum(r["ended"].hour == h for r in today) for h in range(24)]
    assert [sum(h.values()) for h in s["hourly"]] == per_hour
    assert s["hourly"][23]["succeeded"] + s["hourly"][23]["failed"] >= 1
    assert [w["id"] for w in s["waiting"]] == [w["id"] for w in waiting]  # oldest first
    for got, w in zip(s["waiting"], waiting):
        assert got["age_hours"] == round((AS_OF - w["created"]).total_seconds() / 3600, 2)
    assert s["waiting"][0]["age_hours"] == 94.0
    test_mission = next(m for m in s["missions"] if m["id"] == "TEST")
    assert test_mission["succeeded"] == sum(r["status"] == "succeeded" for r in runs)
    assert test_mission["text"] == f"analysis {test_mission['succeeded']}/1000 proposals"
    week = [r for r in runs if DAY - dt.timedelta(days=7) <= r["ended"].date() < DAY]
    c = s["compare"]
    assert c["runs_per_day"] == round(len(week) / 7, 2)
    week_rate = sum(r["status"] == "succeeded" for r in week) / len(week)
    assert c["success_rate"] == round(week_rate, 4)
    assert c["success_rate_change_points"] == round((s["success_rate"] - week_rate) * 100, 1)
    assert [d["executed"] for d in s["previous_days"]] == [
        sum(r["ended"].date() == DAY - dt.timedelta(days=k) for r in runs)
        for k in range(7, 0, -1)]
    assert f"{len(today) - len(ok)} run" in s["unusual"][0]
    assert any("2 tool_use.jsonl lines" in u for u in s["unusual"])


def test_markdown_top_fits_a_chat_preview(sr, history):
    from janus_git.summary.figures import build
    from janus_git.summary.text import render
    s = build(sr, DAY, TZ, as_of=AS_OF)
    text = render(s, "2026-11-20.png")
    head = [line for line in text.splitlines() if line][:4]
    assert head[0] == "# janus-git daily summary 2026-11-20 (Europe/Paris)"
    assert f"**{s['executed']} runs, " in head[1] and "**3 wait for you** (oldest 3 d 22 h)" \
        in head[1]
    assert head[2].startswith("unusual: ") and "runs per hour `" in head[3]
    assert len("\n".join(head[1:3])) < 300  # a chat preview shows it whole
    assert "![runs per hour by outcome, and the 7-day success rate](2026-11-20.png)" in text
    assert f"`janus-git approve {s['waiting'][0]['id']}`" in text
    assert "## Against the previous 7 days" in text and "| success rate |" in text


def test_cli_summary_date_json_and_markdown(state_dir, history):
    env = {**os.environ, "JANUS_GIT_NOW": AS_OF.isoformat()}
    out = subprocess.run(["janus-git", "summary", "-C", str(state_dir), "--date", "2026-11-20",
                          "--json"], capture_output=True, text=True, env=env, check=True)
    data = json.loads(out.stdout)
    assert data["date"] == "2026-11-20" and data["timezone"] == TZ
    assert data["executed"] == sum(r["ended"].date() == DAY for r in history[0])
    assert data["waiting"][0]["age_hours"] == 94.0  # JANUS_GIT_NOW is the moment it is made
    out = subprocess.run(["janus-git", "summary", "-C", str(state_dir)], capture_output=True,
                         text=True, env=env, check=True)  # default: the last day that ended (08:00)
    assert out.stdout.startswith("# janus-git daily summary 2026-11-20 (Europe/Paris)")
    bad = subprocess.run(["janus-git", "summary", "-C", str(state_dir), "--date", "friday"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "YYYY-MM-DD" in bad.stderr + bad.stdout


def _png_parts(raw: str) -> list[bytes]:
    msg = email.message_from_string(raw)
    return [part.get_payload(decode=True) for part in msg.walk()
            if part.get_content_type() == "image/png"]


def test_missed_summary_after_a_kill_across_midnight_is_made_once_and_sent_once(
        state_dir, receiver, smtp):
    configure(state_dir, notifications={"urls": [receiver.url, smtp.url], "timezone": TZ,
                                        "daily_summary_at": "00:05"})
    day = "2026-11-20"
    summary = f"logs/summaries/{day}.md"
    # 23:58 on the 20th in Paris: the daemon runs, then dies by kill -9 before midnight
    before = {"JANUS_GIT_NOW": "2026-11-20T23:58:00+01:00"}
    proc = DaemonProcess(state_dir, env=before).wait_ready()
    proc.kill9()
    assert not (state_dir / summary).exists()  # a first start sends nothing
    # 00:30: the summary time passed while it was down.  This start dies right after the
    # summary's commit, before its held message is released
    after = {"JANUS_GIT_NOW": "2026-11-21T00:30:00+01:00"}
    crashed = run_once(state_dir, env={**after, "JANUS_GIT_CRASHPOINT": "after-summary-commit"})
    assert crashed.returncode == -9, crashed.stderr
    assert git(state_dir, "log", "--format=%H", "--", summary).stdout.count("\n") == 1
    assert not receiver.messages and not smtp.mails
    for _ in range(2):  # the restart sends it; one more start makes and sends nothing
        assert run_once(state_dir, env=after).returncode == 0
    wait_for(lambda: receiver.messages and smtp.mails, 15, "the summary")
    assert git(state_dir, "log", "--format=%H", "--", summary).stdout.count("\n") == 1
    assert [m["title"] for m in receiver.messages] == [
        f"janus-git daily summary {day}: 0 runs, 0 waiting"]
    assert "runs per hour `" in receiver.messages[0]["message"]  # the sparkline
    assert len(smtp.mails) == 1 and f"daily summary {day}" in smtp.mails[0]
    (png,) = _png_parts(smtp.mails[0])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    committed = subprocess.run(["git", "show", f"HEAD:logs/summaries/{day}.png"],
                               cwd=state_dir, capture_output=True, check=True).stdout
    assert committed.startswith(b"\x89PNG")
    assert not list((state_dir / ".git" / "janus" / "outbox").glob("*.json"))


def test_janus_git_now_runs_on_from_when_it_is_set(monkeypatch):
    import time

    from janus_git import clock
    monkeypatch.setenv("JANUS_GIT_NOW", "2026-11-20T23:58:00+01:00")
    first = clock.now()
    time.sleep(0.3)
    assert 0.3 <= (clock.now() - first).total_seconds() < 1.0  # it runs on
    monkeypatch.setenv("JANUS_GIT_NOW", "2026-11-21T00:30:00+01:00")
    assert (clock.now() - clock.parse_time("2026-11-21T00:30:00+01:00")).total_seconds() < 0.1
    assert clock.zone("Mars/Olympus") is clock.UTC  # an unknown zone: UTC, and a logged error


def test_a_running_daemon_makes_the_summary_when_its_time_comes(state_dir, monkeypatch):
    """Never at start; at daily_summary_at the next day, in the zone, by the running loop."""
    from janus_git.daemon import Daemon
    configure(state_dir, notifications={"timezone": TZ, "daily_summary_at": "07:30"})
    monkeypatch.setenv("JANUS_GIT_NOW", "2026-11-21T07:31:00+01:00")
    def made() -> str:
        return git(state_dir, "ls-tree", "--name-only", "HEAD", "logs/summaries/").stdout
    with Daemon(state_dir, think=False) as daemon:
        daemon.step()
        assert made() == ""  # its first start: nothing, not even the day that ended
        monkeypatch.setenv("JANUS_GIT_NOW", "2026-11-22T07:29:00+01:00")
        daemon.summary.checked = None  # (the loop looks every 30 s)
        daemon.step()
        assert made() == ""  # 07:29 in Paris: not yet
        monkeypatch.setenv("JANUS_GIT_NOW", "2026-11-22T07:31:00+01:00")
        daemon.summary.checked = None
        daemon.step()
        assert made().split() == ["logs/summaries/2026-11-21.md", "logs/summaries/2026-11-21.png"]
        daemon.summary.checked = None
        daemon.step()
        assert git(state_dir, "log", "--format=%H", "--", "logs/summaries").stdout.count(
            "\n") == 1
        log = git(state_dir, "log", "--format=%s%n%b", "-1", "--", "logs/summaries").stdout
        assert "janus: daily summary 2026-11-21" in log and "Janus-Summary: 2026-11-21" in log
        monkeypatch.setenv("JANUS_GIT_NOW", "2026-11-25T09:00:00+01:00")  # 3 days missed
        daemon.summary.checked = None
        daemon.step()
    subjects = git(state_dir, "log", "--reverse", "--format=%s", "--",
                   "logs/summaries").stdout.split("\n")
    assert [s[-10:] for s in subjects if s] == [
        "2026-11-21", "2026-11-22", "2026-11-23", "2026-11-24"]  # each once, oldest first


def test_the_summary_message_carries_pushed_text_inert(sr, history, receiver):  # noqa: F811
    """A waiting proposal's mission and a run's error are anyone's text, committed."""
    from test_notify import assert_inert

    from janus_git.notify import Notifier
    from janus_git.summary.figures import build
    from janus_git.summary.text import render
    p = new_proposal(mission="TEST @channel <!here> [runbook](http://evil.example)",
                     type_="maintenance", tool="shell", args=["echo", "x"], rationale="r",
                     created_by="mallory")
    p.created_at = _utc(dt.datetime(2026, 11, 20, 9, 0, tzinfo=ZONE))
    _write(sr.root, p)
    log = sr.root / "logs" / "tool_use.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    failed = next(x for x in reversed(lines)  # (the first failed run has a forged line too)
                  if x.get("error") == "exit 2" and x["ended_at"] >= "2026-11-20")
    failed["error"] = "exit 2: @everyone see <https://evil.example|the log>"
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    git(sr.root, "add", "proposals", "logs/tool_use.jsonl")
    git(sr.root, "commit", "-qm", "mallory's text")
    text = render(build(sr, DAY, TZ, as_of=AS_OF))
    assert "@\u200beveryone" in text and "TEST @\u200bchannel" in text
    notifier = Notifier(sr.root, [receiver.url])
    assert notifier.post_message("janus-git daily summary", text, "summary")
    notifier.cycle(force=True)
    [message] = receiver.messages
    assert_inert(message["message"])
    assert "**" in message["message"] and "`janus-git approve " in message["message"]
