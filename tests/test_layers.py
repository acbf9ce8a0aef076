"""The core stays sans-I/O: no module under relay/core imports an I/O library or reads a clock."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "relay" / "core"
FORBIDDEN_IMPORTS = {
    "asyncio",
    "websockets",
    "redis",
    "socket",
    "uvloop",
    "prometheus_client",
    "time",
    "datetime",
    "selectors",
    "threading",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_exist() -> None:
    assert {p.name for p in CORE.glob("*.py")} >= {"protocol.py", "document.py", "model.py"}


def test_core_imports_no_io() -> None:
    offenders = {
        p.name: sorted(_imports(p) & FORBIDDEN_IMPORTS)
        for p in CORE.glob("*.py")
        if _imports(p) & FORBIDDEN_IMPORTS
    }
    assert offenders == {}


def test_core_does_not_import_the_shell() -> None:
    for p in CORE.glob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("relay.server", "relay.backends")), p.name


# ---------------------------------------------------------------- no import cycles

RELAY = CORE.parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(RELAY.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _relay_imports(path: Path) -> set[str]:
    """The relay modules a module imports, TYPE_CHECKING imports included (a cycle in
    types is still a cycle in the design)."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "relay")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "relay":
                continue
            out.add(mod)
            for a in node.names:  # `from relay.server import hub` imports a module
                if (
                    (RELAY.parent / (mod + "." + a.name).replace(".", "/"))
                    .with_suffix(".py")
                    .exists()
                ):
                    out.add(f"{mod}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in RELAY.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for dep in _relay_imports(path):
            # a package import means its __init__; a name in a module means that module
            while dep and dep not in modules:
                dep = dep.rpartition(".")[0]
            if dep and dep != name and dep != "relay":
                deps.add(dep)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles_in_relay() -> None:
    graph = _graph()
    assert len(graph) > 30
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_shell_modules_talk_to_the_registry_not_the_hub() -> None:
    graph = _graph()
    for name in (
        "relay.server.cluster",
        "relay.server.ticker",
        "relay.server.registry",
        "relay.server.outlet",
        "relay.server.fanout",
        "relay.server.client",
    ):
        assert "relay.server.hub" not in graph[name], name


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/helpers.py, tests/browser.py (the Chromium harness) and
    tests/redis_cluster_server.py (fixtures in conftest.py): a test module imported by
    another runs its tests twice and hides what the other depends on."""
    tests_dir = Path(__file__).resolve().parent
    own = {p.stem for p in tests_dir.glob("*.py")}
    for path in tests_dir.glob("test_*.py"):
        imported = _imports(path)
        shared = {"helpers", "browser", "redis_cluster_server"}
        assert not imported & (own - shared), (path.name, sorted(imported & own))


def test_the_memory_backend_never_loads_redis() -> None:
    """redis-py is several MiB of a process: a relay without Redis must not import it."""
    import subprocess
    import sys

    code = "import sys, relay.server.app, relay.cli; sys.exit('redis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
