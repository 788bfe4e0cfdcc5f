"""The Python side of the PSGI bridge: check the Perl side, then exec plackup as a worker.

A PSGI worker is `plackup -s Pymaster -L Pymaster -E deployment [--plackup-opt ...] app.psgi`
with the Plack handler and loader shipped in `pymaster/workers/psgi/perl/` on its `-I` path. The
master forks, then `exec_worker` replaces the child with plackup; the handler takes the
listening sockets and the scoreboard from the inherited fds named in the environment
(docs/worker-contract.md) and serves the uwsgi protocol (and HTTP) itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import NoReturn

from pymaster import log as logmod
from pymaster.config import Config
from pymaster.log import log
from pymaster.workers.contract import (
    EXIT_FAILED_APP,
    Recycling,
    die_with_master,
    option_environment,
)

PERL_DIR = str(Path(__file__).resolve().parent / "perl")
CHECK_TIMEOUT = 60

_MISSING_MODULE = re.compile(r"Can't locate (\S+)\.pm in @INC")

# The worker options (`worker=True` in the option table) and how the Perl worker honours
# them: each one as PYMASTER_OPT_<NAME>, read by Plack::Handler::Pymaster, except these:
VIA_RECYCLING = (
    "max-requests",
    "max-requests-delta",
    "min-worker-lifetime",
    "reload-on-rss",
    "reload-on-as",
)
"""Folded by the master into PYMASTER_RECYCLE_* (workers/contract.Recycling)."""
BY_THE_MASTER = ("harakiri",)
"""Enforced by the master, from the worker's scoreboard slot."""
OTHER_KINDS = ("asgi-loop", "asgi-concurrency", "asgi-lifespan")
"""The ASGI worker's own: `--asgi` with `--psgi` is refused at start, so they never reach Perl."""
NOT_HONOURED: dict[str, str] = {
    "threads": "PSGI workers are single-threaded: use more processes",
    "thread-stacksize": "PSGI workers are single-threaded: use more processes",
    "disable-write-exception": "a failed write ends a PSGI response (uWSGI's psgi plugin dies "
    "in a streaming write whatever this option says); the lines are quieted by "
    "--ignore-sigpipe and --ignore-write-errors",
    "websockets-max-size": "a PSGI app doing WebSockets over psgix.io frames them itself "
    "(e.g. Protocol::WebSocket's max_fragments_amount / max_payload_size)",
    "websockets-ping-freq": "a PSGI app doing WebSockets over psgix.io pings from its own code",
    "write-errors-tolerance": "the first failed write ends a PSGI response (the client is gone: "
    "later writes would fail too)",
    "offload-threads": "PSGI workers send file bodies themselves with sendfile(): use more "
    "processes, or put nginx in front for big downloads",
}
"""Worker options the Perl worker cannot honour, with what to use instead; the master logs
`option --X is not honoured by PSGI workers: <instead>` at start for each one the user set.
Every other worker option reaches it (tests/unit/test_psgi.py checks that each one does)."""


PYTHON_ONLY_STATIC = (
    "static-map",
    "static-map2",
    "check-static",
    "check-static-docroot",
    "static-index",
    "static-skip-ext",
    "static-safe",
    "static-expires-type",
    "static-expires-type-mtime",
    "static-expires",
    "static-expires-mtime",
    "static-expires-uri",
    "static-expires-uri-mtime",
    "static-expires-path-info",
    "static-expires-path-info-mtime",
    "static-gzip",
    "static-gzip-all",
    "static-gzip-dir",
    "static-gzip-ext",
    "honour-range",
    "mimefile",
    "file-serve-mode",
)
"""Static file options the Python workers serve (pymaster/apps/static.py) and the Perl
worker does not: refused at start for a PSGI app, so /static URLs never silently reach it."""


def warn_unhonoured(cfg: Config) -> None:
    """At start: one log line per option set by the user that PSGI workers do not honour;
    RuntimeError for a static file option (Python workers only)."""
    for name in PYTHON_ONLY_STATIC:
        if cfg.is_set(name):
            raise RuntimeError(
                f"--{name}: static files are served by pymaster's Python workers only; for a "
                "PSGI app wrap it in Plack::Middleware::Static (`enable 'Static', path => "
                "qr{^/static/}, root => 'DIR'` in app.psgi)"
            )
    for name, instead in NOT_HONOURED.items():
        if cfg.is_set(name):
            log(f"option --{name} is not honoured by PSGI workers: {instead}")


def _opts(cfg: Config) -> list[str]:
    """The --plackup-opt values split into arguments (each value may hold several)."""
    out: list[str] = []
    for item in cfg.plackup_opt:
        out += shlex.split(item)
    return out


def _local_lib(cfg: Config) -> str | None:
    root = cfg.perl_local_lib
    return str(Path(root, "lib", "perl5")) if root else None


def worker_argv(cfg: Config) -> list[str]:
    """plackup's argv for a worker (also used, with PYMASTER_CHECK=1, by preflight)."""
    argv = [shutil.which("plackup") or "plackup", "-I", PERL_DIR]
    lib = _local_lib(cfg)
    if lib:
        argv += ["-I", lib]
    argv += ["-E", "deployment", *_opts(cfg), "-s", "Pymaster", "-L", "Pymaster", str(cfg.psgi)]
    return argv


