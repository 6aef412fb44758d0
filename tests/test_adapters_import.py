"""An adapter imported without its framework names the extra to install, as
``asgi_sse.resumable.redis`` does: checked in a fresh interpreter where the
framework cannot be imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

HIDE = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {framework!r}:
            raise ImportError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Hide())
try:
    import {module}
except ImportError as exc:
    print(exc)
"""


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("asgi_sse_quart", "quart", "asgi-sse[quart]"),
        ("asgi_sse_litestar", "litestar", "asgi-sse[litestar]"),
        ("asgi_sse_starlette", "starlette", "asgi-sse[starlette]"),
        ("asgi_sse.resumable.redis", "redis", "asgi-sse[redis]"),
        ("asgi_sse.resumable.rq", "rq", "asgi-sse[rq]"),
        ("asgi_sse.resumable.celery", "celery", "asgi-sse[celery]"),
        ("asgi_sse.resumable.rq", "redis", "asgi-sse[rq]"),
    ],
)
def test_an_adapter_without_its_framework_names_the_extra(
    module: str, framework: str, extra: str
) -> None:
    script = HIDE.format(framework=framework, module=module)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert f"pip install '{extra}'" in result.stdout, result.stdout + result.stderr
