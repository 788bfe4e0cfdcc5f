"""Dropping root after the sockets are bound (`--uid`, `--gid`), and the backlog limit check."""

from __future__ import annotations

import grp
import os
import pwd

from pymaster.log import log


class PrivilegeError(Exception):
    """A user, group or limit that cannot be used; the message names it."""


def _resolve(value: str, kind: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid if kind == "user" else grp.getgrnam(value).gr_gid
    except KeyError:
        raise PrivilegeError(
            f"unknown {kind} '{value}' (--{'uid' if kind == 'user' else 'gid'})"
        ) from None


def drop(uid: str | None, gid: str | None) -> None:
    """setgid, initgroups, then setuid; logs uWSGI's lines. A no-op when not root (after a
    reload the re-exec'd master already runs as the target user)."""
    if os.geteuid() != 0:
        return
    if gid:
        g = _resolve(gid, "group")
        os.setgroups([])
        os.setgid(g)
        log(f"setgid() to {g}")
    if uid:
        u = _resolve(uid, "user")
        if _has_pw(u):
            if not gid:
                os.setgid(pwd.getpwuid(u).pw_gid)
            os.initgroups(pwd.getpwuid(u).pw_name, os.getgid())
        os.setuid(u)
        log(f"setuid() to {u}")


def _has_pw(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def check_backlog(listen: int) -> None:
    """uWSGI aborts when --listen exceeds net.core.somaxconn: the kernel would cap it silently."""
    try:
        with open("/proc/sys/net/core/somaxconn") as fh:
            limit = int(fh.read())
    except (OSError, ValueError):
        return
    if listen > limit:
        raise PrivilegeError(
            f"Listen queue size is greater than the system max net.core.somaxconn "
            f"({limit}): lower --listen or raise the sysctl"
        )
