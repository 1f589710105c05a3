"""The daemon: watch the state repository, turn commits into decisions and runs.

It reconciles from git state, never from events alone: a watchdog event only wakes the loop
early, and each step reads what changed on the first-parent line since the last commit it saw
(the cursor, kept under .git/janus/).  On start it re-reads every approved and running proposal,
so a missed event, a crash or a restart loses nothing.

Crash safety: `running` is committed before a tool starts; a proposal found `running` at start
is moved to `interrupted` and never re-run silently.  A run's result, its output, its audit line
and every file it changed are one commit, so `git revert` of that commit undoes all of it.

Trust: every commit that is not the agent's own signed commit is a person's and is judged by
the rules in force before it (trust.py, approvals.py); the configuration the daemon obeys is
those rules', never the working tree's agent.yaml.

The parts, each handed what it uses (nothing reaches into another's privates):

- state.py     DaemonState: the run queue, runs, cursor, branches, caches, the rules in force
- coordinator.py  the seam between a daemon alone (LocalCoordinator) and a fleet on a shared
               remote (remote/, RemoteCoordinator: imported only when the rules name one)
- reader.py    CommitReader: people's commits, one first-parent commit at a time
- judge.py     ApprovalJudge: whether a commit approves, and quorums; start-up re-judging
- corrections.py  Corrections: correction commits for what no one may commit
- decider.py   Decider: new proposals -> auto approval, refusal, or a person's approval
- branches.py  ApprovalBranches: the `janus/proposal/<id>` branches offered for merging
- executor.py  Executor: runs (start, collect, commit results)
- emergency.py EmergencyStop and the StopWatch thread
- thinker.py   Thinker: the planner's thinking cycle in its own thread
- chores.py    the daily summary and the commit-graph
- loop.py      Daemon: builds them (each constructor takes its collaborators), steps them;
               `work(burst=True)` runs until idle
The run lock (one daemon per repository, and its status file) is janus_git/runlock.py.
"""
from .loop import Daemon, run_daemon
from .state import DaemonState, Run, Ticket

__all__ = ["Daemon", "DaemonState", "Run", "Ticket", "run_daemon"]
