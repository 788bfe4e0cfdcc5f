"""Entry point: parse options, pick the run mode (single process or master), exit codes.

Exit codes: 0 clean stop, 1 bad configuration or an app that cannot load, 22 with
`--need-app` when no app could be loaded (as uWSGI). With `PYMASTER_RELOAD_CHECK` in the
environment this image is a reload check (master/reloadcheck.py): it goes through start-up up
to the app import, binds nothing, and exits 0 if a re-exec would start.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

from pymaster import __version__, procname
from pymaster import log as logmod
from pymaster.config import Config
from pymaster.config.table import OPTIONS
from pymaster.emperor.vassal import EMPEROR_PID_ENV, keep_with_emperor
from pymaster.log import log
from pymaster.master import (
    cron,
    daemons,
    hooks,
    logmaster,
    privileges,
    reloadcheck,
    sockets,
    vacuum,
)
from pymaster.master.arbiter import RELOADS_ENV, Arbiter, hold_signals
from pymaster.master.cheaper import Cheaper
from pymaster.protocols import speedups
from pymaster.protocols.address import AddressError, sockaddr_text
from pymaster.protocols.subscription import SubscriptionError
from pymaster.workers.contract import EXIT_FAILED_APP
from pymaster.workers.scoreboard import Scoreboard
from pymaster.workers.wsgi.worker import Worker  # imported before fork (and before --uid)

INTERNAL_ENV = (
    RELOADS_ENV,
    "UWSGI_ORIGINAL_PROC_NAME",
    "UWSGI_VASSALS_DIR",
    reloadcheck.CHECK_ENV,
    vacuum.INODES_ENV,
    EMPEROR_PID_ENV,
)
VASSAL_ENV_PREFIXES = ("UWSGI_VASSAL_", "PYMASTER_VASSAL_")  # for the Emperor's vassals
MIN_SLOTS = 64


class StartupError(Exception):
    """Startup cannot go on; carries the exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _signal_pidfile(path: str, sig: int) -> int:
    try:
        with open(path) as fh:
            pid = int(fh.read().strip())
        os.kill(pid, sig)
    except (OSError, ValueError) as exc:
        print(f"pymaster: cannot signal the master in pidfile '{path}': {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from pymaster.config import options

    argv = list(sys.argv[1:] if argv is None else argv)
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in INTERNAL_ENV and not k.startswith(VASSAL_ENV_PREFIXES)
    }
    try:
        cfg = options.parse(argv, environ)
    except options.ConfigError as exc:
        print(f"pymaster: {exc}", file=sys.stderr)
        return 1
    if cfg.help:
        print(options.format_help())
        return 0
    if cfg.version:
        print(__version__)
        return 0
    if cfg.reload:
        return _signal_pidfile(cfg.reload, signal.SIGHUP)
    if cfg.stop:
        return _signal_pidfile(cfg.stop, signal.SIGINT)
    if os.environ.get(reloadcheck.CHECK_ENV):
        return check_reload(cfg)
    if cfg.daemonize and RELOADS_ENV not in os.environ and _daemonize():
        return 0  # the parent: the daemon goes on in the background
    hold_signals()  # until the handlers are in place (a re-exec arrives held)
    if RELOADS_ENV not in os.environ or cfg.log_reopen:  # else keep the inherited log fd
        logmod.setup(cfg.logto or cfg.daemonize, truncate=cfg.log_truncate)
    logmod.set_date(cfg.log_date)
    if cfg.emperor:  # before the log master: the Emperor has no loop that would read it
        return _run_emperor(cfg)
    try:
        logmaster.configure(cfg)
    except logmaster.LogConfigError as exc:
        log(f"pymaster: {exc}")
        return 1
    for warning in cfg.warnings:
        log(warning)
    if cfg.show_config:
        log(cfg.dump_ini())
    try:
        return run(cfg)
    except StartupError as exc:
        log(str(exc))
        return exc.code
    except (sockets.SocketError, privileges.PrivilegeError, AddressError, SubscriptionError) as exc:
        log(f"pymaster: {exc}")  # a bad address, subscription or router setting: named in exc
        return 1


