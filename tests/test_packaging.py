"""The wheel as pip users get it: its published extras are for users, and its
metadata points nowhere it should not (issue 17, item 10)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).parent.parent
USER_EXTRAS = {
    "all",
    "celery",
    "demo",
    "fastapi",
    "granian",
    "hypercorn",
    "litestar",
    "otel",
    "prometheus",
    "quart",
    "redis",
    "rq",
    "starlette",
    "unidecode",
    "uvicorn",
}


def test_the_wheel_publishes_the_users_extras_only_and_no_placeholder_address(
    tmp_path: Path,
) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("asgi_sse-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(name).decode())
    assert set(metadata.get_all("Provides-Extra")) == USER_EXTRAS  # no dev, bench or docs
    assert metadata.get_all("Project-URL") is None
    assert "example.invalid" not in str(metadata)
    # The long description is for pip users: what to install first, no make targets, and no
    # relative links (they lead nowhere from a package index).
    description = metadata.get_payload()
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert description.startswith("# asgi-sse")
    assert description.index("pip install") < description.index("```python")
    assert "make " not in description
    assert not re.search(r"\]\((?!https?://)", description), "a relative link"
    requires = metadata.get_all("Requires-Dist")
    assert [r for r in requires if "extra ==" not in r] == ["anyio>=4.11", "msgspec>=0.19"]
    # The adapters and the test client ship in the same wheel.
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    assert {
        "asgi_sse/testing/__init__.py",
        "asgi_sse/metrics/prometheus.py",
        "asgi_sse_quart/__init__.py",
    } <= files
