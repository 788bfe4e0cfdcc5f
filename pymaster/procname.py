"""Process titles: `pymaster master`, `pymaster worker N`, with uWSGI's procname options."""

from __future__ import annotations

try:
    from setproctitle import setproctitle
except ImportError:  # pragma: no cover - a declared dependency

    def setproctitle(title: str) -> None:
        pass


def title_for(cfg, name: str, master: bool = False) -> str:
    """The title for `name` ('master', 'worker 1', 'fastrouter 1') after the procname options."""
    if master and getattr(cfg, "procname_master", None):
        base = cfg.procname_master
    elif getattr(cfg, "procname", None):
        base = cfg.procname
    else:
        base = f"pymaster {name}"
    prefix = getattr(cfg, "procname_prefix", None) or ""
    spaced = getattr(cfg, "procname_prefix_spaced", None)
    if spaced:
        prefix = spaced + " "
    return f"{prefix}{base}{getattr(cfg, 'procname_append', None) or ''}"


def set_title(cfg, name: str, master: bool = False) -> None:
    setproctitle(title_for(cfg, name, master))