def _base_env(cfg: Config) -> dict[str, str]:
    env = dict(os.environ)
    for item in cfg.env:
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    lib = _local_lib(cfg)
    if lib:
        env["PERL5LIB"] = os.pathsep.join(p for p in (lib, env.get("PERL5LIB")) if p)
        env["PERL_LOCAL_LIB_ROOT"] = str(cfg.perl_local_lib)
    env["PYMASTER_PSGI"] = str(cfg.psgi)
    env.pop("PYMASTER_CHECK", None)
    return env


def worker_env(
    cfg: Config,
    worker_id: int,
    listen_fds: list[tuple[int, str]],
    scoreboard_fd: int,
    master_pid: int | None,
) -> dict[str, str]:
    """The environment of worker `worker_id` (docs/worker-contract.md); `master_pid` None or
    0 when there is no master (single-process mode: no parent check)."""
    from pymaster.procname import title_for

    env = _base_env(cfg)
    env.update(
        {
            "PYMASTER_LISTEN_FDS": ",".join(f"{fd}:{proto}" for fd, proto in listen_fds),
            "PYMASTER_WORKER_ID": str(worker_id),
            "PYMASTER_SCOREBOARD_FD": str(scoreboard_fd),
            "PYMASTER_MASTER_PID": str(master_pid or 0),  # 0: no master (single process)
            "PYMASTER_PROCNAME": title_for(cfg, f"worker {worker_id}"),
            # request lines go there, not to fd 2, under a request logger (master/logmaster.py)
            "PYMASTER_REQ_LOG_FD": str(req_fd)
            if (req_fd := logmod.request_fd()) is not None
            else "",
        }
    )
    env.update(option_environment(cfg))  # every option flagged `worker` in the table
    env.update(Recycling.for_worker(cfg, worker_id).environment())
    return env


def _reset_signals() -> None:
    """exec keeps ignored dispositions and the signal mask: give Perl a clean slate."""
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig in (
            signal.SIGHUP,
            signal.SIGINT,
            signal.SIGQUIT,
            signal.SIGTERM,
            signal.SIGPIPE,
            signal.SIGCHLD,
            signal.SIGUSR1,
            signal.SIGUSR2,
            signal.SIGXFSZ,
        ):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):  # not the main thread: exec resets handlers anyway
        pass


def exec_worker(
    cfg,
    worker_id: int,
    listen_fds: list[tuple[int, str]],
    scoreboard_fd: int,
    master_pid: int | None,
) -> NoReturn:
    """In the forked child: replace this process with plackup serving worker `worker_id`."""
    try:
        argv = worker_argv(cfg)
        env = worker_env(cfg, worker_id, listen_fds, scoreboard_fd, master_pid)
        for fd, _proto in listen_fds:
            os.set_inheritable(fd, True)
        os.set_inheritable(scoreboard_fd, True)
        req_fd = logmod.request_fd()
        if req_fd is not None:
            os.set_inheritable(req_fd, True)
        _reset_signals()
        die_with_master()
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        log(
            f"cannot exec plackup for worker {worker_id}: {exc.strerror or exc} "
            f"(install the Debian package libplack-perl)"
        )
    except BaseException as exc:  # never return into the master's code in the child
        log(f"cannot start PSGI worker {worker_id}: {exc!r}")
    os._exit(EXIT_FAILED_APP)


def _debian_name(module: str) -> str:
    return "lib" + module.lower().replace("::", "-") + "-perl"


def preflight(cfg) -> None:
    """Check that the PSGI app can run; RuntimeError with one clear message if not. Also
    says which of the options given PSGI workers do not honour (`NOT_HONOURED`)."""
    warn_unhonoured(cfg)
    from pymaster.apps.wsgi import split_header

    for header in cfg.add_header:
        try:
            split_header(header)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
    app = cfg.psgi
    if not app:
        raise RuntimeError("no PSGI app given: use --psgi FILE")
    if not os.path.isfile(app):
        raise RuntimeError(f"PSGI app file '{app}' not found (cwd {os.getcwd()})")
    if not shutil.which("perl"):
        raise RuntimeError(
            "perl not found on PATH: the PSGI bridge needs perl (Debian package perl)"
        )
    if not shutil.which("plackup"):
        raise RuntimeError(
            "plackup not found on PATH: install Plack (Debian package "
            "libplack-perl, or `cpanm Plack`)"
        )
    env = _base_env(cfg)
    env["PYMASTER_CHECK"] = "1"
    try:
        proc = subprocess.run(
            worker_argv(cfg),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHECK_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"PSGI app '{app}' did not finish loading within {CHECK_TIMEOUT} seconds"
        ) from None
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    if proc.returncode == 0 and "pymaster-psgi-check: ok" in out:
        return
    missing = _MISSING_MODULE.search(out)
    if missing:
        module = missing.group(1).replace("/", "::")
        if module.split("::")[0] == "Plack":
            raise RuntimeError(
                f"Plack is not installed (perl cannot find {module}): install the "
                "Debian package libplack-perl, or `cpanm Plack`"
            )
        raise RuntimeError(
            f"PSGI app '{app}' needs the Perl module {module}, which is not "
            f"installed: apt-get install {_debian_name(module)} "
            f"(or `cpanm {module}`)"
        )
    detail = out.strip()
    match = re.search(r"\*\*\* failed loading PSGI app .*?: (.*) \*\*\*", detail, re.S)
    if match:
        detail = match.group(1).strip()
    raise RuntimeError(f"PSGI app '{app}' failed to load: {detail or f'exit {proc.returncode}'}")
