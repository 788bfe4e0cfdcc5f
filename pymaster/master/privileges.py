"""Dropping root after the sockets are bound (`--uid`, `--gid`), and the backlog limit check.

Only root can change its user or group. As uWSGI (core/utils.c uwsgi_as_root, its
`nonroot:` branch), a non-root master asked for another uid or gid refuses to start
("cannot setuid() as non-root user") instead of running as whoever started it; asked for
the ids it already has, there is nothing to do (a master re-exec'd by a reload is in that
case). uWSGI compares only ids given as numbers (a name is resolved only as root, so as
non-root it is ignored); pymaster resolves names too and refuses them alike.
"""

from __future__ import annotations

import grp
import os
import pwd
import resource

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


def check(uid: str | None, gid: str | None) -> None:
    """Before anything is bound: the names resolve, and a non-root process is asked for
    nothing it cannot do (PrivilegeError naming the option and why)."""
    g = _resolve(gid, "group") if gid else None
    u = _resolve(uid, "user") if uid else None
    if os.geteuid() == 0:
        return
    if g is not None and g != os.getgid():
        raise PrivilegeError(
            f"cannot setgid() as non-root user: --gid {gid} asks for gid {g}, but pymaster "
            f"runs as uid {os.getuid()} gid {os.getgid()} and only root can change its group "
            f"(start it as root, or drop --gid)"
        )
    if u is not None and u != os.getuid():
        raise PrivilegeError(
            f"cannot setuid() as non-root user: --uid {uid} asks for uid {u}, but pymaster "
            f"runs as uid {os.getuid()} and only root can change its user "
            f"(start it as root, or drop --uid)"
        )


def drop(uid: str | None, gid: str | None) -> None:
    """setgid, initgroups, then setuid; logs uWSGI's lines. Not root (`check` passed): the
    ids asked for are already ours, which is logged (after a reload the re-exec'd master
    already runs as the target user)."""
    if os.geteuid() != 0:
        check(uid, gid)
        if gid:
            log(f"--gid {gid}: already running as gid {os.getgid()}, nothing to do")
        if uid:
            log(f"--uid {uid}: already running as uid {os.getuid()}, nothing to do")
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


def chown_sockets(spec: str, paths: list[str]) -> None:
    """`--chown-socket USER[:GROUP]`: give the UNIX socket files to that owner right after
    bind, as uWSGI does (an unknown user or group is an error naming it)."""
    user, _, group = spec.partition(":")
    try:
        uid = _resolve(user, "user") if user else -1
        gid = _resolve(group, "group") if group else -1
    except PrivilegeError as exc:
        raise PrivilegeError(f"--chown-socket {spec}: {exc}") from None
    for path in paths:
        try:
            os.chown(path, uid, gid)
        except OSError as exc:
            raise PrivilegeError(f"--chown-socket {spec}: chown({path}): {exc.strerror}") from None
        log(f"chown() socket {path} to {spec}")


def set_umask(text: str) -> None:
    """`--umask MODE` (octal, as uWSGI reads it)."""
    try:
        mask = int(text, 8)
    except ValueError:
        raise PrivilegeError(
            f"invalid umask: {text} (expected an octal mode such as 022)"
        ) from None
    if not 0 <= mask <= 0o777:
        raise PrivilegeError(f"invalid umask: {text} (expected an octal mode such as 022)")
    os.umask(mask)


def set_max_fd(wanted: int | None) -> int:
    """`--max-fd N` sets the soft and hard RLIMIT_NOFILE (raising the hard one needs root; a
    failure is logged and start-up goes on, as uWSGI does); returns the soft limit now."""
    if wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (OSError, ValueError) as exc:
            log(
                f"setrlimit(RLIMIT_NOFILE, {wanted}) for --max-fd failed: {exc} (needs root "
                f"above the hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]})"
            )
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
