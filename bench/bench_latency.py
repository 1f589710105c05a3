"""Approval commit -> tool start latency, and the idle daemon's cost.

A person approves a manual proposal with `git commit`; we time from the moment that commit
returns to the moment the daemon has the tool's process started (the sandbox's on_start
callback).  Then the idle daemon on a repository with N proposals: CPU % and RSS over a quiet
window.

Three figures, each in its own process, one after the other in the same run:

- baseline: the previous release (BASELINE_REV, before the trust layer) checked out into a
  git worktree under bench/.work/ and its own bench_latency.py run with the same sizes;
- unsigned: this tree; the agent signs its commits, approvers do not sign;
- signed: this tree with `require_signed_approvals: true`; the approver's SSH key is listed in
  state/allowed_signers and every approval is `git commit -S` with it.

Each mode also prints its raw `git commit` (what the approver pays) as a same-run baseline,
and fails loudly if the daemon refused the bench's configuration commit.  The targets: p50
<= 100 ms and <= 1.25x the baseline's p50.

`--trace` adds where each approval's latency went (git calls, daemon phases), from timestamps
taken in this process around janus_git's calls (wrappers; nothing in janus_git changes), for
the new code and for the baseline's code run under this same bench (`--code TREE`).
`--profile` (with --mode unsigned or signed) adds a cProfile of the daemon's catch-up and run
start while the approvals are measured.

    python bench/bench_latency.py [--approvals 100] [--proposals 10000] [--idle-seconds 10]
                                  [--months 12] [--quick] [--mode all|baseline|unsigned|signed]
                                  [--rounds 1] [--trace] [--profile] [--code TREE]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
# --code DIR runs this bench against another tree's janus_git (the baseline, traced the same
# way); it has to be known before the imports below
CODE = Path(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv else ROOT
sys.path.insert(0, str(CODE))

try:
    from janus_git import lifecycle  # noqa: E402
    from janus_git.daemon import Daemon  # noqa: E402
    from janus_git.gitrepo import GitRepo  # noqa: E402
    from janus_git.proposal import new_id  # noqa: E402
    from janus_git.staterepo import init_state  # noqa: E402
    IMPORT_ERROR = None
except Exception as e:  # a tree mid-edit: only a mode run here needs it (not --new-rev's)
    IMPORT_ERROR = e

BASELINE_REV = "d2fbdf3"  # the release before the trust layer (ab1bf58)
APPROVER = ("Bench Approver", "approver@example.com")
TARGET_P50_MS, TARGET_RATIO = 100.0, 1.25
REFUSED = "janus: refuse changes to"


def person_env() -> dict[str, str]:
    """The approver's git: their identity, and no global or system config of this machine
    (a global commit.gpgsign or signing key would change what is measured)."""
    return {**os.environ, "GIT_AUTHOR_NAME": APPROVER[0], "GIT_AUTHOR_EMAIL": APPROVER[1],
            "GIT_COMMITTER_NAME": APPROVER[0], "GIT_COMMITTER_EMAIL": APPROVER[1]}


def use_bench_env(tmp: Path) -> None:
    """This process (and the daemon in it) as the bench needs it: JANUS_GIT_HOME in TMP (the
    agent's key is made there), the approver as git's user (init makes them the first
    approver), no global git config."""
    cfg = tmp / "gitconfig"
    cfg.write_text(f"[user]\n\tname = {APPROVER[0]}\n\temail = {APPROVER[1]}\n"
                   "[init]\n\tdefaultBranch = main\n")
    os.environ.update(JANUS_GIT_HOME=str(tmp / "janus-home"), GIT_CONFIG_GLOBAL=str(cfg),
                      GIT_CONFIG_NOSYSTEM="1")
    os.environ.update({k: v for k, v in person_env().items() if k.startswith("GIT_")})


def git(root: Path, *args: str) -> str:
    for _ in range(100):  # a person's git also meets the daemon's index.lock now and then
        out = subprocess.run(["git", *args], cwd=root, env=person_env(), text=True,
                             capture_output=True)
        if out.returncode == 0:
            return out.stdout
        if "index.lock" not in out.stderr and "cannot lock ref" not in out.stderr:
            raise SystemExit(f"git {' '.join(args)}: {out.stderr}")
        time.sleep(0.01)
    raise SystemExit("index.lock never freed")


def sign_opts(key: Path | None) -> list[str]:
    return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"] if key else []


def make_approver_key(tmp: Path) -> Path:
    key = tmp / "approver_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench approver",
                    "-f", str(key)], check=True, capture_output=True)
    return key


def make_repo(tmp: Path, existing: int, months: int = 12,
              approver_key: Path | None = None) -> Path:
    """A state repository (init run as the approver), the approver's configuration committed
    by them (with APPROVER_KEY: signed approvals required and their key listed), then
    EXISTING finished proposals in one commit."""
    root, _ = init_state(tmp / "state")
    cfg = yaml.safe_load((root / "state/agent.yaml").read_text())
    cfg["approvers"] = [{"name": APPROVER[0], "email": APPROVER[1]}]
    cfg["controls"]["max_starts_per_second"] = 1000
    if approver_key is not None:
        cfg["require_signed_approvals"] = True
        kind, blob = Path(f"{approver_key}.pub").read_text().split()[:2]
        signers = root / cfg["allowed_signers"]
        signers.write_text(signers.read_text() + f'{APPROVER[1]} namespaces="git" {kind} '
                           f"{blob} bench approver\n")
    (root / "state/agent.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    git(root, "add", "state")
    git(root, *sign_opts(approver_key), "commit", "-q", *(["-S"] if approver_key else []),
        "-m", "bench: approvers, controls" + (", signed approvals" if approver_key else ""))
    now = dt.datetime.now(dt.timezone.utc)
    for i in range(existing):  # history: finished proposals the daemon must not trip over
        # spread over the past `months` month shards, as a year of work would be
        when = now - dt.timedelta(days=31 * (1 + i % months)) if months else now
        p = lifecycle.new_proposal(mission="BENCH", type_="analysis", tool="shell",
                                   args=["echo", str(i)], rationale="bench filler",
                                   created_by="bench", pid=new_id(when))
        p.status = lifecycle.Status.SUCCEEDED
        path = root / p.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(p.to_yaml())
    git(root, "add", "-A")
    git(root, "commit", "-qm", f"bench: {existing} proposals")
    git(root, "commit-graph", "write", "--reachable", "--changed-paths")
    return root


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


# -- the daemon's parts, in either layout: the mixin Daemon (the baseline, and this tree until
# the daemon/ package) or the composed one (janus_git/daemon/: its state in daemon.state) ---
def parts(daemon: Daemon):
    """The object that holds the queue, runs and flags."""
    state = getattr(daemon, "state", None)
    return state if hasattr(state, "queue") else daemon


def busy(daemon: Daemon) -> bool:
    s = parts(daemon)
    return bool(s.runs or s.queue or getattr(s, "results", None)
                or getattr(s, "_pending_results", None))


def request_stop(daemon: Daemon) -> None:
    if hasattr(daemon, "request_stop"):
        daemon.request_stop()
    else:
        daemon.exit = True
        daemon.wake.set()


def config_in_force(daemon: Daemon):
    trust = getattr(parts(daemon), "trust", None)
    if trust is None:  # the baseline's code: no rules in force, the working tree's config
        return daemon.config
    return trust.rules.config if trust.rules else None


# where the latency path's calls live in each layout: (module, "Class.method"), first found
CALLS = {
    "catch-up": [("janus_git.daemon.reader", "CommitReader.catch_up"),
                 ("janus_git.reader", "CommitReader._catch_up")],
    "judge": [("janus_git.daemon.judge", "ApprovalJudge.judge"),
              ("janus_git.reader", "CommitReader._judge_approval")],
    "filing": [("janus_git.daemon.judge", "ApprovalJudge.filing"),
               ("janus_git.reader", "CommitReader._filing")],
    "start": [("janus_git.daemon.executor", "Executor.start"),
              ("janus_git.runner", "Runner._start")],
    "start-runs": [("janus_git.daemon.executor", "Executor.start_runs"),
                   ("janus_git.runner", "Runner._start_runs")],
    "signer": [("janus_git.trust", "Trust.signer")],
    "save": [("janus_git.trust", "Trust.save")],
    "apply": [("janus_git.trust", "Trust.apply")],
}


def find_call(what: str):
    """(class, method name) of WHAT in the code being run, or None."""
    import importlib
    for module, attr in CALLS[what]:
        try:
            owner = importlib.import_module(module)
        except ImportError:
            continue
        cls_name, name = attr.split(".")
        cls = getattr(owner, cls_name, None)
        if cls is not None and hasattr(cls, name):
            return cls, name
    return None


def check_rules(root: Path, daemon: Daemon, signed: bool) -> None:
    """Fail loudly when the daemon refused the bench's configuration (it would measure
    something else: a refusal puts the old rules back)."""
    refused = [s for s in git(root, "log", "--format=%s").splitlines() if s.startswith(REFUSED)]
    problems = []
    if refused:
        problems.append(f"the daemon refused the bench's change: {refused[0]!r}")
    config = config_in_force(daemon)
    if config is None or APPROVER[1] not in config.approver_emails:
        problems.append(f"{APPROVER[1]} is not an approver in the rules in force")
    elif bool(config.data.get("require_signed_approvals")) != signed:
        problems.append(f"require_signed_approvals is {config['require_signed_approvals']} "
                        f"in the rules in force, expected {signed}")
    if problems:
        raise SystemExit("bench_latency: " + "; ".join(problems))


def alive(thread: threading.Thread) -> None:
    if not thread.is_alive():
        raise SystemExit("bench_latency: the daemon's thread died (its traceback is above)")


def why_not_started(root: Path, path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    note = next((line for line in text.splitlines() if line.startswith(("note:", "status:"))),
                "")
    log = git(root, "log", "-4", "--format=%h %an: %s")
    return f"{note}\nlast commits:\n{log}"


def bench_latency(root: Path, approvals: int, approver_key: Path | None = None,
                  tracer: "Tracer | None" = None,
                  profiler: "Profiler | None" = None) -> tuple[list[float], list[float]]:
    started: dict[str, float] = {}
    daemon = Daemon(root, think=False, on_start=lambda pid, _os: started.setdefault(
        pid, time.perf_counter()))
    thread = threading.Thread(target=daemon.run, daemon=True, name="daemon")
    thread.start()
    ids = []
    person = GitRepo(root)  # not the daemon's: GitPython's cat-file pipe is per thread
    for i in range(approvals):
        p = lifecycle.new_proposal(mission="BENCH", type_="maintenance", tool="shell",
                                   args=["echo", f"approval {i}"], rationale="bench",
                                   created_by="bench")
        lifecycle.create(person, p, None)
        ids.append(p.id)
    # let the daemon offer approval branches for all of them (each a signed agent commit)
    deadline = time.monotonic() + 120
    while not set(ids) <= parts(daemon).seen_manual and time.monotonic() < deadline:
        alive(thread)
        time.sleep(0.05)
    time.sleep(0.5)
    check_rules(root, daemon, approver_key is not None)
    latencies, commits = [], []
    commit = [*sign_opts(approver_key), "commit", "-q", *(["-S"] if approver_key else [])]
    if profiler:
        profiler.on = True
    for pid in ids:
        path = root / f"proposals/{pid[0:4]}/{pid[4:6]}/{pid}.yaml"
        text = path.read_text().replace("status: proposed", "status: approved")
        path.write_text(text)
        t0 = time.perf_counter()
        git(root, *commit, "-m", f"approve {pid}", "--", str(path))
        t1 = time.perf_counter()
        deadline = time.monotonic() + 10
        while pid not in started and time.monotonic() < deadline:
            time.sleep(0.0005)
        alive(thread)
        if pid not in started:
            raise SystemExit(f"{pid} did not start within 10 s: {why_not_started(root, path)}")
        commits.append((t1 - t0) * 1000)
        latencies.append((started[pid] - t1) * 1000)
        if tracer:
            tracer.window(t1, started[pid])
        # wait for the result commit: each approval is measured from an idle daemon
        while busy(daemon):
            time.sleep(0.002)
        time.sleep(0.02)
    if profiler:
        profiler.on = False
    check_rules(root, daemon, approver_key is not None)
    request_stop(daemon)
    thread.join(30)
    return latencies, commits


def bench_idle(root: Path, seconds: float) -> tuple[float, float]:
    proc = subprocess.Popen([sys.executable, "-m", "janus_git.cli", "daemon", str(root),
                             "--no-think"], stderr=subprocess.DEVNULL, cwd=CODE,
                            env={**os.environ, "PYTHONPATH": str(CODE)})
    try:
        time.sleep(3.0)  # start-up: index build, recovery
        ps = psutil.Process(proc.pid)
        ps.cpu_percent(None)
        time.sleep(seconds)
        cpu = ps.cpu_percent(None)
        rss = ps.memory_info().rss / 2**20
    finally:
        proc.terminate()
        proc.wait(20)
    return cpu, rss


# -- where the time goes (--trace) ------------------------------------------------------------
def git_label(args: tuple) -> str:
    a = [str(x) for x in args]
    signed = any("gpg.format=ssh" in x for x in a)
    i = 0
    while i < len(a) and a[i] == "-c":
        i += 2
    sub = a[i] if i < len(a) else "?"
    if sub == "log":
        if "--diff-filter=A" in a:
            return "git log --diff-filter=A -1 (filing_commit)"
        if "--reverse" in a:
            return "git log --first-parent --reverse (first_parent_log)"
        if "-1" in a:
            return "git log -1 (commit_info)"
        if any(x.startswith("-n") for x in a):
            return "git log --first-parent -nN -- PATH (file_history)"
        return "git log (other)"
    if sub == "commit":
        return "git commit --only" + (" -S (agent-signed)" if signed else "")
    if sub == "verify-commit":
        return "git verify-commit (ssh-keygen -Y verify)"
    return f"git {sub}" + (" (agent-signed)" if signed else "")


class Tracer:
    """Timestamps around janus_git's calls in this process (wrappers, nothing changed), and
    per approval the sum of each kind of call inside [commit returned, tool started]."""

    SPANS = ("catch-up entered, ms after the commit returned (< 0: before)",)
    CATCH_UP = "the catch-up (reads and judges the approval)"

    def __init__(self) -> None:
        self.events: list[tuple[float, float, str, bool]] = []  # t0, t1, label, leaf
        self.windows: list[tuple[float, float]] = []  # commit returned, tool started
        self.lock = threading.Lock()

    def _add(self, t0: float, label: str, leaf: bool) -> None:
        with self.lock:
            self.events.append((t0, time.perf_counter(), label, leaf))

    def wrap(self, owner, name: str, label, leaf: bool = False) -> None:
        orig = getattr(owner, name, None)
        if orig is None:  # the baseline's code has no such call
            return
        tracer = self

        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                tracer._add(t0, label(a) if callable(label) else label, leaf)
        setattr(owner, name, wrapper)

    def install(self) -> None:
        from janus_git import tools
        self.wrap(GitRepo, "run_status", lambda a: git_label(a[1:]), leaf=True)
        self.wrap(GitRepo, "read_blob", "cat-file --batch (read_blob)", leaf=True)
        self.wrap(lifecycle, "transition", "lifecycle.transition (the running commit)")
        self.wrap(tools, "execute", "tools.execute (sandbox up to the start)")
        for what, label in (("catch-up", self.CATCH_UP),
                            ("judge", "judging the approval (incl. the signature check)"),
                            ("signer", "trust.signer (verify-commit, cached per commit)"),
                            ("filing", "the filing lookup (approvals.filing)"),
                            ("start", "the run's start (running commit, tool thread)"),
                            ("save", "trust.save (rules.json written)"),
                            ("apply", "trust.apply (is it a guarded change?)")):
            found = find_call(what)
            if found:  # the baseline's code has no trust, nor these names
                self.wrap(*found, label)

    def window(self, t_commit: float, t_started: float) -> None:
        self.windows.append((t_commit, t_started))  # summed at report time: calls end later

    def sums(self, t_commit: float, t_started: float) -> dict[str, float]:
        sums: dict[str, float] = defaultdict(float)
        # the daemon may begin before the approver's `git commit` returns (the ref moves,
        # the watcher fires, then git exits): calls overlapping the window count for the
        # part inside it, and the catch-up's start is given relative to the commit returning
        catch = [e[0] for e in self.events if e[1] > t_commit and e[0] < t_started
                 and e[2] == self.CATCH_UP]
        if catch:
            sums[self.SPANS[0]] = (min(catch) - t_commit) * 1000
        for t0, t1, label, leaf in self.events:
            if t1 > t_commit and t0 < t_started:
                sums[("L " if leaf else "P ") + label] += (
                    min(t1, t_started) - max(t0, t_commit)) * 1000
        sums["total"] = (t_started - t_commit) * 1000
        return sums

    def report(self) -> str:
        if not self.windows:
            return ""
        windows = [self.sums(*w) for w in self.windows]
        labels = sorted({k for w in windows for k in w}, key=lambda k: (
            k != "total", not k.startswith("catch-up"), k.startswith("L "),
            -statistics.mean(w.get(k, 0.0) for w in windows)))
        n = len(windows)
        out = [f"where an approval's latency goes ({n} approvals; ms per approval, from the "
               "commit returning to the tool's start; P = daemon phases (nested), L = leaf "
               "calls, each its own process or pipe read):",
               f"  {'':<62} {'median':>8} {'mean':>8} {'p90':>8}"]
        for k in labels:
            vals = [w.get(k, 0.0) for w in windows]
            out.append(f"  {k:<62} {statistics.median(vals):8.1f} {statistics.mean(vals):8.1f} "
                       f"{pct(vals, 0.9):8.1f}")
        return "\n".join(out)


class Profiler:
    """cProfile of the daemon's catch-up and run start (the latency path) while approvals are
    measured; the daemon's other work (filing, results) is left out."""

    def __init__(self) -> None:
        import cProfile
        self.prof = cProfile.Profile()
        self.on = False

    def install(self) -> None:
        for what in ("catch-up", "start-runs"):
            cls, name = find_call(what)
            orig = getattr(cls, name)

            def wrapper(*a, _orig=orig, **kw):
                if not self.on:
                    return _orig(*a, **kw)
                self.prof.enable()
                try:
                    return _orig(*a, **kw)
                finally:
                    self.prof.disable()
            setattr(cls, name, wrapper)

    def report(self, top: int = 30) -> str:
        import io
        import pstats
        out = io.StringIO()
        stats = pstats.Stats(self.prof, stream=out)
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top // 2)
        return out.getvalue()


