"""uWSGI's hooks: `hook-PHASE = ACTION:ARGS`, run in order at a point of the start-up.

Phases (uWSGI's names in the log line `running "ACTION:ARGS" (PHASE)...`): `asap` (after
the configuration is read), `as root` (before --uid/--gid are dropped), `as user` (after),
`pre app` / `post app` (around the app import in the master), `master-start` (when the
master loop starts). They run again in each image, so on every reload too; never in the
reload check. A failing action stops the start (`FATAL hook failed, destroying instance`).

Actions: `exec:CMD` (`/bin/sh -c`, non-zero exit fails), `safeexec:CMD` (never fails),
`mkdir:`, `chdir:`/`cd:`, `putenv:K=V`, `write:FILE TEXT`, `append:FILE TEXT`, `create:FILE`,
`unlink:`, `print:`/`log:`, `exit:[CODE]`, and `unix_signal:N FUNCTION` (master-start),
which binds signal N to one of uWSGI's master functions (`UNIX_FUNCTIONS`). Any other action
is refused at start, naming it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pymaster.log import log

if TYPE_CHECKING:
    from pymaster.config import Config
    from pymaster.master.arbiter import Arbiter

PHASES = ("asap", "as root", "as user", "pre app", "post app", "master-start")


def entries(cfg: Config, phase: str) -> list[str]:
    """The hooks configured for `phase`, in order."""
    return {
        "asap": cfg.hook_asap,
        "as root": cfg.hook_as_root,
        "as user": cfg.hook_as_user,
        "pre app": cfg.hook_pre_app,
        "post app": cfg.hook_post_app,
        "master-start": cfg.hook_master_start,
    }[phase]


ACTIONS = (
    "exec safeexec mkdir chdir cd putenv write append create creat unlink print log exit "
    "unix_signal"
).split()
# uWSGI's master functions a unix_signal hook may name -> the arbiter's method
UNIX_FUNCTIONS = {
    "gracefully_kill_them_all": "cmd_graceful_shutdown",
    "kill_them_all": "cmd_brutal_shutdown",
    "grace_them_all": "cmd_graceful_reload",
    "reap_them_all": "cmd_brutal_reload",
    "uwsgi_reload": "cmd_graceful_reload",
}
# what pymaster already does on these signals (then the hook changes nothing)
BUILTIN: dict[int, str] = {
    int(signal.SIGTERM): "cmd_graceful_shutdown",
    int(signal.SIGHUP): "cmd_graceful_reload",
}


class HookError(Exception):
    pass


def _split(entry: str) -> tuple[str, str]:
    action, sep, arg = entry.partition(":")
    if not sep:
        raise HookError(f"invalid hook syntax, must be hook:args: {entry}")
    return action.lstrip("!"), arg


def _unix_signal(arg: str) -> tuple[int, str]:
    num, _, func = arg.strip().partition(" ")
    try:
        signum = int(num)
        signal.Signals(signum)
    except ValueError:
        raise HookError(f"invalid unix_signal syntax, must be <signum> <func>: {arg}") from None
    func = func.strip()
    if func not in UNIX_FUNCTIONS:
        raise HookError(
            f'unix_signal: unable to find function "{func}" (known: '
            f"{', '.join(sorted(UNIX_FUNCTIONS))})"
        )
    return signum, func


def check(cfg: Config) -> None:
    """Every hook's action exists (HookError naming it otherwise)."""
    for phase in PHASES:
        for entry in entries(cfg, phase):
            action, arg = _split(entry)
            if action not in ACTIONS:
                raise HookError(
                    f"hook action not found: {action} (--hook-{phase.replace(' ', '-')} = "
                    f"{entry}); pymaster knows {', '.join(ACTIONS)}"
                )
            if action == "unix_signal":
                if phase != "master-start":
                    raise HookError(f"unix_signal hooks run in hook-master-start only: {entry}")
                _unix_signal(arg)


def _write(arg: str, mode: str) -> None:
    path, sep, text = arg.partition(" ")
    if not sep:
        raise HookError(f"invalid hook write syntax, must be: <file> <string>: {arg}")
    with open(path, mode) as fh:
        fh.write(text)


def _exec(arg: str) -> int:
    return subprocess.call(["/bin/sh", "-c", arg], stdin=subprocess.DEVNULL)


def run_action(action: str, arg: str) -> None:
    """One action in this process; HookError (or OSError) when it fails."""
    if action in ("exec", "safeexec"):
        code = _exec(arg)
        if code != 0:
            log(f'command "{arg}" exited with non-zero code: {code}')
            if action == "exec":
                raise HookError(f"exec failed with {code}")
    elif action == "mkdir":
        # an existing directory is fine (uWSGI fails): the hooks run again on every reload
        if not os.path.isdir(arg):
            os.mkdir(arg, 0o777)
    elif action in ("chdir", "cd"):
        os.chdir(arg)
    elif action == "putenv":
        key, _, value = arg.partition("=")
        os.environ[key] = value
    elif action == "write":
        _write(arg, "w")
    elif action == "append":
        _write(arg, "a")
    elif action in ("create", "creat"):
        open(arg, "a").close()
    elif action == "unlink":
        os.unlink(arg)
    elif action in ("print", "log"):
        log(arg)
    elif action == "exit":
        sys.stderr.flush()
        os._exit(int(arg) if arg.strip() else 0)
    else:
        raise HookError(f"hook action not found: {action}")


def run(cfg: Config, phase: str, arbiter: Arbiter | None = None) -> None:
    """Run the hooks of `phase` in order; HookError on the first failure."""
    for entry in entries(cfg, phase):
        action, arg = _split(entry)
        log(f'running "{entry}" ({phase})...')
        try:
            if action == "unix_signal":
                assert arbiter is not None
                bind_signal(arbiter, *_unix_signal(arg))
            else:
                run_action(action, arg)
        except (OSError, HookError) as exc:
            log(f"hook {entry!r} failed: {exc}")
            log(f"{time.ctime()} - FATAL hook failed, destroying instance")
            raise HookError(f"hook {entry!r} failed: {exc}") from None


def bind_signal(arbiter: Arbiter, signum: int, func: str) -> None:
    method = UNIX_FUNCTIONS[func]
    if BUILTIN.get(signum) == method:
        log(
            f"unix_signal:{signum} {func}: {signal.Signals(signum).name} already does this in "
            "pymaster (nothing to change)"
        )
        return
    handler: Callable[[], None] = getattr(arbiter, method)
    name = signal.Signals(signum).name
    setattr(arbiter, f"on_{name}", handler)  # the loop dispatches on_<SIGNAL>
    signal.signal(signum, arbiter._enqueue)


def attach(arbiter: Arbiter, cfg: Config) -> None:
    """hook-master-start runs when the loop starts; a failure stops the instance (exit 1)."""
    if not cfg.hook_master_start:
        return

    def master_start() -> None:
        try:
            run(cfg, "master-start", arbiter)
        except HookError:
            arbiter.shutdown(graceful=False, code=1)

    arbiter.on_start.insert(0, master_start)
