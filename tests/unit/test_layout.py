"""The shape of `app/`: which layer may import which, no cycles, no module too long to read.

Read from the source (every `import`, at any depth, including the lazy ones inside functions),
so a rule holds however the code is reached.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def _module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module of app/ and the app modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in APP.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                    ).strip(".")
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m == "app" or m.startswith("app.")}
    modules = set(graph)
    # `from app.store import plans` names a module; `from app.store.sql import Plan` does not.
    return {n: {m for m in deps if m in modules and m != n} for n, deps in graph.items()}


GRAPH = _imports()


def _imports_of(prefix: str) -> list[tuple[str, str]]:
    return [
        (module, dep)
        for module, deps in GRAPH.items()
        if module == prefix or module.startswith(prefix + ".")
        for dep in deps
    ]


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        # Routes store; they never reach delivery or the Userpilot client.
        ("app.api", ("app.delivery", "app.userpilot")),
        # The console reads and acts through the store, as the routes do.
        ("app.console", ("app.delivery", "app.userpilot", "app.sources")),
        # Sources turn events into updates: no delivery, no routes, no Userpilot client.
        ("app.sources", ("app.delivery", "app.api", "app.userpilot", "app.main")),
        # The one ingest service sits below every front door: it reviews, stores, counts and
        # catalogues for the routes, the webhook sources and the backfills, and imports none
        # of them, nor the delivery.
        (
            "app.ingest",
            ("app.api", "app.sources", "app.delivery", "app.userpilot", "app.console", "app.main"),
        ),
        # Stores: no routes, no delivery, no Userpilot, no web framework.
        ("app.store", ("app.api", "app.delivery", "app.userpilot", "app.sources", "app.main")),
        ("app.userpilot", ("app.store", "app.api", "app.delivery", "app.sources")),
        # The ground floor imports nothing of the app.
        ("app.domain", ("app",)),
    ],
)
def test_layers_import_only_downwards(layer: str, forbidden: tuple[str, ...]) -> None:
    wrong = [
        (m, d) for m, d in _imports_of(layer) if _under(d, *forbidden) and not _under(d, layer)
    ]
    assert wrong == []


def test_stores_never_import_fastapi_and_backends_never_import_each_other() -> None:
    for path in (APP / "store").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        ]
        assert not [n for n in names if n.split(".")[0] in ("fastapi", "starlette")], path
    assert not [d for _, d in _imports_of("app.store.sqlite") if _under(d, "app.store.postgres")]
    assert not [d for _, d in _imports_of("app.store.postgres") if _under(d, "app.store.sqlite")]
    # Only the backend choice knows both.
    knows_both = [
        m
        for m, deps in GRAPH.items()
        if any(_under(d, "app.store.sqlite") for d in deps)
        and any(_under(d, "app.store.postgres") for d in deps)
    ]
    assert knows_both == ["app.store.store"]


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(GRAPH.get(module, ())):
            # A package's __init__ is imported with its modules; edges into a parent package
            # from its own modules are how Python loads them, not a cycle of ours.
            if module.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                raise AssertionError(" -> ".join([*stack[stack.index(dep) :], dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
