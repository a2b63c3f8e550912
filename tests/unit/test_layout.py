"""The package's shape: imports point one way between the stages, no circles, pure cores.

Reads the source with `ast` (nothing is imported). Imports under `if TYPE_CHECKING:` are type
annotations only and are not counted: they make no run-time dependency.

Ranks, lowest first; a module may import its own package and anything ranked lower, never
higher, and two stages of one rank (ingest and flush) never import each other:
errors, backoff < points < config < tls < observe < buffer, sparkplug < ingest, flush
< replication < api < service < tools < cli. The command line is on top so that it can start
the tools; nothing else imports them. Pure folders (every stage's `core/`, `config/`,
`points/`) and the pure root modules import no I/O library.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "gateway"
RANK = {
    "errors": 0, "backoff": 0, "points": 1, "config": 2, "tls": 3, "observe": 4, "buffer": 5,
    "sparkplug": 5,
    "ingest": 6, "flush": 6, "replication": 7, "api": 8, "service": 9, "tools": 10, "cli": 11,
    "__init__": 0, "__main__": 12,
}  # fmt: skip
IO_LIBRARIES = {
    "anyio",
    "aiomqtt",
    "paho",
    "lmdb",
    "influxdb_client",
    "prometheus_client",
    "aiohttp",
}
PURE_ROOTS = {"errors", "backoff"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def run_time_imports(tree: ast.Module) -> list[str]:
    """Imported module names, skipping `if TYPE_CHECKING:` blocks (at any depth)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "gateway":
                found.extend(f"gateway.{alias.name}" for alias in node.names)
            else:
                found.append(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the gateway modules it imports at run time (as modules, not names)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in run_time_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if imported.startswith("gateway"):
                target = imported
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]  # a name taken from a module
                if target != name and target in modules:
                    targets.add(target)
        edges[name] = targets
    return edges


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_pure(module: str) -> bool:
    parts = module.split(".")
    return "core" in parts or stage(module) in {"config", "points"} or stage(module) in PURE_ROOTS


def test_every_module_has_a_rank() -> None:
    """A new folder or root module must be placed in the order above."""
    assert {stage(m) for m in graph()} <= RANK.keys()


def test_imports_point_down_and_stages_of_one_rank_stay_apart() -> None:
    """No upward import; ingest and flush meet only in the buffer beneath them."""
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            here, there = stage(module), stage(target)
            if there in {here, "__init__"}:
                continue
            if RANK[there] >= RANK[here]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_module_imports_a_core_of_another_stage_it_should_not() -> None:
    """A pure core imports only errors, backoff, points, config and pure cores."""
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        if is_pure(module)
        for target in targets
        if not is_pure(target) and target != "gateway"
    ]
    assert wrong == []


def test_pure_folders_import_no_io_library() -> None:
    """The sans-io rule by folder: cores stay testable without a network or a disk."""
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        if not is_pure(module):
            continue
        imports = run_time_imports(ast.parse(path.read_text(encoding="utf-8")))
        wrong += [f"{module} imports {i}" for i in imports if i.split(".")[0] in IO_LIBRARIES]
    assert wrong == []


def test_there_is_no_circle() -> None:
    """No two modules reach each other through their imports."""
    try:
        graphlib.TopologicalSorter(graph()).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


def test_the_runtime_never_imports_the_tools() -> None:
    """bench, demo, the simulator and the test servers ship beside the product, not in it."""
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        if stage(module) not in {"tools", "cli", "__main__"}
        for target in targets
        if stage(target) == "tools"
    ]
    assert wrong == []


def test_this_test_sees_the_imports_it_guards() -> None:
    """The graph is not empty and knows a real edge, so the tests above can fail."""
    edges = graph()
    assert "gateway.buffer.capacity" in edges["gateway.ingest.intake"]
    assert "gateway.ingest.commit" in edges["gateway.ingest.intake"]
    assert "gateway.buffer.store" not in edges["gateway.flush.flusher"], "a type-only import"