def ssh_costs(tmp: Path, key: Path, n: int = 20) -> str:
    """ssh-keygen signing and verifying a commit-sized message alone (what git runs)."""
    msg = tmp / "msg"
    msg.write_bytes(b"tree 0\nauthor x\n\nbench\n" * 4)
    signers = tmp / "signers"
    kind, blob = Path(f"{key}.pub").read_text().split()[:2]
    signers.write_text(f"{APPROVER[1]} {kind} {blob}\n")
    sign, verify = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(key), str(msg)],
                       check=True, capture_output=True)
        t1 = time.perf_counter()
        subprocess.run(["ssh-keygen", "-Y", "verify", "-n", "git", "-f", str(signers),
                        "-I", APPROVER[1], "-s", f"{msg}.sig"], input=msg.read_bytes(),
                       check=True, capture_output=True)
        t2 = time.perf_counter()
        os.unlink(f"{msg}.sig")
        sign.append((t1 - t0) * 1000)
        verify.append((t2 - t1) * 1000)
    return (f"ssh-keygen alone ({n} runs): -Y sign p50 {statistics.median(sign):.1f} ms, "
            f"-Y verify p50 {statistics.median(verify):.1f} ms")


# -- one mode in this process -----------------------------------------------------------------
def run_mode(mode: str, args: argparse.Namespace) -> dict:
    if IMPORT_ERROR is not None:
        raise SystemExit(f"janus_git in {CODE} does not import: {IMPORT_ERROR!r} (--new-rev "
                         "REV measures a commit instead of the working tree)")
    load0 = os.getloadavg()[0]
    tracer = Tracer() if args.trace else None
    if tracer:
        tracer.install()
    profiler = Profiler() if args.profile else None
    if profiler:
        profiler.install()
    out: dict = {"mode": mode, "code": str(CODE)}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp_name:
        tmp = Path(tmp_name)
        use_bench_env(tmp)
        key = make_approver_key(tmp) if mode == "signed" else None
        root = make_repo(tmp, args.proposals, args.months, key)
        lat, raw = bench_latency(root, args.approvals, key, tracer, profiler)
        if args.idle_seconds > 0:
            out["idle_cpu"], out["idle_rss"] = bench_idle(root, args.idle_seconds)
        if tracer:
            out["trace"] = tracer.report()
            out["ssh"] = ssh_costs(tmp, key or make_approver_key(tmp))
        if profiler:
            out["profile"] = profiler.report()
    out.update(latencies=lat, commits=raw, load=[load0, os.getloadavg()[0]])
    return out


