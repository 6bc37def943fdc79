"""The core's folders are its stages, and imports only go down: the data stage knows nothing of features, the
feature stage nothing of training, and only the front doors call training, serving and monitoring: the shell's
(``cityml/cli``) and Airflow's (``cityml/dagkit.py``, inside task bodies). An import that goes up (or sideways
into the CLI) fails here, naming the file and the module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cityml.settings import PROJECT_ROOT

CORE = PROJECT_ROOT / "cityml"
UPPER = ("training", "serving", "monitoring", "cityml.cli")
#: What each part of the core must not import (a module path prefix).
FORBIDDEN = {
    "data": (*UPPER, "cityml.features"),
    "features": UPPER,
    "core": UPPER,
}


def _part(path: Path) -> str | None:
    rel = path.relative_to(CORE).parts
    if rel[0] in ("cli", "dagkit.py"):
        return None  # the front doors (the shell's and Airflow's) may call every stage
    return rel[0] if rel[0] in ("data", "features") else "core"


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_imports_go_down_the_stages(path: Path) -> None:
    part = _part(path)
    if part is None:
        return
    bad = [m for m in _imports(path) for f in FORBIDDEN[part] if m == f or m.startswith(f + ".")]
    assert not bad, f"cityml/{path.relative_to(CORE)} ({part}) imports {bad}"
