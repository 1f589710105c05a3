"""The `janus-git` command: parse, call one core function, print.  No logic lives here.

Exit codes: 0 ok, 1 a user error (one line saying what to do), 2 usage, 3 an unexpected error
(a crash log is written under $JANUS_GIT_HOME, default ~/.local/state/janus-git).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from .errors import JanusError

# plain help (rich_markup_mode=None): rich's formatter alone took 106 ms of `--help`
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="A git-backed, file-first agent: proposals, approvals and results are "
                       "commits in a state repository.")
notify_app = typer.Typer(help="Notifications.", rich_markup_mode=None)
app.add_typer(notify_app, name="notify")
policy_app = typer.Typer(help="The policy: what runs by itself, what needs people.",
                         rich_markup_mode=None)
app.add_typer(policy_app, name="policy")

RepoOpt = typer.Option(".", "--repo", "-C", help="The state repository.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def _sr(repo: str, read_only: bool = False):
    """The state repository; READ_ONLY (a read command) reads objects through a git pipe:
    no pygit2 import, ~50 ms off the command's start."""
    from .staterepo import StateRepo
    return StateRepo(repo, pipe_reads=read_only)


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _console():
    from rich.console import Console
    return Console()


@app.command()
def init(directory: Path = typer.Argument(..., help="Where to create the state repository.")):
    """Create a state repository from the templates (agent.yaml, constitution, missions)."""
    from .staterepo import init_state
    path, created = init_state(directory)
    _out(f"{'created' if created else 'already a state repository:'} {path}")
    if created:
        _out(f"next: janus-git daemon {path}   (or: janus-git propose -C {path} ...)")


