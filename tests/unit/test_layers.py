"""The import graph points one way (docs/architecture.md): each layer imports only layers
below it, and no module imports itself back through others, function-level imports included.

The graph is read from the source (every `import` and `from ... import` statement, wherever
it sits in the module), not from what a run happens to import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nodecheck"

# Lowest first. A module may import its own package and any package of a lower rank; the
# packages of one rank do not import each other (entry and selftest are the commands, and
# call each other: a selftest asks the agent, the agent runs a selftest).
RANKS: dict[str, int] = {
    "core": 0,
    "log": 0,
    "hostlist": 0,
    "prometheus": 0,  # data only: the rules file a site loads
    "probes": 1,
    "slurm": 1,
    "store": 1,
    "notify": 1,
    "checks": 2,
    "run": 3,
    "quarantine": 4,
    "entry": 5,
    "selftest": 5,
    "__main__": 6,
}
PEERS = {frozenset({"entry", "selftest"})}


def _module_name(path: Path) -> str:
    parts = ["nodecheck", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` refers to: itself, or the package holding the imported name."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                wanted = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in wanted:
                if target.split(".")[0] == "nodecheck":
                    found = _resolve(target, modules)
                    if found and found != name:
                        targets.add(found)
        graph[name] = targets
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "nodecheck"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        mine = layer(module)
        for target in sorted(targets):
            theirs = layer(target)
            if mine == theirs or frozenset({mine, theirs}) in PEERS:
                continue
            if theirs == "nodecheck":
                # The package's own __init__ holds the version only.
                continue
            if mine not in RANKS or theirs not in RANKS:
                wrong.append(f"{module} -> {target}: a package the layers do not name")
            elif RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{module} ({mine}) -> {target} ({theirs})")
    return wrong


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_a_layer():
    names = {layer(m) for m in _modules()} - {"nodecheck"}
    assert names <= set(RANKS), names - set(RANKS)


def test_no_layer_imports_upward():
    assert upward_imports(import_graph()) == []


def test_core_imports_nothing_of_nodecheck_outside_core():
    graph = import_graph()
    outside = {
        m: sorted(t for t in targets if layer(t) != "core")
        for m, targets in graph.items()
        if layer(m) == "core"
    }
    assert {m: t for m, t in outside.items() if t} == {}


def test_no_import_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"nodecheck.run.a": {"nodecheck.core.b"}, "nodecheck.core.b": set()}, []),
        (
            {"nodecheck.store.a": {"nodecheck.run.b"}, "nodecheck.run.b": set()},
            ["nodecheck.store.a (store) -> nodecheck.run.b (run)"],
        ),
        (
            {"nodecheck.slurm.a": {"nodecheck.store.b"}, "nodecheck.store.b": set()},
            ["nodecheck.slurm.a (slurm) -> nodecheck.store.b (store)"],
        ),
    ],
)
def test_the_layer_rule_itself(graph, expected):
    """The rule catches an upward import and an import between packages of one rank."""
    assert upward_imports(graph) == expected


def test_the_cycle_finder_itself():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}
