"""The package's shape, read from its source with `ast`: one module starts git, and the imports
have no cycles (in the daemon package at all, in janus_git at module level)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from janus_git.gitrepo import GitRepo

PKG = Path(__file__).resolve().parent.parent / "janus_git"
GIT_LAYER = PKG / "gitrepo"  # the package: everything under it may start git
# what starts a program: subprocess's and os's entry points
STARTERS = {"run", "Popen", "call", "check_call", "check_output", "execv", "execvp", "execvpe",
            "execl", "execlp", "spawnv", "spawnvp", "posix_spawn", "posix_spawnp"}
RUNNERS = {"run", "_run", "run_status", "_run_status", "run_retrying", "_run_retrying"}


def modules() -> dict[str, Path]:
    """janus_git's modules by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _name(node: ast.AST) -> str:
    """`self.repo` -> "self.repo"; anything else that is not a plain name chain -> ""."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _name(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _starts_git(call: ast.Call) -> bool:
    if not call.args or not isinstance(call.args[0], (ast.List, ast.Tuple)):
        return False
    first = call.args[0].elts[:1]
    return bool(first) and isinstance(first[0], ast.Constant) and first[0].value == "git"


def git_calls(path: Path) -> list[str]:
    """Where PATH starts git itself or reaches past the git layer's public operations."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = _name(node.func.value)
            if node.func.attr in STARTERS and _starts_git(node):
                found.append(f"{where}: starts git")
            elif node.func.attr in RUNNERS and receiver.split(".")[-1].endswith("repo"):
                found.append(f"{where}: {receiver}.{node.func.attr}(...)")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                not node.attr.startswith("__") and _name(node.value).split(".")[-1] == "repo":
            found.append(f"{where}: reaches into {_name(node.value)}.{node.attr}")
    return found


def test_only_the_git_layer_starts_git():
    found = [hit for name, path in modules().items() if GIT_LAYER not in path.parents
             for hit in git_calls(path)]
    assert found == []


def test_the_git_layer_runs_commands_only_inside():
    for name in ("run", "run_status", "run_retrying"):
        assert not hasattr(GitRepo, name), f"GitRepo.{name} is public"


def test_the_checker_sees_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import subprocess\n"
                   "subprocess.run(['git', 'status'])\n"
                   "self.repo._run('log')\n"
                   "x = sr.repo._git\n"
                   "subprocess.run(['bwrap', 'true'])\n"
                   "sandbox.run(['git', 'log'], {}, root)\n")
    # a literal git argv is janus-git starting git, even through the sandbox (a tool that
    # names git in its args, as tools/external.py runs, is not)
    assert sorted(git_calls(bad)) == [
        "bad.py:2: starts git", "bad.py:3: reaches into self.repo._run",
        "bad.py:3: self.repo._run(...)", "bad.py:4: reaches into sr.repo._git",
        "bad.py:6: starts git"]


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom | ast.Import,
             known: dict[str, Path]) -> list[str]:
    """The janus_git modules NODE (in MODULE) imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in known else target)
    return [m for m in out if m in known]


def _top_level(tree: ast.Module):
    """The import statements that run when the module is imported (not in functions)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _name(node.test).endswith("TYPE_CHECKING"):
            todo.extend(node.orelse)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt))


def import_graph(inside: str, module_level: bool) -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        if name != inside and not name.startswith(inside + "."):
            continue
        tree = ast.parse(path.read_text(), str(path))
        nodes = _top_level(tree) if module_level else (
            n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        is_pkg = path.name == "__init__.py"
        graph[name] = {m for n in nodes for m in _resolve(name, is_pkg, n, known)
                       if m != name and (m == inside or m.startswith(inside + "."))}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_daemon_imports_have_no_cycle():
    graph = import_graph("janus_git.daemon", module_level=False)
    assert len(graph) > 5
    assert cycles(graph) == []


@pytest.mark.parametrize("inside", ["janus_git"])
def test_package_has_no_import_cycle_at_module_level(inside):
    assert cycles(import_graph(inside, module_level=True)) == []
