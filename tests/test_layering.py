"""The architecture, held by a test of the import graph: sans-IO at the bottom,
ASGI only at the top, and resumable jobs a layer the core never imports."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

import asgi_sse

PACKAGE = Path(asgi_sse.__file__).parent
STDLIB = sys.stdlib_module_names
MODULES = sorted(
    ".".join(("asgi_sse", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
)
LAYERS = ("asgi_sse.resumable", "asgi_sse.testing", "asgi_sse.metrics")
CORE = [m for m in MODULES if not m.startswith(LAYERS)]
RESUMABLE = [m for m in MODULES if m.startswith("asgi_sse.resumable")]


def path(module: str) -> Path:
    parts = module.split(".")[1:]
    file = PACKAGE.joinpath(*parts)
    return file / "__init__.py" if file.is_dir() else file.with_suffix(".py")


def imports(module: str) -> set[str]:
    """The modules ``module`` imports, relative imports resolved to full names."""
    package = module if path(module).name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path(module).read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package)
            found.add(base)
    return found - {"__future__"}


def outside(module: str) -> set[str]:
    return {name.split(".")[0] for name in imports(module) if not name.startswith("asgi_sse")}


def own(module: str) -> set[str]:
    return {name for name in imports(module) if name.startswith("asgi_sse")}


SANS_IO = [
    "asgi_sse._events",
    "asgi_sse._encoder",
    "asgi_sse._exceptions",
    "asgi_sse.resumable._log",
    "asgi_sse.testing._messages",
    "asgi_sse._latest",
    "asgi_sse.resumable._redis_lua",
    "asgi_sse.resumable._redis_entries",
    "asgi_sse._observe",
]


def test_the_module_list_is_what_these_rules_are_about() -> None:
    assert set(SANS_IO) <= set(MODULES)
    assert "asgi_sse.resumable.redis" in RESUMABLE


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_modules_use_the_standard_library_and_msgspec_only(module: str) -> None:
    assert outside(module) - STDLIB <= {"msgspec", "unidecode"}  # unidecode: optional
    assert own(module) <= {"asgi_sse._events"}


@pytest.mark.parametrize("module", CORE)
def test_the_core_never_imports_the_layers_built_on_it(module: str) -> None:
    assert not {name for name in own(module) if name.startswith(LAYERS)}
    assert not outside(module) & {"prometheus_client", "opentelemetry"}


def test_the_bridge_knows_only_anyio_and_its_exception() -> None:
    assert outside("asgi_sse._bridge") - STDLIB == {"anyio"}
    assert own("asgi_sse._bridge") == {"asgi_sse._exceptions", "asgi_sse._latest"}


@pytest.mark.parametrize(
    "module", ["asgi_sse._run", "asgi_sse._jobs", "asgi_sse._items", "asgi_sse._hub"]
)
def test_runs_and_policy_know_nothing_of_the_streams_built_on_them(module: str) -> None:
    assert not own(module) & {
        "asgi_sse._exchange",
        "asgi_sse._response",
        "asgi_sse._middleware",
        "asgi_sse._app",
    }
    assert "http.response" not in path(module).read_text()


def test_only_the_top_layer_speaks_asgi_messages() -> None:
    # ASGI's message types, whole (not an OpenTelemetry attribute such as "http.request.method").
    message = re.compile(
        r'"(http\.(request|response\.start|response\.body|disconnect)|lifespan[.\w]*)"|scope\["'
    )
    speakers = {module for module in MODULES if message.search(path(module).read_text())}
    assert speakers == {
        "asgi_sse._http",
        "asgi_sse._exchange",
        "asgi_sse._response",
        "asgi_sse._middleware",
        "asgi_sse._app",
        "asgi_sse.testing._client",  # the other side: a client of any ASGI app
    }


def test_the_hub_imports_only_what_observers_see() -> None:
    assert own("asgi_sse._hub") == {"asgi_sse._observe"}


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("asgi_sse.metrics")])
def test_metrics_see_streams_only_as_observers_do(module: str) -> None:
    assert own(module) <= {"asgi_sse._observe", "asgi_sse.metrics"}


BACKENDS = [
    "asgi_sse.resumable._store",
    "asgi_sse.resumable._memory",
    "asgi_sse.resumable.redis",
    "asgi_sse.resumable._redis_wire",
]


@pytest.mark.parametrize("module", BACKENDS)
def test_backends_see_only_the_log_rules_and_each_other(module: str) -> None:
    """A backend stores and notifies; it knows nothing of streams, jobs or HTTP."""
    assert own(module) <= {
        "asgi_sse.resumable._store",
        "asgi_sse.resumable._log",
        "asgi_sse.resumable._redis_lua",
        "asgi_sse.resumable._redis_entries",
        "asgi_sse.resumable._redis_wire",
    }


ADAPTERS = Path(__file__).parent.parent / "adapters"
PUBLIC = {"asgi_sse": set(asgi_sse.__all__), "asgi_sse.resumable": set()}
PUBLIC["asgi_sse.resumable"] = set(importlib.import_module("asgi_sse.resumable").__all__)


@pytest.mark.parametrize("adapter", sorted(p.name for p in ADAPTERS.glob("asgi_sse_*")))
def test_adapters_use_only_the_public_api(adapter: str) -> None:
    for file in (ADAPTERS / adapter).glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module.split(".")[0] == "asgi_sse":
                    assert node.module in PUBLIC, (file.name, node.module)
                    names = {alias.name for alias in node.names}
                    assert names <= PUBLIC[node.module], (file.name, names)
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "asgi_sse" for a in node.names)


@pytest.mark.parametrize(
    "module", ["asgi_sse", "asgi_sse.resumable", "asgi_sse.testing", "asgi_sse.metrics"]
)
def test_the_public_faces_are_re_exports_only(module: str) -> None:
    tree = ast.parse(path(module).read_text())
    assert {type(node).__name__ for node in tree.body} <= {"Expr", "ImportFrom", "Assign"}
    face = importlib.import_module(module)
    assert all(hasattr(face, name) for name in face.__all__)


def test_the_top_level_face_is_what_a_streaming_user_needs() -> None:
    assert len(asgi_sse.__all__) <= 16
    assert not set(asgi_sse.__all__) & PUBLIC["asgi_sse.resumable"]


def test_no_module_grows_past_300_lines() -> None:
    long = {m: n for m in MODULES if (n := len(path(m).read_text().splitlines())) > 300}
    assert long == {}