def _run_emperor(cfg: Config) -> int:
    """--emperor: this process is only the Emperor (pymaster/emperor/)."""
    from pymaster.emperor import emperor

    for warning in cfg.warnings:
        log(warning)
    if cfg.show_config:
        log(cfg.dump_ini())
    try:
        _check_unsupported(cfg)
    except StartupError as exc:
        log(str(exc))
        return exc.code
    return emperor.run(cfg, _apply_environment)


def _daemonize() -> bool:
    """--daemonize LOGFILE: detach (fork, setsid); True in the parent, which just exits."""
    if os.fork():
        return True
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    return False


def _stdin_to_devnull() -> None:
    """uWSGI reopens stdin on /dev/null unless --honour-stdin: an app reading stdin must not
    steal the terminal (or block on it)."""
    try:
        null = os.open(os.devnull, os.O_RDONLY)
    except OSError as exc:
        log(f"WARNING: unable to remap stdin, /dev/null not available: {exc.strerror}")
        return
    if null != 0:
        os.dup2(null, 0)
        os.close(null)


def _check_unsupported(cfg: Config) -> None:
    """The fates the table declares: a refused option stops the start with what to use
    instead; an inert one is logged once with why it changes nothing here."""
    for option in OPTIONS:
        if option.refused and cfg.is_set(option.name):
            raise StartupError(
                f"--{option.name}: {option.help} is not part of pymaster; {option.refused}"
            )
    for option in OPTIONS:
        if option.inert and cfg.is_set(option.name):
            log(
                f"option --{option.name} is accepted for uWSGI compatibility and has no effect: "
                f"{option.inert}"
            )


def _check_routes(cfg: Config) -> None:
    """--route/--route-uri/--route-host: refused unless pymaster has the action; dumped."""
    from pymaster.workers import routes

    try:
        rules = routes.parse(cfg)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    for line in routes.table_lines(rules):
        log(line)


def _apply_environment(cfg: Config) -> None:
    for item in cfg.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StartupError(f"invalid --env '{item}': expected NAME=VALUE")
        os.environ[key] = value
    if cfg.chdir:
        try:
            os.chdir(cfg.chdir)
        except OSError as exc:
            raise StartupError(f"chdir() to '{cfg.chdir}' failed: {exc.strerror}") from None
        log(f"chdir() to {cfg.chdir}")


def _socket_specs(cfg: Config) -> list[tuple[str, str]]:
    """(kind, address) of every socket the master binds: the workers' and the routers'."""
    kind = "uwsgi" if cfg.protocol == "uwsgi" else "http"  # --protocol: the -s sockets'
    specs = [(kind, s) for s in cfg.socket]
    specs += [("http", s) for s in cfg.http_socket + cfg.http11_socket]
    if cfg.fastrouter:
        specs += [("fastrouter", s) for s in cfg.fastrouter]
        specs += [("subscription", s) for s in cfg.fastrouter_subscription_server]
        if cfg.fastrouter_stats is not None:
            specs.append(("fastrouter-stats", cfg.fastrouter_stats))
    if _has_http_router(cfg):
        specs += [("httprouter", s) for s in cfg.http]
        specs += [("https", s.split(",", 1)[0]) for s in cfg.https]
        specs += [("http-to-https", s.split(",", 1)[0]) for s in cfg.http_to_https]
        specs += [("http-subscription", s) for s in cfg.http_subscription_server]
        if cfg.http_stats is not None:
            specs.append(("http-stats", cfg.http_stats))
    return specs


def _internal_socket(cfg: Config) -> sockets.Listener:
    """The workers' uwsgi socket behind --http when none is configured (uWSGI binds
    127.0.0.1:0 too): a kernel-chosen port, a new one after each reload."""
    lst = sockets.Listener("127.0.0.1:0", "uwsgi", socket.AF_INET, ("127.0.0.1", 0))
    lst.bind(cfg.listen)
    lst.bound.set_inheritable(True)
    lst.name = sockaddr_text(lst.bound.getsockname())
    log(f"uwsgi socket 0 bound to TCP address {lst.name} (port auto-assigned) fd {lst.fd}")
    return lst


def _has_http_router(cfg: Config) -> bool:
    return bool(cfg.http or cfg.https or cfg.http_to_https)


def _app_configured(cfg: Config) -> bool:
    return bool(cfg.wsgi_file or cfg.module or cfg.psgi or cfg.mount or cfg.asgi)