def print_mode(r: dict, args: argparse.Namespace, base_p50: float | None = None,
               code: str = "new") -> None:
    lat, raw = r["latencies"], r["commits"]
    what = {"unsigned": "approver unsigned", "signed": "require_signed_approvals"}[r["mode"]]
    if code == "new" and r.get("code", str(ROOT)) != str(ROOT):
        code = f"code in {r['code']}"
    p50 = statistics.median(lat)
    ratio = f", {p50 / base_p50:.2f}x baseline p50" if base_p50 else ""
    print(f"[{code}, {what}] load {r['load'][0]:.1f} -> {r['load'][1]:.1f}")
    print(f"  raw `git commit{' -S' if r['mode'] == 'signed' else ''}` of the approval: "
          f"p50 {statistics.median(raw):.1f} ms, p99 {pct(raw, 0.99):.1f} ms")
    print(f"  approval commit -> tool start: p50 {p50:.1f} ms, p99 {pct(lat, 0.99):.1f} ms"
          f"{ratio}")
    if "idle_cpu" in r:
        print(f"  idle daemon over {args.idle_seconds:.0f} s: CPU {r['idle_cpu']:.2f} %, RSS "
              f"{r['idle_rss']:.0f} MB (target < 1 %, < 150 MB)")
    if r.get("trace"):
        print(r["ssh"])
        print(r["trace"])
    if r.get("profile"):
        print(r["profile"])


