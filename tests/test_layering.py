"""The architecture, held by a test: sans-IO at the bottom, ASGI only at the top."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import asgi_sse

PACKAGE = Path(asgi_sse.__file__).parent
STDLIB = sys.stdlib_module_names


def imports(module: str) -> set[str]:
    """Top-level names a module imports; ``.x`` for the package's own modules."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." + (node.module or "") if node.level else node.module.split(".")[0])  # type: ignore[union-attr]
    return found - {"__future__"}


@pytest.mark.parametrize("module", ["_events", "_encoder", "_exceptions", "_log"])
def test_sans_io_modules_use_the_standard_library_and_msgspec_only(module: str) -> None:
    outside = {name for name in imports(module) if not name.startswith(".")} - STDLIB
    assert outside <= {"msgspec", "unidecode"}, outside  # unidecode: optional, on request
    assert "._bridge" not in imports(module)


@pytest.mark.parametrize("module", ["_bridge", "_jobs", "_store", "_resumable", "redis"])
def test_the_bridge_and_jobs_know_nothing_of_asgi(module: str) -> None:
    source = (PACKAGE / f"{module}.py").read_text()
    assert "._response" not in imports(module)
    assert "http.response" not in source
    assert "scope[" not in source


def test_only_the_top_layer_speaks_asgi_messages() -> None:
    speakers = {
        p.stem
        for p in PACKAGE.glob("*.py")
        if any(word in p.read_text() for word in ('"http.', '"lifespan', 'scope["'))
    }
    assert speakers == {"_http", "_response", "_middleware", "_app"}


def test_the_hub_knows_nothing_of_asgi() -> None:
    assert {name for name in imports("_hub") if name.startswith(".")} == set()


@pytest.mark.parametrize("module", ["_store", "redis"])
def test_backends_see_only_the_log_rules_and_each_other(module: str) -> None:
    """A backend stores and notifies; it knows nothing of streams, jobs or HTTP."""
    assert {name for name in imports(module) if name.startswith(".")} <= {"._store", "._log"}


ADAPTERS = Path(__file__).parent.parent / "adapters"


@pytest.mark.parametrize("adapter", sorted(p.name for p in ADAPTERS.glob("asgi_sse_*")))
def test_adapters_use_only_the_public_api(adapter: str) -> None:
    for path in (ADAPTERS / adapter).glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                assert not node.module.startswith("asgi_sse."), (path.name, node.module)
                if node.module == "asgi_sse":
                    names = {alias.name for alias in node.names}
                    assert names <= set(asgi_sse.__all__), (path.name, names)
            elif isinstance(node, ast.Import):
                assert all(not a.name.startswith("asgi_sse.") for a in node.names)


def test_the_public_face_is_re_exports_only() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}
    assert all(hasattr(asgi_sse, name) for name in asgi_sse.__all__)


def test_no_module_grows_past_300_lines_without_saying_why() -> None:
    long = [p for p in PACKAGE.glob("*.py") if len(p.read_text().splitlines()) > 300]
    unexplained = [
        p.name
        for p in long
        if "Past 300 lines" not in (ast.get_docstring(ast.parse(p.read_text())) or "")
    ]
    assert unexplained == []