def _http_worker_socket(cfg: Config) -> bool:
    """--http with an app, no uwsgi socket and no other backend: the workers get an
    internal uwsgi socket on 127.0.0.1 (kernel-chosen port) that the router uses."""
    return (
        _has_http_router(cfg)
        and _app_configured(cfg)
        and not (cfg.socket and cfg.protocol == "uwsgi")
        and not cfg.http_to
        and not cfg.http_subscription_server
    )


GAME_OVER = "*** no app loaded. GAME OVER ***"


def _load_app(cfg: Config) -> Callable | None:
    """Preload the WSGI app (or check the PSGI side); StartupError with the cause on failure
    (the caller adds GAME_OVER when it gives up)."""
    if cfg.psgi:
        from pymaster.workers.psgi import bridge as psgi

        try:
            psgi.preflight(cfg)
        except RuntimeError as exc:
            raise StartupError(str(exc), EXIT_FAILED_APP if cfg.need_app else 1) from None
        return None
    if cfg.asgi:
        from pymaster.workers.asgi import app as asgi_app

        start = time.time()
        try:
            asgi = asgi_app.load_app(cfg)
        except asgi_app.AppLoadError as exc:
            raise StartupError(str(exc), EXIT_FAILED_APP if cfg.need_app else 1) from None
        log(
            f"ASGI app 0 (mountpoint='') ready in {int(time.time() - start)} seconds "
            f"on interpreter pid: {os.getpid()} (default app)"
        )
        return asgi
    from pymaster.apps import wsgi

    start = time.time()
    try:
        app = wsgi.load_app(cfg)
    except wsgi.AppLoadError as exc:
        raise StartupError(str(exc), EXIT_FAILED_APP if cfg.need_app else 1) from None
    if not cfg.mount:  # with mounts, load_app logs each app in order
        log(
            f"WSGI app 0 (mountpoint='') ready in {int(time.time() - start)} seconds "
            f"on interpreter pid: {os.getpid()} (default app)"
        )
    return app


def _needs_master(cfg: Config, has_gateway: bool) -> bool:
    """-M, or options that need a master (which then turn it on and say so, unlike uWSGI)."""
    reasons = list(cfg.master_reasons)
    if has_gateway:
        reasons.append("fastrouter" if cfg.fastrouter else "http")
    if cfg.processes > 1:
        reasons.append("processes")
    if cfg.is_set("master"):
        return True
    if reasons:
        log(f"*** the master process is enabled because of: {', '.join(sorted(set(reasons)))} ***")
        return True
    return bool(cfg.master)


