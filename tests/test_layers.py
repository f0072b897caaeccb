"""The engine and the network layer know nothing of the service: no settings, HTTP API, jobs or pool."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
SERVICE_MODULES = ("app.config", "app.api", "app.jobs", "app.pool", "app.main", "app.cli")


def imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` imports, at the top or inside a function (relative imports made absolute)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def service_imports(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == s or m.startswith(s + ".") for s in SERVICE_MODULES)}


@pytest.mark.parametrize("path", sorted([*APP.glob("engine/*.py"), *APP.glob("net/*.py")]), ids=lambda p: p.name)
def test_engine_and_net_import_nothing_of_the_service(path: Path) -> None:
    package = f"app.{path.parent.name}"
    wrong = service_imports(imported_modules(path.read_text(), package))
    assert not wrong, f"{path.relative_to(APP.parent)} imports {sorted(wrong)}"


@pytest.mark.parametrize(
    "source",
    [
        "from app.config import Settings",
        "import app.api.problems",
        "def f():\n    from app.jobs import model",
        "from ..pool.base import DecoderPool",
        "from .. import config",
    ],
)
def test_the_check_sees_every_form_of_a_service_import(source: str) -> None:
    assert service_imports(imported_modules(source, "app.net"))


def test_the_check_lets_the_layers_below_through() -> None:
    source = "from app.engine.errors import EngineError\nfrom .policy import FetchPolicy\nimport httpx"
    assert imported_modules(source, "app.net") >= {"app.engine.errors", "app.net.policy", "httpx"}
    assert not service_imports(imported_modules(source, "app.net"))
