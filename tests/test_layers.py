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