def _prepare(cfg: Config) -> bool:
    """Start-up up to binding, shared with the reload check: refusals, --env/--chdir, the
    sanity checks; True when the instance serves an app."""
    _check_unsupported(cfg)
    if not cfg.psgi and not cfg.asgi:
        from pymaster.apps import static

        try:
            static.announce(cfg)
        except static.StaticConfigError as exc:
            raise StartupError(str(exc)) from None
    try:
        daemons.configured(cfg)
        cron.configured(cfg)
        hooks.check(cfg)
    except (daemons.DaemonError, cron.CronError, hooks.HookError) as exc:
        raise StartupError(str(exc)) from None
    _check_routes(cfg)
    if _has_http_router(cfg):
        # imported now (ssl, httptools, uvloop): after --uid the interpreter's own
        # library may be unreadable
        from pymaster.routers import httprouter

        try:
            httprouter.check(cfg)
        except (httprouter.HttpConfigError, OSError) as exc:
            raise StartupError(str(exc)) from None
    if cfg.umask is not None:
        privileges.set_umask(cfg.umask)
    _apply_environment(cfg)
    specs = _socket_specs(cfg)
    app_configured = _app_configured(cfg)
    if cfg.asgi and (cfg.wsgi_file or cfg.module or cfg.psgi or cfg.mount):
        raise StartupError(
            "--asgi serves one ASGI app per instance: drop --wsgi-file/--module/--psgi/"
            "--mount, or run them in an instance of their own"
        )
    if cfg.psgi and cfg.mount:
        raise StartupError(
            "--mount loads WSGI apps; for PSGI apps mount them in app.psgi with "
            "Plack::Builder's `mount` (one --psgi app per instance)"
        )
    has_app = (
        bool(cfg.socket or cfg.http_socket or cfg.http11_socket)
        or _http_worker_socket(cfg)
        or (app_configured and sockets.inherits_sockets(os.environ))
    )
    if cfg.asgi:
        _check_asgi(cfg)
    if cfg.psgi and cfg.py_autoreload:
        log(
            "option --py-autoreload watches Python modules: PSGI workers are not watched "
            "(reload with SIGHUP or --touch-reload)"
        )
    if not cfg.fastrouter:
        for name in ("fastrouter-subscription-server", "fastrouter-to", "fastrouter-stats"):
            if cfg.is_set(name):
                log(f"option --{name} has no effect without --fastrouter")
    if not _has_http_router(cfg):
        for name in ("http-subscription-server", "http-to", "http-stats"):
            if cfg.is_set(name):
                log(f"option --{name} has no effect without --http")
    if not specs and not sockets.inherits_sockets(os.environ):
        raise StartupError(
            "The -s/--socket option is missing: give -s ADDR, --http-socket ADDR, "
            "--http ADDR or --fastrouter ADDR"
        )
    if has_app and not app_configured:
        raise StartupError(
            "no app configured: use --wsgi-file FILE, --module MOD[:CALLABLE], "
            "--asgi MOD:CALLABLE or --psgi FILE"
        )
    if has_app and cfg.processes == 0:
        raise StartupError(
            "processes = 0 leaves the app without a worker (uWSGI's no-workers mode): "
            "use processes >= 1, or no app for a router-only instance"
        )
    privileges.check_backlog(cfg.listen)
    privileges.check(cfg.uid, cfg.gid)  # refused before anything is bound or written
    return has_app


def _check_asgi(cfg: Config) -> None:
    """What ASGI workers do not do: statics refused (they are a WSGI layer), the options
    for threads and WSGI bodies logged as without effect."""
    from pymaster.apps import static

    if static.any_set(cfg):
        raise StartupError(
            "static file options are served by pymaster's WSGI layer: for an --asgi app "
            "serve them from the app (starlette.staticfiles.StaticFiles) or from nginx"
        )
    for name, why in (
        ("threads", "one event loop per worker; see --asgi-concurrency"),
        ("post-buffering", "the body is streamed to the app as it arrives"),
    ):
        if cfg.is_set(name):
            log(f"option --{name} has no effect on ASGI workers: {why}")


def check_reload(cfg: Config) -> int:
    """The reload check: what `run` would do up to the app import, nothing bound or written;
    0 if a re-exec would start, else 1 with the reason on stderr (the arbiter's pipe, where
    also goes whatever the app prints while it is imported; pymaster's own lines are dropped)."""
    logmod.quiet()
    try:
        try:
            logmaster.configure(cfg, activate=False)
        except logmaster.LogConfigError as exc:
            raise StartupError(f"pymaster: {exc}") from None
        has_app = _prepare(cfg)
        for _kind, spec in _socket_specs(cfg):
            sockets.parse_address(spec)
        if _needs_master(cfg, bool(cfg.fastrouter) or _has_http_router(cfg)):
            problem = Cheaper(cfg).validate()
            if problem:
                raise StartupError(problem)
        if has_app:
            _load_app(cfg)  # with --lazy-apps too: the workers would import it
    except (
        StartupError,
        sockets.SocketError,
        privileges.PrivilegeError,
        AddressError,
        SubscriptionError,
    ) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