# -- the baseline: the previous release's own bench -------------------------------------------
def rev_tree(rev: str) -> Path:
    """REV checked out (detached) in a git worktree under bench/.work/, made once."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.strip()
    tree = WORK / f"tree-{sha[:10]}"
    if (tree / ".git").exists():
        have = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True,
                              text=True).stdout.strip()
        if have == sha:
            return tree
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    WORK.mkdir(exist_ok=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT,
                   check=True, capture_output=True)
    return tree


_LINE = re.compile(r"p50 ([0-9.]+) ms, p99 ([0-9.]+) ms")


def run_baseline(args: argparse.Namespace) -> dict:
    tree = rev_tree(args.baseline_rev)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gitconfig"  # no global config here either (see use_bench_env)
        cfg.write_text(f"[user]\n\tname = {APPROVER[0]}\n\temail = {APPROVER[1]}\n")
        env = {**os.environ, "PYTHONPATH": str(tree), "JANUS_GIT_HOME": f"{tmp}/home",
               "GIT_CONFIG_GLOBAL": str(cfg), "GIT_CONFIG_NOSYSTEM": "1"}
        out = subprocess.run([sys.executable, str(tree / "bench/bench_latency.py"),
                              "--approvals", str(args.approvals), "--proposals",
                              str(args.proposals), "--months", str(args.months),
                              "--idle-seconds", "1"], cwd=tree, env=env, capture_output=True,
                             text=True)
    if out.returncode != 0:
        raise SystemExit(f"baseline {args.baseline_rev} failed:\n{out.stdout}\n{out.stderr}")
    r = {"mode": "baseline", "load": [load0, os.getloadavg()[0]], "text": out.stdout}
    for line in out.stdout.splitlines():
        m = _LINE.search(line)
        if m and "raw `git commit`" in line:
            r["commit_p50"], r["commit_p99"] = map(float, m.groups())
        elif m and "tool start" in line:
            r["p50"], r["p99"] = map(float, m.groups())
    if "p50" not in r:
        raise SystemExit(f"baseline output not understood:\n{out.stdout}")
    return r


def child(mode: str, args: argparse.Namespace, code: Path | None = None) -> dict:
    """One mode of the new code (or of CODE) in a fresh process (as the baseline runs in
    its own)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--mode", mode, "--json-out", f.name,
               *(["--code", str(code)] if code else []),
               "--approvals", str(args.approvals), "--proposals", str(args.proposals),
               "--months", str(args.months),
               "--idle-seconds", str(args.idle_seconds if mode == "unsigned" and (
                   not code or args.new_rev) else 0)]
        subprocess.run(cmd + (["--trace"] if args.trace else []), check=True,
                       stdout=subprocess.DEVNULL)
        return json.loads(Path(f.name).read_text())


