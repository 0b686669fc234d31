"""netopt's import graph, read from the source (nothing is imported), and its cycles.

    python -m netopt.testing.imports            # every module and the netopt modules it imports
    python -m netopt.testing.imports --cycles   # only the cycles (none, if all is well)
    python -m netopt.testing.imports --packages # the same, between netopt's packages

Every `import` counts: at module level, under `TYPE_CHECKING`, inside functions. A package and
its own submodules are not a cycle. Between packages (`package_graph`), a module stands for the
package it is in (`netopt.lut.table` for `netopt.lut`): two packages that import each other by
any of their modules cannot be read, or layered, one without the other.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Mapping
from pathlib import Path

__all__ = ["import_graph", "package_graph", "package_of", "cycles", "main"]

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[:len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    own = {name, *(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))}
    return {m for m in found & known if m not in own and not m.startswith(name + ".")}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each netopt module and the netopt modules it imports."""
    paths = {_module(p): p for p in sorted(root.rglob("*.py"))}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def package_of(module: str) -> str:
    """The top-level netopt package (or module) that `module` belongs to.

    >>> package_of("netopt.lut.table"), package_of("netopt.errors"), package_of("netopt")
    ('netopt.lut', 'netopt.errors', 'netopt')
    """
    return ".".join(module.split(".")[:2])


def package_graph(graph: Mapping[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Each of netopt's top-level packages (and modules) and those it imports, from the module
    graph (`import_graph()` where none is given).

    >>> package_graph({"netopt.a.x": {"netopt.b.y", "netopt.a.z"}, "netopt.a.z": set(), "netopt.b.y": set()})
    {'netopt.a': {'netopt.b'}, 'netopt.b': set()}
    """
    found: dict[str, set[str]] = {}
    for module, imported in (import_graph() if graph is None else graph).items():
        edges = found.setdefault(package_of(module), set())
        edges.update(p for p in map(package_of, imported) if p != package_of(module))
    return found


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netopt.testing.imports", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", action="store_true", help="print only the cycles")
    parser.add_argument("--packages", action="store_true", help="between netopt's top-level packages")
    args = parser.parse_args(argv)
    graph = package_graph() if args.packages else import_graph()
    if not args.cycles:
        for name in sorted(graph):
            print(f"{name}: {', '.join(sorted(graph[name])) or '-'}")
    for group in cycles(graph):
        print("cycle: " + " <-> ".join(group))
    return 1 if cycles(graph) else 0


if __name__ == "__main__":
    raise SystemExit(main())