def run(cfg: Config) -> int:
    reloaded = RELOADS_ENV in os.environ
    log(
        f"*** Starting pymaster {__version__} ({struct.calcsize('P') * 8}bit) on [{time.ctime()}] ***"
    )
    if EMPEROR_PID_ENV in os.environ and not reloaded:
        log(f"*** has_emperor mode detected (emperor pid: {os.environ[EMPEROR_PID_ENV]}) ***")
    for path in cfg.ini_files:
        log(f"[pymaster] getting INI configuration from {path}")
    _hooks(cfg, "asap")
    start_cwd = os.getcwd()
    if not cfg.honour_stdin and not reloaded:
        _stdin_to_devnull()
    log(f"detected max file descriptor number: {privileges.set_max_fd(cfg.max_fd)}")
    has_app = _prepare(cfg)
    if has_app and not cfg.psgi:
        log(f"WSGI request codec: {speedups.describe()}")
    master = _needs_master(cfg, bool(cfg.fastrouter) or _has_http_router(cfg))
    listeners = sockets.setup(
        _socket_specs(cfg), cfg.listen, cfg.chmod_socket, adopt_unmatched=not reloaded
    )
    if _http_worker_socket(cfg):
        listeners.insert(0, _internal_socket(cfg))
    if cfg.chown_socket and not reloaded:
        unix = [lst.name for lst in listeners if lst.family == socket.AF_UNIX and not lst.inherited]
        privileges.chown_sockets(cfg.chown_socket, [p for p in unix if not p.startswith("@")])
    owned = vacuum.Owned.at_start(listeners, vacuum.inherited_record() if reloaded else None)
    log(f"your server socket listen backlog is limited to {cfg.listen} connections")
    if cfg.pidfile and not reloaded:
        log(f"writing pidfile to {cfg.pidfile}")
        with open(cfg.pidfile, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    _hooks(cfg, "as root")
    privileges.drop(cfg.uid, cfg.gid)
    keep_with_emperor(os.environ)  # a change of ids cleared the death signal a vassal asked for
    _hooks(cfg, "as user")
    log(f"your mercy for graceful operations on workers is {cfg.worker_reload_mercy} seconds")
    app = None
    processes = cfg.processes if has_app else 0
    _hooks(cfg, "pre app")
    try:
        if has_app and not (cfg.lazy_apps or cfg.lazy):
            app = _load_app(cfg)
        elif has_app and cfg.psgi:
            _load_app(cfg)
    except StartupError as exc:
        if not (reloaded and master) or cfg.need_app:
            raise StartupError(f"{exc}\n{GAME_OVER}", exc.code) from None
        log(str(exc))
        log(
            "*** the reloaded app does not load: no worker is started, the sockets stay open "
            "and connections wait in the backlog; fix the app and reload (SIGHUP, touch, "
            "fifo r) ***"
        )
        processes = 0
    _hooks(cfg, "post app")
    scoreboard = Scoreboard(
        max(MIN_SLOTS, (cfg.processes if has_app else 0) * 2), worker_cores(cfg)
    )
    if not master:
        return _run_single(cfg, listeners, app, scoreboard)
    return _run_master(cfg, listeners, app, scoreboard, processes, start_cwd, reloaded, owned)


def worker_cores(cfg: Config) -> int:
    """Request threads per worker: --threads for Python workers (PSGI ones have one)."""
    return 1 if cfg.psgi or cfg.asgi else max(1, cfg.threads)


def operational_mode(cfg: Config, processes: int) -> str:
    """uWSGI's mode line (core/uwsgi.c:3034-3059)."""
    threaded = worker_cores(cfg) > 1
    if processes > 1:
        mode = "preforking+threaded" if threaded else "preforking"
    elif processes:
        mode = "threaded" if threaded else "single process"
    else:
        mode = "no-workers"
    if cfg.asgi and processes:
        mode += "+async"
    return f"*** Operational MODE: {mode} ***"


def _hooks(cfg: Config, phase: str) -> None:
    """Run the hooks of a start-up phase; a failing one stops the start (exit 1)."""
    try:
        if phase == "asap":
            hooks.check(cfg)
        hooks.run(cfg, phase)
    except hooks.HookError as exc:
        raise StartupError(str(exc)) from None


def _run_single(cfg: Config, listeners, app, scoreboard) -> int:
    """No master: this very process is worker 1 (as uWSGI without -M)."""
    log(operational_mode(cfg, 1))
    procname.set_title(cfg, "worker 1")
    app_listeners = [lst for lst in listeners if lst.kind in ("uwsgi", "http")]
    if cfg.psgi:
        from pymaster.workers.psgi import bridge as psgi

        psgi.exec_worker(cfg, 1, [(lst.fd, lst.kind) for lst in app_listeners], scoreboard.fd, None)
    if cfg.asgi:
        from pymaster.workers.asgi.worker import AsgiWorker

        AsgiWorker(1, cfg, app_listeners, app, scoreboard, None).run()
    Worker(1, cfg, app_listeners, app, scoreboard, None).run()  # unblocks once it handles them
    return 0


def _worker_target(cfg: Config, listeners, app, scoreboard, master_pid):
    app_listeners = [lst for lst in listeners if lst.kind in ("uwsgi", "http")]

    def target(child):
        for lst in listeners:
            if lst.kind not in ("uwsgi", "http"):
                lst.sock.close()
        procname.set_title(cfg, child.title)
        if cfg.psgi:
            from pymaster.workers.psgi import bridge as psgi

            psgi.exec_worker(
                cfg,
                child.number,
                [(lst.fd, lst.kind) for lst in app_listeners],
                scoreboard.fd,
                master_pid,
            )
        if cfg.py_autoreload:
            from pymaster.workers.wsgi import autoreload

            autoreload.start(cfg.py_autoreload, master_pid, child.number)
        if cfg.asgi:
            from pymaster.workers.asgi.worker import AsgiWorker

            AsgiWorker(child.number, cfg, app_listeners, app, scoreboard, master_pid).run()
        Worker(child.number, cfg, app_listeners, app, scoreboard, master_pid).run()

    return target


def _run_master(
    cfg: Config,
    listeners,
    app,
    scoreboard,
    processes: int,
    start_cwd: str,
    reloaded: bool,
    owned: vacuum.Owned,
) -> int:
    arbiter = Arbiter(cfg, listeners, scoreboard)
    arbiter.before_exec.append(owned.to_environ)
    problem = arbiter.cheaper.validate()
    if problem:
        raise StartupError(problem)
    arbiter.start_cwd = start_cwd
    procname.set_title(cfg, "master", master=True)
    arbiter.install_signals()
    if reloaded:
        log(f"gracefully (RE)spawned pymaster master process (pid: {os.getpid()})")
    else:
        log(f"spawned pymaster master process (pid: {os.getpid()})")
    log(operational_mode(cfg, processes))
    arbiter.worker_target = _worker_target(cfg, listeners, app, scoreboard, os.getpid())
    log_master = logmaster.active()
    if log_master is not None:
        log_master.attach(arbiter)
    for i in range(processes):
        child = arbiter.add("worker", arbiter.worker_target)
        if child is None:  # the scoreboard is sized for `processes`: cannot happen at start
            raise StartupError(f"no scoreboard slot for worker {i + 1}")
        child.cheaped = i >= arbiter.cheaper.initial
    from pymaster.master import gateways

    gateways.attach(arbiter, cfg, listeners)
    daemons.attach(arbiter, cfg)
    cron.attach(arbiter, cfg)
    hooks.attach(arbiter, cfg)
    _attach_control(arbiter, cfg)
    try:
        code = arbiter.run()
    finally:
        for closer in arbiter.closers:
            closer()
    if cfg.vacuum:
        if cfg.pidfile:
            vacuum.remove_pidfile(cfg.pidfile, os.getpid())
        owned.remove_sockets()
    return code


def _attach_control(arbiter: Arbiter, cfg: Config) -> None:
    """Master FIFO, stats server and touch files, as configured."""
    from pymaster.master import checks, control

    if cfg.master_fifo:
        fifo = control.MasterFifo(list(cfg.master_fifo), arbiter)
        arbiter.closers.append(fifo.close)
    if cfg.stats:
        stats = control.StatsServer(cfg.stats, arbiter)
        arbiter.closers.append(stats.close)
    for paths, action, what in (
        (cfg.touch_reload, arbiter.cmd_graceful_reload, "grace them all"),
        (cfg.touch_workers_reload, arbiter.cmd_reload_workers, "workers reload"),
        (cfg.touch_chain_reload, arbiter.cmd_chain_reload, "chain reload"),
    ):
        if paths:
            arbiter.on_tick.append(checks.TouchWatcher(list(paths), action, what))
    log_master = logmaster.active()
    if log_master is not None:
        for paths, action, what in (
            (cfg.touch_logrotate, log_master.rotate, "log rotation"),
            (cfg.touch_logreopen, log_master.reopen, "log reopen"),
        ):
            if paths:
                arbiter.on_tick.append(checks.TouchWatcher(list(paths), action, what))