def verdict(p50: float, base: float) -> str:
    ok = p50 <= TARGET_P50_MS and p50 <= TARGET_RATIO * base
    return (f"{'PASS' if ok else 'MISS'} (p50 {p50:.1f} ms {'<=' if p50 <= TARGET_P50_MS else '>'}"
            f" {TARGET_P50_MS:.0f}; {p50 / base:.2f}x baseline "
            f"{'<=' if p50 <= TARGET_RATIO * base else '>'} {TARGET_RATIO}x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--approvals", type=int, default=None, help="default 100 (20 with --quick)")
    ap.add_argument("--proposals", type=int, default=10_000)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--months", type=int, default=12,
                    help="month shards the existing proposals are spread over (0: all in "
                         "the current month, the worst case for git's tree rewrite)")
    ap.add_argument("--quick", action="store_true", help="20 approvals")
    ap.add_argument("--mode", choices=["all", "baseline", "unsigned", "signed"], default="all")
    ap.add_argument("--rounds", type=int, default=1, help="repeat baseline/unsigned/signed")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--new-rev", help="measure the new code at this commit (a worktree under "
                    "bench/.work/) instead of this working tree")
    ap.add_argument("--trace", action="store_true", help="where the new code's latency goes")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile of the daemon's catch-up and run start (one mode)")
    ap.add_argument("--code", help="the janus_git tree to run (default: this one); with "
                    "--mode unsigned: the baseline traced by this bench")
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.approvals is None:
        args.approvals = 20 if args.quick else 100
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    if args.mode in ("unsigned", "signed"):
        r = run_mode(args.mode, args)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(r))
        else:
            print_mode(r, args)
        return
    print(f"repository: {args.proposals} finished proposals over {args.months or 1} month "
          f"shard(s) + {args.approvals} approvals; targets: p50 <= {TARGET_P50_MS:.0f} ms and "
          f"<= {TARGET_RATIO}x the baseline's p50 (same run)", flush=True)
    summary: dict[str, list[float]] = defaultdict(list)
    for n in range(args.rounds):
        if args.rounds > 1:
            print(f"\n## round {n + 1} of {args.rounds}")
        base = run_baseline(args)
        print(f"[baseline {args.baseline_rev}, its own bench_latency.py] load "
              f"{base['load'][0]:.1f} -> {base['load'][1]:.1f}\n"
              f"  raw `git commit` of the approval: p50 {base.get('commit_p50', 0):.1f} ms, "
              f"p99 {base.get('commit_p99', 0):.1f} ms\n"
              f"  approval commit -> tool start: p50 {base['p50']:.1f} ms, p99 "
              f"{base['p99']:.1f} ms", flush=True)
        summary["baseline"].append(base["p50"])
        if args.trace:  # the same code under this bench's instruments, to compare the calls
            r = child("unsigned", args, rev_tree(args.baseline_rev))
            print_mode(r, args, base["p50"], f"baseline {args.baseline_rev} under this bench")
        if args.mode == "baseline":
            continue
        for mode in ("unsigned", "signed"):
            r = child(mode, args, rev_tree(args.new_rev) if args.new_rev else None)
            print_mode(r, args, base["p50"], f"new at {args.new_rev}" if args.new_rev else "new")
            p50 = statistics.median(r["latencies"])
            summary[mode].append(p50)
            print(f"  verdict: {verdict(p50, base['p50'])}", flush=True)
    if args.rounds > 1:
        base = statistics.median(summary["baseline"])
        print("\n## median p50 over rounds: baseline "
              f"{base:.1f} ms; " + "; ".join(
                  f"{m} {statistics.median(v):.1f} ms ({statistics.median(v) / base:.2f}x)"
                  for m, v in summary.items() if m != "baseline"))
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
