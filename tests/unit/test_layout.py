"""The package's import arrows run one way (docs/architecture.md):
cli -> {master, emperor} -> workers -> {apps, protocols}; master/gateways -> routers -> protocols;
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
    "emperor": SHARED | {"protocols", "workers", "master"},
    "cli": SHARED | {"master", "workers", "apps", "protocols", "routers", "emperor"},
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


# The Emperor runs vassals as separate processes: of the master and the workers it may use
# only these self-contained modules.
EMPEROR_MAY_USE = {"pymaster.master.notify", "pymaster.master.sockets", "pymaster.workers.contract"}


def test_the_emperor_uses_no_master_internals():
    for path in (PACKAGE / "emperor").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module = node.module
                if module.startswith(("pymaster.master", "pymaster.workers")):
                    assert module in EMPEROR_MAY_USE, f"{path.name} imports {module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(("pymaster.master", "pymaster.workers")):
                        assert alias.name in EMPEROR_MAY_USE, f"{path.name} imports {alias.name}"


def test_every_package_says_what_it_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init.relative_to(PACKAGE)} has no import rule in its docstring"


def test_no_getattr_on_the_config():
    for path in MODULES:
        text = path.read_text()
        for needle in ("getattr(cfg", "getattr(self.cfg", "getattr(arbiter.cfg"):
            assert needle not in text, f"{path.relative_to(PACKAGE)}: {needle}"


def _worker_imports(path: Path) -> set[str]:
    """What `path` imports from `pymaster.workers.*` (as `kind.module`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[:2] == ["pymaster", "workers"] and len(parts) > 2:
                found.add(".".join(parts[2:]))
                if len(parts) == 3:
                    found.update(f"{parts[2]}.{alias.name}" for alias in node.names)
    return found


def test_the_asgi_worker_takes_only_the_request_log_and_constants_from_the_wsgi_one():
    """workers/asgi may import the contract, the scoreboard, its own modules and, from the
    WSGI worker, only `reqlog` and `conns`; the WSGI worker never imports the ASGI one."""
    for path in (PACKAGE / "workers" / "asgi").glob("*.py"):
        bad = {
            name
            for name in _worker_imports(path)
            if name.split(".")[0] not in ("asgi", "contract", "scoreboard", "routes")
            and name not in ("wsgi.reqlog", "wsgi.conns", "wsgi")
        }
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"
    for path in (PACKAGE / "workers" / "wsgi").glob("*.py"):
        assert not any(n.startswith("asgi") for n in _worker_imports(path)), path