@app.command()
def daemon(directory: Path = typer.Argument(Path("."), help="The state repository."),
           once: bool = typer.Option(False, "--once", help="Process everything pending "
                                     "(one thinking cycle included), then exit."),
           think: bool = typer.Option(True, "--think/--no-think",
                                      help="Run the planner's thinking cycle."),
           instance: Optional[str] = typer.Option(
               None, "--instance", help="This daemon's name on a shared remote (its claims "
               "and lease carry it); default: the host name."),
           listen: Optional[str] = typer.Option(
               None, "--webhook-listen", metavar="HOST:PORT", help="Where this daemon's "
               "webhook receiver listens, over remote.webhook.listen (several daemons on "
               "one host)."),
           verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Watch the state repository: decide, run, commit results."""
    from .daemon import run_daemon
    from .logsetup import setup_logging
    if listen is not None:
        from .webhook import parse_listen
        parse_listen(listen)  # a bad address is refused before anything starts
    setup_logging(directory, verbose)
    raise typer.Exit(run_daemon(directory, once=once, think=think, instance=instance,
                                listen=listen))


@app.command()
def poke(directory: Path = typer.Argument(Path("."), help="The daemon's clone.")):
    """Tell the daemon to fetch from its remote now (as a webhook delivery does)."""
    import signal

    from .runlock import read_status
    info = read_status(directory.resolve())
    if not info.get("running"):
        raise JanusError(f"no daemon runs on {directory}; start one with `janus-git daemon`")
    os.kill(int(info["pid"]), signal.SIGUSR1)


@app.command()
def status(repo: str = RepoOpt, as_json: bool = JsonOpt):
    """Whether the daemon runs, its pid, what it is doing; proposal counts; the stop."""
    from .runlock import read_status
    sr = _sr(repo, read_only=True)
    info = {"daemon": read_status(sr.root), "stopped": sr.stopped_at(),
            "counts": sr.index.counts(), "mode": sr.config.mode}
    if as_json:
        _out(json.dumps(info, indent=1))
        return
    d = info["daemon"]
    _out(f"daemon: {'running, pid ' + str(d.get('pid')) if d.get('running') else 'not running'}"
         + (f", {d.get('activity')}" if d.get("running") else ""))
    _out(f"mode: {info['mode']}")
    _out("emergency stop: " + ("IN FORCE\n" + info["stopped"] if info["stopped"] else "off"))
    _out("proposals: " + (", ".join(f"{k} {v}" for k, v in sorted(info["counts"].items()))
                          or "none"))
    if d.get("running"):
        from .views import daemon_lines
        for line in daemon_lines(d):
            _out(line)
    if d.get("last_error"):
        _out(f"last error: {d['last_error']}")


@app.command(context_settings={"allow_extra_args": False})
def propose(mission: str = typer.Option(..., "--mission", "-m"),
            type_: str = typer.Option(..., "--type", "-t", help="The whitelist key."),
            tool: str = typer.Option(..., "--tool"),
            rationale: str = typer.Option("filed by hand", "--rationale", "-r"),
            args_json: Optional[str] = typer.Option(None, "--args-json",
                                                    help="Args as JSON (for mapping args)."),
            args: Optional[List[str]] = typer.Argument(None, help="argv after --"),
            repo: str = RepoOpt, as_json: bool = JsonOpt):
    """File a proposal: `janus-git propose -m M -t analysis --tool shell -- ls -la`."""
    from .actions import propose as do_propose
    if args_json is not None:
        try:
            parsed = json.loads(args_json)
        except json.JSONDecodeError as e:
            raise JanusError(f"--args-json is not valid JSON: {e.msg}") from None
    else:
        parsed = list(args or [])
    sr = _sr(repo)
    _known_mission(sr, mission)
    p = do_propose(sr, mission=mission, type_=type_, tool=tool, args=parsed,
                   rationale=rationale)
    _out(json.dumps(p.to_dict()) if as_json else f"proposed {p.id} ({p.path})")


def _known_mission(sr, mission: str) -> None:
    """A proposal for a mission that has no file at HEAD is refused (nothing would count it)."""
    from .missions import load_missions
    broken: list[JanusError] = []
    known = [m.id for m in load_missions(sr.repo, on_error=broken.append)]
    if mission in known:
        return
    why = ""
    if broken:  # the mission may be the one whose file is broken
        first = " ".join(str(broken[0]).split())
        why = f"; {len(broken)} mission file(s) do not validate, first: {first}"
    raise JanusError(f"unknown mission {mission!r}: known missions are "
                     f"{', '.join(known) or 'none'} (missions/<ID>.yaml){why}")


def _statuses(value: Optional[List[str]]) -> List[str]:
    """`-s a,b` and `-s a -s b` alike; an unknown status is a usage error (exit 2)."""
    from .proposal import Status
    valid = [s.value for s in Status] + ["invalid"]
    wanted = [s.strip() for v in value or () for s in v.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in valid]
    if unknown:
        raise typer.BadParameter(f"unknown status {unknown[0]!r}; valid: {', '.join(valid)}")
    return wanted


StatusOpt = typer.Option(None, "--status", "-s", callback=_statuses,
                         help="Only these statuses (repeat, or a,b).")
WideOpt = typer.Option(False, "--wide", "-w", help="Every column, nothing cut.")


@app.command("list")
def list_(status: Optional[List[str]] = StatusOpt,
          mission: Optional[str] = typer.Option(None, "--mission", "-m"),
          tool: Optional[str] = typer.Option(None, "--tool"),
          type_: Optional[str] = typer.Option(None, "--type", "-t"),
          since: Optional[str] = typer.Option(None, "--since", help="ISO date or time."),
          limit: Optional[int] = typer.Option(None, "--limit", "-n"),
          wide: bool = WideOpt, repo: str = RepoOpt, as_json: bool = JsonOpt):
    """List proposals (broken files are listed too, with their error)."""
    sr = _sr(repo, read_only=True)
    query = dict(status=status or (), mission=mission, tool=tool, type_=type_, since=since,
                 limit=limit, raw=True)
    if as_json:  # one array joined inside sqlite, written as stored: 40 MB at 100k rows
        filtered = any(v for k, v in query.items() if k != "raw")
        sys.stdout.flush()
        sys.stdout.buffer.write(sr.index.query_json(**query, joined=True) if filtered
                                else sr.index.all_json())
        return
    from . import views
    rows = [json.loads(r) for r in sr.index.query_json(**query)]
    views.print_table(_console(), rows, f"{len(rows)} proposals", wide)


@app.command()
def show(proposal_id: str, repo: str = RepoOpt, as_json: bool = JsonOpt):
    """One proposal: the record and its history from `git log`."""
    from .views import show as do_show
    info = do_show(_sr(repo, read_only=True), proposal_id)
    if as_json:
        _out(json.dumps(info, indent=1, ensure_ascii=False))
        return
    import yaml
    _out(f"# {info['path']}")
    if info["error"]:
        _out(f"error: {info['error']}")
    if info["record"]:
        _out(yaml.safe_dump(info["record"], sort_keys=False, allow_unicode=True).rstrip())
    _out("\n# history (newest first)")
    for h in info["history"]:
        what = h["transition"] or (f"correction {h['correction']}" if h["correction"] else "")
        _out(f"{h['commit'][:10]}  {h['author']}  {what or h['subject']}")


@app.command()
def watch(repo: str = RepoOpt, interval: float = typer.Option(0.5, "--interval"),
          status: Optional[List[str]] = StatusOpt, wide: bool = WideOpt,
          count: Optional[int] = typer.Option(None, "--count", help="Stop after N refreshes.")):
    """A live table that updates when a commit lands."""
    from contextlib import ExitStack

    from rich.live import Live

    from . import views
    sr = _sr(repo)
    seen, n = None, 0
    console = _console()
    with ExitStack() as stack:
        # a wide table may run past the terminal, which a Live region cannot redraw in place
        live = None if wide else stack.enter_context(Live(auto_refresh=False, console=console))
        while count is None or n < count:
            head = sr.repo.fast_head()
            if head != seen:
                seen = head
                rows = sr.index.query(status=status or ())
                title = f"{len(rows)} proposals at {str(head)[:10]}"
                if live:
                    live.update(views.table(rows[-40:], title, console.width), refresh=True)
                else:
                    if console.is_terminal:
                        console.clear()
                    views.print_table(console, rows[-40:], title, wide)
                n += 1
            time.sleep(interval)


@app.command()
def export(fmt: str = typer.Option("json", "--format", "-f", help="json, jsonl, csv or md"),
           output: Optional[Path] = typer.Option(None, "--output", "-o"),
           status: Optional[List[str]] = typer.Option(None, "--status", "-s"),
           repo: str = RepoOpt):
    """Export proposals as json, jsonl, csv or md, to stdout or a file."""
    from .views import export as do_export
    if fmt not in ("json", "jsonl", "csv", "md"):
        raise JanusError(f"unknown format {fmt!r}: use json, jsonl, csv or md")
    text = do_export(_sr(repo, read_only=True).index.query(status=status or ()), fmt)
    if output:
        output.write_text(text)
        _out(f"wrote {output}")
    else:
        sys.stdout.write(text)


@app.command()
def approve(proposal_id: str, repo: str = RepoOpt):
    """Approve a proposal as yourself (the same commit as editing `status: approved`)."""
    from .actions import approve as do_approve
    p = do_approve(_sr(repo), proposal_id)
    _out(f"approved {p.id}: the daemon runs it once it checks your commit")


@app.command()
def reject(proposal_id: str, reason: str = typer.Option("", "--reason"), repo: str = RepoOpt):
    """Reject a proposal."""
    from .actions import reject as do_reject
    p = do_reject(_sr(repo), proposal_id, reason)
    _out(f"rejected {p.id}")


@app.command()
def stop(reason: str = typer.Option("emergency stop", "--reason"),
         dry_run: bool = typer.Option(False, "--dry-run", help="Say what would happen."),
         repo: str = RepoOpt, as_json: bool = JsonOpt):
    """Emergency stop: commit state/STOP; every daemon kills its runs and starts nothing."""
    from .actions import stop as do_stop
    plan = do_stop(_sr(repo), reason=reason, dry_run=dry_run)
    if as_json:
        _out(json.dumps(plan.__dict__, indent=1))
        return
    d = plan.daemon
    if plan.already:
        _out("an emergency stop is already in force (state/STOP); `janus-git resume` lifts it")
        return
    verb = "would" if dry_run else "will"
    _out("DRY RUN: nothing changed." if dry_run
         else f"emergency stop committed: {str(plan.commit)[:10]}")
    _out(f"- {'would commit' if dry_run else 'committed'} state/STOP (reason: {reason})")
    _out("- local daemon: " + (f"pid {d.get('pid')} {verb} be signalled" if d.get("running")
                                else "not running here (others see the commit)"))
    _out(f"- running, {verb} be killed and marked interrupted: {', '.join(plan.running) or 'none'}")
    _out(f"- queued, {verb} be suspended: {', '.join(plan.to_suspend) or 'none'}")
    _out("- nothing starts until `janus-git resume` or a `git revert` of the stop commit")


@app.command()
def resume(reason: str = typer.Option("resume", "--reason"), repo: str = RepoOpt):
    """Lift the emergency stop (removes state/STOP in a commit)."""
    from .actions import resume as do_resume
    sha = do_resume(_sr(repo), reason=reason)
    _out(f"resumed: {sha[:10]}")


@app.command()
def missions(repo: str = RepoOpt, as_json: bool = JsonOpt):
    """Missions with their progress."""
    from .missions import missions_table
    rows = missions_table(_sr(repo, read_only=True))
    if as_json:
        _out(json.dumps(rows, indent=1))
        return
    from rich.table import Table
    t = Table(title=f"{len(rows)} missions")
    for col in ("id", "status", "progress", "depends on", "title"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["id"], r["status"], r["progress"], ", ".join(r["depends_on"]) or "-",
                  r["title"], style="bold" if r["status"] == "active" else None)
    _console().print(t)


@app.command()
def hygiene(dry_run: bool = typer.Option(False, "--dry-run"),
            reindex: bool = typer.Option(False, "--reindex",
                                         help="Rebuild the novelty index first."),
            repo: str = RepoOpt, as_json: bool = JsonOpt):
    """Deduplicate, archive and reject stale proposals; print counts."""
    from . import hygiene as hy
    from . import novelty
    sr = _sr(repo)
    if reindex:
        novelty.reindex(sr.repo, sr.config)
    counts = hy.hygiene(sr.repo, sr.config, dry_run=dry_run)
    _out(json.dumps(counts) if as_json else
         ("DRY RUN: " if dry_run else "") + ", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command()
def summary(day: Optional[str] = typer.Option(None, "--date", help="YYYY-MM-DD, a day in "
                                              "notifications.timezone; default: the last "
                                              "day that ended."),
            send: bool = typer.Option(False, "--send", help="Send it to the notification "
                                      "targets (chart attached where they take one)."),
            repo: str = RepoOpt, as_json: bool = JsonOpt):
    """The daily summary, as the daemon makes it: runs, success rate, what waits for you,
    missions, failures, resources and the previous 7 days."""
    from .summary.report import summary_on_demand
    out, delivered = summary_on_demand(_sr(repo), day, send=send, as_json=as_json)
    _out(out)
    if delivered is not None:
        ok, total = delivered
        sys.stderr.write(f"delivered to {ok} of {total} notification targets\n")
        if ok < total:
            raise typer.Exit(1)


@app.command()
def doctor(repo: str = RepoOpt, as_json: bool = JsonOpt):
    """What isolation, model and git features are available here, and why."""
    from .doctor import diagnose, render
    info = diagnose(Path(repo))
    if as_json:
        _out(json.dumps(info, indent=1, default=str))
        return
    for line in render(info):
        _out(line)


@app.command()
def schema(out: Optional[Path] = typer.Option(None, "--out", "-o",
                                              help="Folder for the .json files.")):
    """JSON Schemas for agent.yaml, missions, proposals and tool_use.jsonl lines."""
    from .schemas import all_schemas
    schemas = all_schemas()
    if out is None:
        _out(json.dumps(schemas, indent=1))
        return
    if out.exists() and not out.is_dir():
        raise JanusError(f"{out} is a file; give a folder for the schemas")
    out.mkdir(parents=True, exist_ok=True)
    for name, s in schemas.items():
        (out / f"{name}.schema.json").write_text(json.dumps(s, indent=1) + "\n")
        _out(f"wrote {out / (name + '.schema.json')}")


@app.command()
def demo(directory: Path = typer.Argument(Path("janus-demo")),
         verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Try janus-git: make a state repository in DIRECTORY, file one request, let the daemon
    work it once with the built-in model, and show what it committed."""
    from .demo import run_demo
    from .logsetup import setup_logging
    setup_logging(directory, verbose)
    raise typer.Exit(run_demo(directory, echo=_out))


@notify_app.command("test")
def notify_test(repo: str = RepoOpt):
    """Send a test message to every URL in notifications.urls."""
    from .notify import send_test
    ok, total = send_test(_sr(repo))
    _out(f"delivered to {ok} of {total} notification URLs")  # unset variables count as not
    if ok < total:
        raise typer.Exit(1)


@policy_app.command("test")
def policy_test(against: Optional[str] = typer.Option(
        None, "--against", help="Take the candidate agent.yaml from this branch or commit "
        "(default: the working tree's)."),
        since: Optional[float] = typer.Option(None, "--since", help="Only proposals filed in "
                                              "the last DAYS days."),
        repo: str = RepoOpt, as_json: bool = JsonOpt):
    """Replay the proposals in history under a candidate agent.yaml: what would have run by
    itself, what would have needed a person, what would be refused."""
    from . import policytest
    report = policytest.run(_sr(repo), against=against, since_days=since)
    _out(json.dumps(report.to_json(), indent=1) if as_json else policytest.render(report))


def crash_log(exc: BaseException) -> Path:
    """Append the traceback to $JANUS_GIT_HOME/crash.log; where that cannot be written (a
    read-only home under systemd's ProtectHome), to the temp dir instead."""
    home = Path(os.environ.get("JANUS_GIT_HOME") or
                Path.home() / ".local" / "state" / "janus-git")
    entry = (f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} janus-git {' '.join(sys.argv[1:])}\n"
             + "".join(traceback.format_exception(exc)))
    for folder in (home, Path(tempfile.gettempdir()) / f"janus-git-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "crash.log").open("a") as f:
                f.write(entry)
            return folder / "crash.log"
        except OSError:
            continue
    sys.stderr.write(entry)
    return Path("(stderr: no writable place for crash.log)")


def main() -> None:
    try:
        app()
    except JanusError as e:
        sys.stderr.write(f"janus-git: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # anything else is our bug
        path = crash_log(e)
        sys.stderr.write(f"janus-git: unexpected error: {e!r}; details in {path}\n")
        sys.exit(3)


if __name__ == "__main__":
    main()
