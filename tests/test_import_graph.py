"""The import graph is acyclic and one-way (DESIGN.md): no module imports, even lazily inside a
function, a module that imports it back; ``data_pipeline`` never imports ``pretrain``; ``pretrain``
reaches ``data_pipeline`` only through the shard contract. Read from the source (``ast``), so
imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pretrain", "data_pipeline", "launch")
PRETRAIN_MAY_IMPORT = {"data_pipeline.shards", "data_pipeline.storage"}  # the shard contract; local/remote I/O (neutral: stdlib + the contract)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` is ``a.b.c`` when that is a module)."""
    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {owner(f"{node.module}.{a.name}") for a in node.names}
    return {m for m in found if m}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # a submodule's import of its own package (``from pretrain.checkpoint.store import x`` runs
        # ``pretrain/checkpoint/__init__``) is how packages work, not a dependency between parts
        graph[name] = {m for m in _imports(path, modules) if m != name and not name.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_data_flows_one_way():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("data_pipeline"):
            assert not [d for d in deps if d.startswith(("pretrain", "launch"))], name
        if name.startswith("pretrain"):
            assert {d for d in deps if d.startswith("data_pipeline")} <= PRETRAIN_MAY_IMPORT, name
            assert not [d for d in deps if d.startswith("launch")], name


def test_the_check_sees_a_lazy_cycle(tmp_path):
    """The two cycles this test was written for ran through imports inside functions."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]
