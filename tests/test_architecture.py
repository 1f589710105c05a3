"""The house's shape, read from the source with `ast`: what may import what.

- The local daemon path imports nothing from daemon/remote/: the one door is
  `coordinator.for_config`, which imports the remote coordinator only when the rules in force
  name a remote.
- The git layer knows nothing of the daemon (the publisher is handed to it).
- No import cycles between modules (a package's modules among themselves count too), not
  even through an import made inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "janus_git"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(module imported, the function it is imported in, or None at the top)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = func
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = child.name
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # for the type checker only: never imported
            if isinstance(child, ast.Import):
                found.extend((a.name, func) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                found.append((mod, func))
                for a in child.names:  # `from . import lifecycle` imports a module
                    if (PKG.parent / (mod.replace(".", "/") + f"/{a.name}.py")).exists() or \
                            (PKG.parent / mod.replace(".", "/") / a.name).is_dir():
                        found.append((f"{mod}.{a.name}", func))
            visit(child, inner)
    visit(tree, None)
    return [(m, f) for m, f in found if m.startswith("janus_git")]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def test_the_local_daemon_path_imports_nothing_from_daemon_remote():
    doors = []
    for name, path in modules().items():
        if name.startswith("janus_git.daemon.remote"):
            continue
        for mod, func in imports(path):
            if mod.startswith("janus_git.daemon.remote"):
                doors.append((name, func, mod))
    assert doors == [("janus_git.daemon.coordinator", "for_config",
                      "janus_git.daemon.remote")], doors


def test_the_git_layer_knows_nothing_of_the_daemon():
    for name, path in modules().items():
        if name.startswith("janus_git.gitrepo"):
            assert not [m for m, _ in imports(path)
                        if m.startswith(("janus_git.daemon", "janus_git.lifecycle"))], name


def test_no_import_cycles_not_even_through_a_function_level_import():
    """A function-level import that closes a cycle is coupling all the same (fastrow and
    index, llm and modelproc, the two cgroup versions were): each module's imports, top-level
    or not, form no cycle."""
    graph = {name: {m for m, _ in imports(path)} for name, path in modules().items()}
    known = set(graph)

    def resolve(mod: str) -> str | None:
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        return mod or None
    # (a module importing its own package's __init__ is no cycle: python loads it first)
    edges = {a: {r for m in deps if (r := resolve(m)) and r != a and not a.startswith(r + ".")}
             for a, deps in graph.items()}
    cycles = []
    done: set[str] = set()

    def walk(node: str, stack: list[str]) -> None:
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            walk(nxt, stack + [node])
        done.add(node)
    for start in sorted(edges):
        walk(start, [])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)
