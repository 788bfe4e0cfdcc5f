"""The package's import arrows run one way (docs/architecture.md):
cli -> master -> workers -> {apps, protocols}; master/gateways -> routers -> protocols;
config imported by all and importing none of them. Read from the source with `ast`, so a
violation anywhere (even in a function body) fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pymaster"
SHARED = {"log", "procname", "config"}  # utilities every layer may use
ALLOWED = {
    "config": set(),
    "log": set(),
    "procname": {"config"},
    "protocols": {"log"},
    "apps": {"config", "protocols", "log"},
    "workers": SHARED | {"apps", "protocols"},
    "routers": SHARED | {"protocols"},
    "master": SHARED | {"workers", "routers", "protocols"},
    "cli": SHARED | {"master", "workers", "apps", "protocols", "routers"},
    "__main__": {"cli"},
    "deploy": set(),  # shipped files and their writer: runs on any installation
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "__init__"


def _imports(path: Path) -> set[str]:
    """The first component under `pymaster.` of everything `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pymaster" and len(parts) > 1 and parts[1] != "__version__":
                found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _layer(p) != "__init__")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    layer = _layer(path)
    allowed = ALLOWED[layer] | {layer}
    if layer == "master" and path.name != "gateways.py":
        allowed = allowed - {"routers"}
    bad = _imports(path) - allowed
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(bad)}"


def test_every_package_says_what_it_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init.relative_to(PACKAGE)} has no import rule in its docstring"


def test_no_getattr_on_the_config():
    for path in MODULES:
        text = path.read_text()
        for needle in ("getattr(cfg", "getattr(self.cfg", "getattr(arbiter.cfg"):
            assert needle not in text, f"{path.relative_to(PACKAGE)}: {needle}"
