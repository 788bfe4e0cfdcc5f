"""Process titles: `pymaster master`, `pymaster worker N`, with uWSGI's procname options."""

from __future__ import annotations

from pymaster.config import Config

try:
    from setproctitle import setproctitle
except ImportError:  # pragma: no cover - a declared dependency

    def setproctitle(title: str) -> None:
        pass


def title_for(cfg: Config, name: str, master: bool = False) -> str:
    """The title for `name` ('master', 'worker 1', 'fastrouter 1') after the procname options."""
    if master and cfg.procname_master:
        base = cfg.procname_master
    elif cfg.procname:
        base = cfg.procname
    else:
        base = f"pymaster {name}"
    prefix = cfg.procname_prefix or ""
    spaced = cfg.procname_prefix_spaced
    if spaced:
        prefix = spaced + " "
    return f"{prefix}{base}{cfg.procname_append or ''}"


def set_title(cfg: Config, name: str, master: bool = False) -> None:
    setproctitle(title_for(cfg, name, master))
