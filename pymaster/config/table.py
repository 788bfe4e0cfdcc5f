"""THE option table: every pymaster option with its uWSGI name, aliases, kind, default and help."""

from __future__ import annotations

from dataclasses import dataclass, replace

KINDS = ("str", "int", "bool", "list", "size")
PLUGINS = (
    "python",
    "python3",
    "python311",
    "python312",
    "python313",
    "psgi",
    "fastrouter",
    "http",
    "corerouter",
    "logfile",
    "cheaper_busyness",
)
DIRECTIVES = ("ini", "set", "set-placeholder")  # expanded while collecting, not applied


@dataclass(frozen=True)
class Option:
    """One option. `aliases` holds long aliases ('workers') and short flags ('-p')."""

    name: str
    aliases: tuple[str, ...]
    kind: str
    default: object
    help: str
    force_master: bool = False
    section: str = ""
    choices: tuple[str, ...] | None = None
    optional: bool = False  # the value may be left out on the command line
    bare: str = ""  # the value used when it is left out
    metavar: str = ""
    minimum: int = 0  # int/size: the smallest legal value (checked at parse time)
    maximum: int | None = None  # int/size: the largest legal value, if any
    zero: int | None = None  # int/size: 0 stands for this value, as it does in uWSGI
    worker: bool = False  # read by every kind of worker: handed to exec'd workers by name
    inert: str = ""  # accepted, no effect in pymaster: why (logged at start when set)
    refused: str = ""  # not in pymaster: what to use instead (an error at start when set)

    @property
    def env_name(self) -> str:
        """The variable that carries this option to a worker that execs (the Perl one)."""
        return "PYMASTER_OPT_" + self.attr.upper()

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def flags(self) -> list[str]:
        """Command-line spellings: '--name', then '--alias' / '-x' in table order."""
        return [self.flag] + [a if a.startswith("-") else f"--{a}" for a in self.aliases]

    @property
    def long_names(self) -> list[str]:
        """Names usable as INI keys and `UWSGI_*` variables: the name and long aliases."""
        return [self.name] + [a for a in self.aliases if not a.startswith("-")]


def opt(spec: str, kind: str, default: object = None, help: str = "", **extra) -> Option:
    """Build an Option from 'name/alias/-x'; list options default to an empty tuple."""
    name, *aliases = spec.split("/")
    if kind == "list":
        default = ()
    elif kind == "bool":
        default = False
    return Option(name, tuple(aliases), kind, default, help, **extra)


def _section(title: str, *options: Option, force_master: bool = False) -> list[Option]:
    return [replace(o, section=title, force_master=o.force_master or force_master) for o in options]


CONFIGURATION = _section(
    "Configuration",
    opt(
        "ini",
        "list",
        help="load options from an INI file, `FILE[:SECTION]`; `:SECTION` reuses "
        "the last file read",
        metavar="FILE[:SECTION]",
    ),
    opt("strict", "bool", help="unknown keys in INI files and UWSGI_* variables are errors"),
    opt("show-config", "bool", help="log the effective configuration as INI at startup"),
    opt("help/-h", "bool", help="print this help and exit"),
    opt("version", "bool", help="print the version and exit"),
    opt("set/-S", "list", help="set an option or placeholder, `KEY=VALUE`", metavar="KEY=VALUE"),
    opt(
        "set-placeholder/set-ph",
        "list",
        help="set a placeholder (not an option), `KEY=VALUE`",
        metavar="KEY=VALUE",
    ),
)

SOCKETS = _section(
    "Sockets",
    opt(
        "socket/-s/uwsgi-socket",
        "list",
        help="bind a uwsgi-protocol socket (`host:port`, `:port` or a UNIX path)",
        metavar="ADDR",
    ),
    opt("http-socket", "list", help="bind an HTTP socket served by the workers", metavar="ADDR"),
    opt("listen/-l", "int", 100, "listen queue (backlog) of the sockets", minimum=0),
    opt(
        "buffer-size/-b",
        "size",
        4096,
        "largest uwsgi request header accepted, in bytes (at most 65535)",
        minimum=1,
        worker=True,
    ),
    opt(
        "chmod-socket/-C",
        "str",
        help="permissions of UNIX sockets (666 when no value is given)",
        optional=True,
        bare="666",
        metavar="MODE",
    ),
    opt("socket-timeout/-z", "int", 4, "socket timeout in seconds", minimum=1, worker=True),
    opt("uid", "str", help="drop privileges to this user (name or id)"),
    opt("gid", "str", help="drop privileges to this group (name or id)"),
    opt(
        "http-keepalive",
        "int",
        5,
        "idle seconds an HTTP keep-alive connection is kept "
        "(pymaster default; 0 disables keep-alive)",
        worker=True,
    ),
    opt(
        "limit-post",
        "size",
        1 << 30,
        "largest request body accepted, in bytes; a bigger Content-Length is answered 413 "
        "before the app runs, a chunked body is cut off at the limit (0 = no limit, uWSGI's "
        "default). pymaster's default, 1 GiB, lets every ordinary upload through (photos, "
        "archives, video clips) while a client that announces gigabytes is refused at once "
        "instead of holding a worker or filling a disk with --post-buffering",
        worker=True,
    ),
    opt(
        "post-buffering",
        "size",
        0,
        "read the whole request body before calling the app, as uWSGI does: in memory when "
        "its length is below this many bytes, else in a temporary file (a slow upload then "
        "holds the worker); 0 = the app reads the body from the socket as it goes (Python worker)",
    ),
    opt(
        "header-timeout",
        "int",
        10,
        "seconds a connection has to send a complete request head, from its accept or from "
        "the first byte of its next request on a keep-alive connection; heads are read by "
        "the worker's event loop, so a slow or silent client never occupies a worker, and "
        "past this it is closed (408 when part of a head came; Python worker)",
        minimum=1,
    ),
    opt(
        "max-idle-connections",
        "int",
        0,
        "connections one worker holds while no request runs on them (keep-alive waits and "
        "heads still arriving); at the limit the oldest keep-alive ones are closed and new "
        "connections wait in the listen queue for another worker. 0 = from the open files "
        "limit (RLIMIT_NOFILE): that limit minus a quarter of it (at least 16) kept for the "
        "app (Python worker)",
    ),
    opt(
        "max-vars/-v",
        "int",
        64,
        "uWSGI's limit on the number of uwsgi vars",
        inert="vars are bounded by --buffer-size",
    ),
    opt(
        "thunder-lock",
        "bool",
        help="uWSGI serializes accept() between workers",
        inert="workers wait on the listeners with EPOLLEXCLUSIVE: one wakes per connection",
    ),
    opt(
        "protocol/socket-protocol",
        "str",
        "uwsgi",
        "protocol of the -s/--socket sockets: `uwsgi`, or `http`/`http11` (as --http-socket)",
        choices=("uwsgi", "http", "http11"),
    ),
    opt(
        "http11-socket",
        "list",
        help="bind an HTTP/1.1 socket served by the workers (the same as --http-socket, which "
        "keeps connections alive already)",
        metavar="ADDR",
    ),
    opt(
        "chown-socket",
        "str",
        help="owner of the UNIX sockets, `USER[:GROUP]` (names or ids), set right after bind",
        metavar="USER[:GROUP]",
    ),
    opt(
        "close-on-exec",
        "bool",
        help="uWSGI marks its connections close-on-exec",
        inert="Python's descriptors are close-on-exec already (PEP 446)",
    ),
    opt(
        "close-on-exec2",
        "bool",
        help="uWSGI marks its listeners close-on-exec",
        inert="the listeners are inherited only by the processes pymaster starts on purpose",
    ),
)

APPLICATIONS = _section(
    "Applications",
    opt("wsgi-file/file", "str", help="load a WSGI app from a Python file", metavar="FILE"),
    opt(
        "module/-w/wsgi",
        "str",
        help="load a WSGI app from a module, `MODULE[:CALLABLE]`",
        metavar="MODULE",
    ),
    opt("callable", "str", "application", "name of the WSGI callable"),
    opt("pythonpath/python-path/pp", "list", help="add a directory to sys.path", metavar="DIR"),
    opt("home/virtualenv/venv/pyhome/-H", "str", help="Python virtualenv to use", metavar="DIR"),
    opt("psgi", "str", help="load a PSGI app from a .psgi file (Perl workers)", metavar="FILE"),
    opt("perl-local-lib", "str", help="local::lib directory for the PSGI workers", metavar="DIR"),
    opt("plackup-opt", "list", help="extra option handed to the PSGI loader"),
    opt("chdir", "str", help="change to this directory before loading the app", metavar="DIR"),
    opt("env", "list", help="set an environment variable, `NAME=VALUE`", metavar="NAME=VALUE"),
    opt(
        "plugins/plugin",
        "list",
        help="plugins to load (comma-separated allowed); built in, names are checked; a path "
        "to a uWSGI C plugin (`/x/y_plugin.so`) is skipped with uWSGI's `UNABLE to load` line",
        metavar="NAMES",
    ),
    opt(
        "plugin-dir",
        "str",
        help="uWSGI's plugin directory",
        metavar="DIR",
        inert="plugins are built in",
    ),
    opt("lazy-apps", "bool", help="load the app in each worker after fork"),
    opt("lazy", "bool", help="like lazy-apps, and SIGHUP reloads only the workers"),
    opt("need-app", "bool", help="exit with code 22 when no app could be loaded"),
    opt(
        "enable-threads/-T",
        "bool",
        help="uWSGI enables the GIL for app threads",
        inert="Python threads always work in pymaster",
    ),
    opt(
        "threads",
        "int",
        1,
        "request threads per Python worker: the worker's event loop hands each complete "
        "request to one of N threads (cores), so a slow request holds back no other; "
        "`wsgi.multithread` is true when N > 1; harakiri watches each core's request, "
        "max-requests counts the worker's requests (all cores)",
        zero=1,
        worker=True,
        minimum=0,
        maximum=512,
    ),
    opt(
        "thread-stacksize/threads-stacksize/thread-stack-size/threads-stack-size",
        "int",
        0,
        "stack size of the request threads in KiB (threading.stack_size); 0: the default",
        worker=True,
        metavar="KIB",
    ),
    opt(
        "py-call-osafterfork",
        "bool",
        help="uWSGI calls PyOS_AfterFork_Child() in each forked worker",
        inert="workers are forked with os.fork(), which always runs the after-fork hooks",
    ),
    opt(
        "single-interpreter/-i",
        "bool",
        help="uWSGI uses one Python interpreter",
        inert="there is one interpreter per process",
    ),
    opt(
        "mount",
        "list",
        help="load another app under a mountpoint, `MOUNTPOINT=APP` (APP: a .py/.wsgi file or "
        "`module[:callable]`); the request's SCRIPT_NAME (or UWSGI_APPID) picks the app",
        metavar="MOUNTPOINT=APP",
    ),
    opt(
        "manage-script-name",
        "bool",
        help="set SCRIPT_NAME from the longest mountpoint that prefixes PATH_INFO (cut from it)",
    ),
    opt(
        "no-default-app",
        "bool",
        help="a request no mountpoint matches gets a 500 instead of the first app",
    ),
    opt(
        "py-autoreload/python-autoreload",
        "int",
        0,
        "check the loaded modules' files every N seconds and gracefully reload the whole "
        "instance when one changed (development only; 0 = off)",
        force_master=True,
    ),
    opt(
        "spooler",
        "list",
        help="uWSGI's spooler directory (tasks queued through the `uwsgi` Python module)",
        metavar="DIR",
        inert="pymaster has no `uwsgi` Python module, so `uwsgi.spool` is absent: an app must "
        "fall back when `import uwsgi` fails (isso does) or use a task queue (Celery, RQ)",
    ),
    opt(
        "cache2",
        "list",
        help="uWSGI's shared cache (used through the `uwsgi` Python module)",
        metavar="SPEC",
        inert="pymaster has no `uwsgi` Python module, so `uwsgi.cache_*` is absent: an app must "
        "fall back when `import uwsgi` fails (isso does) or use Redis/memcached",
    ),
    opt(
        "wsgi-env-behaviour/wsgi-env-behavior",
        "str",
        help="uWSGI's environ reuse between requests (`cheat` or `holy`)",
        inert="every request gets a fresh environ dict (uWSGI's `holy`)",
    ),
    opt(
        "umask",
        "str",
        help="set the process umask (octal, e.g. 022) before anything is created",
        metavar="MODE",
    ),
    opt(
        "honour-stdin",
        "bool",
        help="keep stdin as inherited (by default it is reopened on /dev/null, as uWSGI does)",
    ),
)

RESPONSES = _section(
    "Responses",
    opt(
        "wsgi-disable-file-wrapper",
        "bool",
        help="no `wsgi.file_wrapper` in the WSGI environ (apps then send files by iterating)",
    ),
    opt(
        "route",
        "list",
        help="uWSGI's internal routing rule on PATH_INFO, `REGEX ACTION`; pymaster has the "
        "action `donotlog:` (no request log line for a matching request, e.g. "
        "`route = ^/healthz$ donotlog:`); any other action stops the start with an error "
        "naming it (routing belongs in nginx)",
        metavar="RULE",
        worker=True,
    ),
    opt(
        "route-uri",
        "list",
        help="as --route, on REQUEST_URI",
        metavar="RULE",
        worker=True,
    ),
    opt(
        "route-host",
        "list",
        help="as --route, on HTTP_HOST",
        metavar="RULE",
        worker=True,
    ),
    opt(
        "add-header",
        "list",
        help="add a header to every response, `Name: value` (repeatable; after the app's own)",
        metavar="HEADER",
        worker=True,
    ),
    opt(
        "ignore-sigpipe",
        "bool",
        help="do not log uWSGI's `SIGPIPE: writing to a closed pipe/socket/fd (probably the "
        "client disconnected) on request URI (ip ADDR) !!!` when a client is gone mid-response",
        worker=True,
    ),
    opt(
        "ignore-write-errors",
        "bool",
        help="do not log `uwsgi_response_write_body_do(): ERROR during METHOD URI (ADDR)` when "
        "a write to the client fails",
        worker=True,
    ),
    opt(
        "disable-write-exception",
        "bool",
        help="on a write error, raise no `OSError: write error` into the app's write() and log "
        "none when the body iteration ends (the app just runs on; its output is lost)",
        worker=True,
    ),
    opt(
        "write-errors-exception-only",
        "bool",
        help="on a write error, log nothing but raise `OSError: write error` (PSGI: die) into "
        "the app at once, whatever the tolerance (implies the two ignore options)",
        worker=True,
    ),
    opt(
        "write-errors-tolerance",
        "int",
        0,
        help="write errors a response may have before it is given up (the bytes of a tolerated "
        "failed write are lost; 0: the first one ends it)",
        worker=True,
    ),
)

MASTER = _section(
    "Master and workers",
    opt("master/-M", "bool", help="run a master process that supervises the workers"),
    opt("processes/-p/workers", "int", 1, "number of worker processes"),
    opt("pidfile", "str", help="write the master pid to this file", metavar="FILE"),
    opt("vacuum", "bool", help="remove the pidfile and UNIX sockets at exit"),
    opt("die-on-term", "bool", help="SIGTERM shuts down (pymaster does this anyway)"),
    opt(
        "no-reload-check",
        "bool",
        help="reload without first checking, in a child process, that the new configuration "
        "and app load (a broken app then leaves the master with its sockets and no workers)",
    ),
    opt(
        "daemonize/-d",
        "str",
        help="detach from the terminal and log to LOGFILE (under systemd, don't)",
        metavar="LOGFILE",
    ),
    opt(
        "harakiri/-t",
        "int",
        0,
        "kill a worker whose request runs longer than N seconds",
        worker=True,
    ),
    opt("max-requests/-R", "int", 0, "recycle a worker after N requests", worker=True),
    opt("max-requests-delta", "int", 0, "add worker id * N to max-requests", worker=True),
    opt(
        "min-worker-lifetime",
        "int",
        10,
        "seconds a worker must live before it may be recycled",
        worker=True,
    ),
    opt("max-worker-lifetime", "int", 0, "recycle a worker after N seconds"),
    opt("max-worker-lifetime-delta", "int", 0, "add worker id * N to max-worker-lifetime"),
    opt("worker-reload-mercy", "int", 60, "seconds a worker gets to finish before it is killed"),
    opt(
        "reload-mercy",
        "int",
        3,
        "seconds an attached daemon gets to stop (stop signal every second, then SIGKILL) on "
        "reload and shutdown; workers get --worker-reload-mercy (0: 3, as uWSGI)",
        zero=3,
    ),
    opt(
        "no-orphans",
        "bool",
        help="uWSGI kills the workers when the master dies",
        inert="pymaster's workers and gateways always die with the master",
    ),
    opt(
        "harakiri-verbose",
        "bool",
        help="uWSGI logs more on harakiri",
        inert="the harakiri log lines already name the request and its duration",
    ),
    opt(
        "max-fd",
        "int",
        help="set the soft and hard limit of open files (RLIMIT_NOFILE) at start; raising the "
        "hard limit needs root",
    ),
    opt(
        "ksm",
        "str",
        help="uWSGI's Kernel Samepage Merging scan",
        optional=True,
        inert="pages are shared by forking after the app is loaded",
    ),
    opt("reload-on-rss", "int", 0, "gracefully recycle a worker above N MB of RSS", worker=True),
    opt(
        "reload-on-as",
        "int",
        0,
        "gracefully recycle a worker above N MB of address space (checked after each request, "
        "as reload-on-rss)",
        worker=True,
    ),
    opt("evil-reload-on-rss", "int", 0, "kill a worker above N MB of RSS", force_master=True),
    opt("forkbomb-delay", "int", 2, "seconds to wait when workers die too fast"),
    opt("check-interval", "int", 1, "seconds between master checks", zero=1),
    opt(
        "master-fifo",
        "list",
        help="master FIFO for one-byte commands (repeatable: slots 0-9)",
        force_master=True,
        metavar="PATH",
    ),
    opt(
        "touch-reload",
        "list",
        help="gracefully reload when this file is touched",
        force_master=True,
        metavar="FILE",
    ),
    opt(
        "touch-workers-reload",
        "list",
        help="reload the workers when this file is touched",
        force_master=True,
        metavar="FILE",
    ),
    opt(
        "touch-chain-reload",
        "list",
        help="chain-reload the workers when this file is touched",
        force_master=True,
        metavar="FILE",
    ),
    opt(
        "reload",
        "str",
        help="send SIGHUP to the master in this pidfile and exit",
        metavar="PIDFILE",
    ),
    opt(
        "stop", "str", help="send SIGINT to the master in this pidfile and exit", metavar="PIDFILE"
    ),
)

CHEAPER = _section(
    "Cheaper (adaptive workers)",
    opt(
        "cheaper", "int", 0, "keep at least N workers and spawn more under load", force_master=True
    ),
    opt("cheaper-initial", "int", help="workers started at first (default: cheaper)"),
    opt("cheaper-step", "int", 1, "workers spawned at a time", zero=1),
    opt(
        "cheaper-overload",
        "int",
        3,
        "cycles of overload before spawning (busyness: seconds between samples)",
        minimum=0,
    ),
    opt(
        "cheaper-algo",
        "str",
        "spare",
        "cheaper algorithm",
        choices=("spare", "busyness", "backlog", "manual"),
    ),
    opt(
        "cheaper-busyness-max",
        "int",
        50,
        "busyness percentage above which workers are spawned",
        zero=50,
        maximum=100,
    ),
    opt(
        "cheaper-busyness-min",
        "int",
        25,
        "busyness percentage below which workers are cheaped",
        zero=25,
        maximum=100,
    ),
    opt(
        "cheaper-busyness-multiplier",
        "int",
        10,
        "initial multiplier: a worker must be idle for cheaper-overload * multiplier "
        "seconds to be cheaped",
        zero=10,
    ),
    opt(
        "cheaper-busyness-penalty",
        "int",
        2,
        "added to the multiplier when workers are cheaped and respawned too fast",
        zero=2,
    ),
    opt("cheaper-busyness-verbose", "bool", help="log every busyness sample and decision"),
    opt(
        "cheaper-busyness-backlog-alert",
        "int",
        33,
        "spawn emergency workers when more requests than this wait in the listen queue",
        zero=33,
    ),
    opt(
        "cheaper-busyness-backlog-multiplier",
        "int",
        3,
        "cheaper multiplier used while emergency workers run",
        zero=3,
    ),
    opt(
        "cheaper-busyness-backlog-step",
        "int",
        1,
        "emergency workers spawned at a time",
        zero=1,
    ),
    opt(
        "cheaper-busyness-backlog-nonzero",
        "int",
        60,
        "spawn emergency workers when the listen queue is non-empty for this many seconds",
        zero=60,
    ),
)

LOGGING = _section(
    "Logging",
    opt("disable-logging/-L", "bool", help="do not log requests", worker=True),
    opt("logto", "str", help="log to this file instead of stderr", metavar="FILE"),
    opt("log-micros", "bool", help="request times in microseconds", worker=True),
    opt("memory-report/-m", "bool", help="add memory usage to request logs", worker=True),
    opt(
        "log-x-forwarded-for", "bool", help="log X-Forwarded-For as the remote address", worker=True
    ),
    opt("log-4xx", "bool", help="log 4xx responses even when logging is disabled", worker=True),
    opt("log-5xx", "bool", help="log 5xx responses even when logging is disabled", worker=True),
    opt(
        "log-slow",
        "int",
        0,
        "log requests slower than N ms even when logging is disabled",
        worker=True,
    ),
    opt(
        "logformat/log-format",
        "str",
        help="request log format with `%(var)` fields",
        metavar="FORMAT",
        worker=True,
    ),
    opt(
        "log-format-strftime/logformat-strftime",
        "bool",
        help="the `%(ftime)` field of --logformat is the request's start through the "
        "--log-date FORMAT (without one, or without this option, it is `%(ltime)`)",
        worker=True,
    ),
    opt(
        "log-date/logdate/log-prefix",
        "str",
        help="prefix the server's own log lines (not request lines, not what apps write) with "
        "the date, `Thu Nov 26 19:27:40 2026 - `; a value other than true/1/on/yes is a "
        "strftime format used instead (also for the dated master events); false/0/off/no "
        "turn it off",
        optional=True,
        bare="true",
        metavar="FORMAT",
        worker=True,
    ),
    opt(
        "log-truncate",
        "bool",
        help="truncate the --logto/--daemonize file when it is opened (start, --log-reopen)",
    ),
    opt(
        "log-reopen",
        "bool",
        help="on a reload (SIGHUP, fifo r) open the --logto/--daemonize file again by name, "
        "so a file moved away by logrotate is replaced; without it the reloaded master and "
        "its workers keep writing to the file they had",
    ),
    opt(
        "log-master",
        "bool",
        help="the master writes the log: every process's output reaches it through a pipe of "
        "its own and is written in whole lines, never interleaved; implied by every logger, "
        "route, encoder, drain/filter and rotation option, as in uWSGI",
        force_master=True,
    ),
    opt(
        "logger",
        "list",
        help="send log lines to a logger, `[NAME] PLUGIN[:ARGS]`: `file:PATH` (or "
        "`file:logfile=PATH,maxsize=BYTES,backupname=PATH`), `fd:N`, `stdio` (the instance "
        "log) or `syslog[:IDENT[,FACILITY]]`; a NAMEd logger only gets lines a --log-route "
        "sends it, unnamed ones get the rest (with none, the instance log does)",
        metavar="[NAME] PLUGIN[:ARGS]",
        force_master=True,
    ),
    opt(
        "req-logger/logger-req",
        "list",
        help="send request log lines (of both worker kinds) to this logger instead of the "
        "log, same syntax as --logger; only request lines reach it",
        metavar="[NAME] PLUGIN[:ARGS]",
        force_master=True,
    ),
    opt(
        "log-syslog",
        "str",
        help="same as `--logger syslog[:IDENT[,FACILITY]]`",
        optional=True,
        metavar="IDENT[,FACILITY]",
        force_master=True,
    ),
    opt(
        "log-route",
        "list",
        help="send the log lines REGEX matches (Python regex, searched anywhere in the line) to "
        "the logger named NAME, and to no unnamed logger; several routes may take a line",
        metavar="NAME REGEX",
        force_master=True,
    ),
    opt(
        "log-req-route",
        "list",
        help="--log-route for request lines (NAME is a request logger, else a logger); "
        "turns on the separate request log like --req-logger",
        metavar="NAME REGEX",
        force_master=True,
    ),
    opt(
        "log-encoder",
        "list",
        help="add an encoder to the chain every log line goes through before its logger, "
        "`ENCODER[:NAME] [ARGS]`: `nl` (append a newline), `prefix TEXT`, `suffix TEXT`, "
        "`format TEMPLATE`, `json TEMPLATE` (the line JSON-escaped); templates know "
        "`${msg}` (the line without its newline), `${msgnl}`, `${unix}`, `${millis}`, "
        "`${micros}`, `${strftime:FORMAT}`; with `:NAME` only for the logger NAME",
        metavar="ENCODER[:NAME] [ARGS]",
        force_master=True,
    ),
    opt(
        "log-req-encoder",
        "list",
        help="--log-encoder for request lines (with --req-logger or --log-req-route)",
        metavar="ENCODER[:NAME] [ARGS]",
        force_master=True,
    ),
    opt(
        "log-drain",
        "list",
        help="drop the log lines (not request lines) this regex matches",
        metavar="REGEX",
        force_master=True,
    ),
    opt(
        "log-filter",
        "list",
        help="write only the log lines (not request lines) one of these regexes matches",
        metavar="REGEX",
        force_master=True,
    ),
    opt(
        "log-maxsize",
        "size",
        0,
        "rotate the --logto/--daemonize file once a write takes it past this many bytes "
        "(k/M/G suffixes accepted; uWSGI reads only the digits): the master renames it to "
        "--log-backupname and starts a new one, no line lost or split",
        metavar="BYTES",
        force_master=True,
    ),
    opt(
        "log-backupname",
        "str",
        help="the name the rotated log file gets (replaced at each rotation); without it "
        "`FILE.<unix time>`",
        metavar="FILE",
    ),
    opt(
        "touch-logrotate",
        "list",
        help="rotate the --logto/--daemonize file when this file is touched",
        metavar="FILE",
        force_master=True,
    ),
    opt(
        "touch-logreopen",
        "list",
        help="reopen the --logto/--daemonize file by name when this file is touched",
        metavar="FILE",
        force_master=True,
    ),
    opt(
        "log-master-bufsize",
        "int",
        8192,
        "uWSGI's buffer for log messages read by the master (longer ones are truncated)",
        inert="the master reassembles whole lines from each process's pipe: nothing is "
        "truncated below 256 KiB",
    ),
    opt(
        "log-master-stream",
        "bool",
        help="uWSGI's stream (not datagram) log pipe",
        inert="each process has a pipe of its own: lines are whole either way",
    ),
    opt(
        "log-master-req-stream",
        "bool",
        help="uWSGI's stream (not datagram) request log pipe",
        inert="request lines are one message each either way",
    ),
    opt(
        "threaded-logger",
        "bool",
        help="uWSGI's log writing in a thread of the master",
        inert="the master's loop reads and writes the log; what is written is the same",
        force_master=True,
    ),
    opt(
        "log-socket",
        "str",
        help="uWSGI's log to a UDP/UNIX socket",
        metavar="ADDR",
        refused="use `logger = syslog[:IDENT]` (the local syslog daemon forwards), "
        "`logger = file:PATH` or `logger = fd:N`",
    ),
    opt(
        "logto2",
        "str",
        help="uWSGI's log file opened after dropping privileges",
        metavar="FILE",
        refused="use --logto FILE (opened before dropping privileges; make it writable by "
        "--uid if --log-reopen or rotation must open it again)",
    ),
    opt(
        "worker-logger",
        "list",
        help="uWSGI's logger of a master-less single worker",
        refused="use --logger (pymaster turns the master on for it)",
    ),
    opt(
        "worker-logger-req",
        "list",
        help="uWSGI's request logger of a master-less single worker",
        refused="use --req-logger (pymaster turns the master on for it)",
    ),
    opt(
        "log-alarm/alarm-log",
        "list",
        help="uWSGI's alarm raised by matching log lines",
        refused="route the lines to a logger (`--log-route NAME REGEX`, "
        "`--logger NAME file:PATH`) and alert from that file or from syslog",
    ),
)

PROCNAMES = _section(
    "Process names",
    opt("auto-procname", "bool", help="name processes `pymaster master`, `pymaster worker N`"),
    opt("procname-prefix", "str", help="prefix every process name"),
    opt("procname-prefix-spaced", "str", help="prefix every process name, followed by a space"),
    opt("procname-append", "str", help="append to every process name"),
    opt("procname", "str", help="name every process this"),
    opt("procname-master", "str", help="name the master this"),
)

STATS = _section(
    "Stats",
    opt(
        "stats",
        "str",
        help="serve the stats JSON on this address",
        force_master=True,
        metavar="ADDR",
    ),
    opt(
        "stats-http",
        "bool",
        help="serve the stats over HTTP: the JSON, and Prometheus metrics on `GET /metrics` "
        "(text format, or OpenMetrics when asked in Accept)",
    ),
    opt("stats-minified", "bool", help="stats JSON without whitespace"),
)

SUBSCRIPTIONS = _section(
    "Subscriptions",
    opt(
        "subscribe-to/st/subscribe",
        "list",
        help="subscribe to a router, `SERVER:KEY[,MODIFIER1[,SIGN]]` (`SERVER:KEY:MODIFIER1` too)",
        metavar="SPEC",
    ),
    opt(
        "subscribe2",
        "list",
        help="subscribe with `server=..,key=..[,addr=..,weight=..,modifier1=..]`",
        metavar="SPEC",
    ),
    opt("subscribe-freq", "int", 10, "seconds between subscription heartbeats", minimum=1),
    opt("subscription-tolerance", "int", 17, "seconds a router keeps a silent node"),
    opt("weight", "int", 0, "weight announced in subscriptions"),
    opt("auto-weight", "bool", help="announce processes * cores as weight", optional=True),
    opt("subscribe-with-modifier1", "int", help="force modifier1 in subscriptions", maximum=255),
    opt("unsubscribe-on-graceful-reload", "bool", help="unsubscribe on graceful reloads too"),
    opt("start-unsubscribed", "bool", help="do not subscribe until the master FIFO says `S`"),
    opt(
        "subscription-notify-socket",
        "str",
        help="ask routers to acknowledge to this socket",
        metavar="PATH",
    ),
    opt("subscriptions-sign-secret", "str", help="secret used to sign subscriptions"),
    opt(
        "subscription-allow",
        "list",
        help="only accept subscription datagrams from this source (CIDR or address; repeatable)",
        metavar="CIDR",
    ),
    force_master=True,
)

FASTROUTER = _section(
    "Fastrouter",
    opt(
        "fastrouter",
        "list",
        help="run a fastrouter on this address",
        force_master=True,
        metavar="ADDR",
    ),
    opt(
        "fastrouter-subscription-server",
        "list",
        help="subscription server (UDP) of the fastrouter",
        metavar="ADDR",
    ),
    opt("fastrouter-to", "list", help="static backend node (round robin)", metavar="ADDR"),
    opt("fastrouter-timeout", "int", 60, "seconds before a client or backend is dropped", zero=60),
    opt(
        "fastrouter-connect-timeout",
        "int",
        3,
        "seconds a connect to a node may take before it is marked failed and the next node "
        "is tried (pymaster; 0: --fastrouter-timeout, as uWSGI)",
    ),
    opt(
        "fastrouter-processes/fastrouter-workers",
        "int",
        1,
        "number of fastrouter processes",
        zero=1,
    ),
    opt(
        "fastrouter-stats/fastrouter-stats-server/fastrouter-ss",
        "str",
        help="serve the fastrouter stats JSON on this address",
        metavar="ADDR",
    ),
    opt(
        "fastrouter-events",
        "int",
        64,
        "uWSGI's fastrouter event queue size",
        inert="the router's event loop has no fixed queue",
    ),
)

HTTP_ROUTER = _section(
    "HTTP router",
    opt(
        "http/httprouter",
        "list",
        help="run an HTTP router on this address (a gateway child of the master); with an "
        "app and no --socket, its workers get an internal uwsgi socket the router uses",
        force_master=True,
        metavar="ADDR",
    ),
    opt(
        "https",
        "list",
        help="run an HTTPS router (Python ssl) on ADDR with this certificate and key",
        force_master=True,
        metavar="ADDR,CERT,KEY[,CIPHERS]",
    ),
    opt(
        "http-to-https",
        "list",
        help="answer every request on ADDR with a 301 to https://HOST[:PORT]URI",
        force_master=True,
        metavar="ADDR[,PORT]",
    ),
    opt(
        "http-processes/http-workers",
        "int",
        1,
        "number of HTTP router processes",
        zero=1,
    ),
    opt(
        "http-to",
        "list",
        help="static backend node of the HTTP router (round robin)",
        metavar="ADDR",
    ),
    opt(
        "http-subscription-server",
        "list",
        help="subscription server (UDP) of the HTTP router: backends are picked by Host",
        metavar="ADDR",
    ),
    opt(
        "http-stats/http-stats-server/http-ss",
        "str",
        help="serve the HTTP router stats JSON on this address",
        metavar="ADDR",
    ),
    opt(
        "http-timeout",
        "int",
        60,
        "seconds without traffic before a client or backend is dropped (504 while the "
        "backend has not answered)",
        zero=60,
    ),
    opt(
        "http-headers-timeout",
        "int",
        0,
        "seconds a client has to send a request head (408 after part of one; 0: --http-timeout)",
    ),
    opt(
        "http-connect-timeout",
        "int",
        0,
        "seconds a backend connect may take before the next node is tried (0: --http-timeout)",
    ),
    opt(
        "http-auto-chunked",
        "bool",
        help="with keep-alive, chunk responses that have neither Content-Length nor "
        "Transfer-Encoding (else they close the connection)",
    ),
    opt(
        "http-websockets",
        "bool",
        help="tunnel WebSocket upgrades raw once the backend answers 101",
    ),
    opt(
        "http-manage-expect",
        "int",
        0,
        "answer `Expect: 100-continue` in the router; N > 1: refuse bodies over N bytes with 413",
        optional=True,
        bare="1",
    ),
    opt(
        "http-chunked-limit",
        "size",
        1 << 30,
        "pymaster: the largest chunked request body the router de-chunks (into a temp file, "
        "to send CONTENT_LENGTH); bigger bodies get 413",
    ),
    opt(
        "http-max-headers",
        "int",
        100,
        "pymaster: request header lines the router accepts (more: 431)",
        minimum=1,
    ),
    opt(
        "http-max-head",
        "size",
        65536,
        "pymaster: bytes a request head may take (more: 431); uWSGI's fixed router limit",
        minimum=1,
    ),
    opt("http-modifier1", "int", 0, "uwsgi modifier1 of the packets sent to backends"),
    opt("http-modifier2", "int", 0, "uwsgi modifier2 of the packets sent to backends"),
    opt(
        "http-var",
        "list",
        help="extra uwsgi var sent with every request",
        metavar="KEY=VALUE",
    ),
    opt(
        "http-server-name-as-http-host",
        "str",
        help="SERVER_NAME is the Host header (with its port), sent where the header is, "
        "instead of the machine hostname; takes a value as in uWSGI (`=1`)",
        metavar="1",
    ),
    opt(
        "http-raw-body",
        "bool",
        help="uWSGI's raw request body forwarding",
        refused="the router de-chunks chunked bodies and sends CONTENT_LENGTH; use "
        "--http-websockets for upgrades",
    ),
    opt(
        "http-chunked-input",
        "bool",
        help="uWSGI's raw chunked input forwarding",
        inert="chunked request bodies are always de-chunked (see --http-chunked-limit)",
    ),
    opt(
        "http-buffer-size",
        "size",
        4096,
        "uWSGI's router read buffer",
        inert="the router reads 64 KiB at a time; see --http-max-head",
    ),
    opt(
        "http-events",
        "int",
        64,
        "uWSGI's HTTP router event queue size",
        inert="the router's event loop has no fixed queue",
    ),
    opt(
        "http-gracetime",
        "int",
        30,
        "uWSGI's retry delay of a failed static node",
        inert="a failed --http-to node is skipped for 30 s",
    ),
    opt(
        "http-enable-proxy-protocol",
        "bool",
        help="uWSGI's PROXY protocol v1 on the router",
        refused="put the proxy that speaks PROXY protocol in front of nginx, or drop it",
    ),
)

_EXPIRES = (
    "`Expires` = {base} + SECONDS for a {what} matching REGEX (space-separated; first match wins)"
)

STATIC = _section(
    "Static files (Python workers)",
    opt(
        "static-map",
        "list",
        help="serve PATH_INFO starting with MOUNT (a plain prefix) from DIR + the rest; DIR may "
        "be a file. GET/HEAD only; anything not servable goes to the app",
        metavar="MOUNT=DIR",
    ),
    opt(
        "static-map2",
        "list",
        help="like --static-map, but the whole PATH_INFO is appended to DIR",
        metavar="MOUNT=DIR",
    ),
    opt(
        "check-static/static-check",
        "list",
        help="serve DIR + PATH_INFO when it is a file (tried before --static-map)",
        metavar="DIR",
    ),
    opt(
        "check-static-docroot",
        "bool",
        help="serve the request's DOCUMENT_ROOT + PATH_INFO when it is a file (tried last)",
    ),
    opt(
        "static-index",
        "list",
        help="for a directory, the first of these names that is a file is served",
        metavar="NAME",
    ),
    opt(
        "static-skip-ext",
        "list",
        help="PATH_INFO or resolved file ending with EXT goes to the app",
        metavar="EXT",
    ),
    opt(
        "static-safe",
        "list",
        help="resolved paths under PREFIX are served even outside the mapping's directory",
        metavar="PREFIX",
    ),
    opt(
        "static-expires-type",
        "list",
        help="`Expires` = now + SECONDS for files of exactly this MIME type",
        metavar="MIME=SECONDS",
    ),
    opt(
        "static-expires-type-mtime",
        "list",
        help="`Expires` = mtime + SECONDS for files of exactly this MIME type",
        metavar="MIME=SECONDS",
    ),
    opt(
        "static-expires",
        "list",
        help=_EXPIRES.format(base="now", what="resolved filename"),
        metavar="'REGEX SECONDS'",
    ),
    opt(
        "static-expires-mtime",
        "list",
        help=_EXPIRES.format(base="mtime", what="resolved filename"),
        metavar="'REGEX SECONDS'",
    ),
    opt(
        "static-expires-uri",
        "list",
        help=_EXPIRES.format(base="now", what="REQUEST_URI"),
        metavar="'REGEX SECONDS'",
    ),
    opt(
        "static-expires-uri-mtime",
        "list",
        help=_EXPIRES.format(base="mtime", what="REQUEST_URI"),
        metavar="'REGEX SECONDS'",
    ),
    opt(
        "static-expires-path-info",
        "list",
        help=_EXPIRES.format(base="now", what="PATH_INFO"),
        metavar="'REGEX SECONDS'",
    ),
    opt(
        "static-expires-path-info-mtime",
        "list",
        help=_EXPIRES.format(base="mtime", what="PATH_INFO"),
        metavar="'REGEX SECONDS'",
    ),
    opt(
        "static-gzip",
        "list",
        help="for files matching REGEX serve FILE.br / FILE.gz when Accept-Encoding has "
        "br / gzip (Content-Encoding set, Content-Type of the original)",
        metavar="REGEX",
    ),
    opt("static-gzip-all", "bool", help="--static-gzip for every static file"),
    opt(
        "static-gzip-dir/static-gzip-prefix",
        "list",
        help="--static-gzip for files whose path starts with PREFIX",
        metavar="PREFIX",
    ),
    opt(
        "static-gzip-ext/static-gzip-suffix",
        "list",
        help="--static-gzip for files whose path ends with SUFFIX",
        metavar="SUFFIX",
    ),
    opt(
        "honour-range",
        "bool",
        help="answer Range on static files (first range only, 206/416); off: Range is ignored",
    ),
    opt(
        "mimefile/mime-file",
        "list",
        help="MIME table file(s) in mime.types format; /etc/mime.types only when none is given",
        metavar="FILE",
    ),
    opt(
        "file-serve-mode",
        "str",
        help="`x-sendfile` or `x-accel-redirect` (`nginx`): answer statics with that header "
        "holding the path and no body; other values are ignored",
        metavar="MODE",
    ),
    opt(
        "offload-threads",
        "int",
        0,
        "offload threads per worker: file bodies (static files, `wsgi.file_wrapper` over a "
        "regular file) are sent by them, the request thread is free at once; the connection "
        "closes after such a response; 0: the request thread sends them with sendfile()",
        worker=True,
        maximum=64,
    ),
    opt(
        "static-cache-paths",
        "int",
        0,
        "uWSGI's cache of resolved static paths",
        inert="static paths are resolved with realpath() on each request; nothing is cached",
    ),
)

DAEMONS = _section(
    "Daemons, cron and hooks",
    opt(
        "attach-daemon",
        "list",
        help="run CMD (`/bin/sh -c`, own session) beside the master: respawned when it dies "
        "(throttled), stopped on reload and shutdown, killed if the master dies",
        metavar="CMD",
    ),
    opt(
        "attach-control-daemon",
        "list",
        help="as --attach-daemon, but when CMD exits the instance shuts down gracefully",
        metavar="CMD",
    ),
    opt(
        "attach-daemon2",
        "list",
        help="attach a daemon with `cmd=CMD[,pidfile=P,stopsignal=N,reloadsignal=N,freq=N,"
        "control=1,daemonize=1,stdin=1,chdir=DIR,max_throttle=N,notifypid=1]`",
        metavar="KEY=VAL,...",
    ),
    opt(
        "smart-attach-daemon",
        "list",
        help="`PIDFILE CMD`: CMD daemonizes and writes PIDFILE; respawned when the pid in "
        "PIDFILE is gone, kept running across reloads and left running at shutdown",
        metavar="PIDFILE CMD",
    ),
    opt(
        "smart-attach-daemon2",
        "list",
        help="`PIDFILE CMD`: as --smart-attach-daemon, but the master daemonizes CMD and "
        "writes PIDFILE itself",
        metavar="PIDFILE CMD",
    ),
    opt("daemons-honour-stdin", "bool", help="attached daemons keep the master's stdin"),
    opt(
        "cron",
        "list",
        help="run CMD when local time matches `MIN HOUR DAY MONTH WEEKDAY` (-1 any, -N every "
        "N; checked at start and every second, at most once a minute)",
        metavar="MIN HOUR DAY MONTH WEEKDAY CMD",
    ),
    opt(
        "unique-cron",
        "list",
        help="as --cron, but not started while the previous run is alive",
        metavar="MIN HOUR DAY MONTH WEEKDAY CMD",
    ),
    opt(
        "cron2",
        "list",
        help="`minute=M,hour=H,day=D,month=N,week=W,unique=1,harakiri=S CMD` (-1 when left out)",
        metavar="KEY=VAL,... CMD",
    ),
    opt(
        "hook-asap",
        "list",
        help="run ACTION:ARGS as soon as the configuration is read (exec, safeexec, mkdir, chdir, putenv, write, append, "
        "create, unlink, print, exit; a failure stops the start)",
        metavar="ACTION:ARGS",
    ),
    opt(
        "hook-as-root",
        "list",
        help="run ACTION:ARGS before --uid/--gid are dropped (exec, safeexec, mkdir, chdir, putenv, write, append, "
        "create, unlink, print, exit; a failure stops the start)",
        metavar="ACTION:ARGS",
    ),
    opt(
        "hook-as-user",
        "list",
        help="run ACTION:ARGS after --uid/--gid are dropped (exec, safeexec, mkdir, chdir, putenv, write, append, "
        "create, unlink, print, exit; a failure stops the start)",
        metavar="ACTION:ARGS",
    ),
    opt(
        "hook-pre-app",
        "list",
        help="run ACTION:ARGS before the app is imported (in the master) (exec, safeexec, mkdir, chdir, putenv, write, append, "
        "create, unlink, print, exit; a failure stops the start)",
        metavar="ACTION:ARGS",
    ),
    opt(
        "hook-post-app",
        "list",
        help="run ACTION:ARGS after the app is imported (in the master) (exec, safeexec, mkdir, chdir, putenv, write, append, "
        "create, unlink, print, exit; a failure stops the start)",
        metavar="ACTION:ARGS",
    ),
    opt(
        "hook-master-start",
        "list",
        help="run ACTION:ARGS when the master loop starts; `unix_signal:N FUNCTION` binds signal N to gracefully_kill_them_all, kill_them_all, grace_them_all or reap_them_all (exec, safeexec, mkdir, chdir, putenv, write, append, "
        "create, unlink, print, exit; a failure stops the start)",
        metavar="ACTION:ARGS",
    ),
    opt(
        "hook-accepting",
        "list",
        help="uWSGI runs ACTION:ARGS in each worker once it accepts",
        metavar="ACTION:ARGS",
        refused="use hook-post-app (after the app is imported, before the workers start)",
    ),
    opt(
        "cron-harakiri",
        "int",
        0,
        "kill a cron run (its process group) after N seconds (0: off)",
    ),
    force_master=True,
)

# Filled by the Emperor (pymaster/emperor/) and the ASGI worker (pymaster/workers/asgi/).
_NO_ON_DEMAND = (
    "the Emperor starts every vassal at once (its own sockets bound by the vassal); for a socket "
    "that starts its app on the first connection use a systemd .socket unit per app "
    "(etc/systemd/pymaster@.socket: LISTEN_FDS is adopted)"
)
_ONLY_INI = "pymaster's vassals are INI files (`*.ini`); convert the file to INI"
EMPEROR: list[Option] = _section(
    "Emperor",
    opt(
        "emperor",
        "list",
        help="run the Emperor: one vassal (a `pymaster --ini FILE` master) per `*.ini` file in "
        "DIR, or per file matching GLOB; started, respawned, reloaded when the file is touched, "
        "stopped when it is removed (repeatable)",
        metavar="DIR|GLOB",
    ),
    opt(
        "emperor-freq",
        "int",
        3,
        "seconds between two scans of the vassal directories and globs",
        minimum=1,
    ),
    opt(
        "emperor-throttle",
        "int",
        1000,
        "milliseconds the next start of a vassal that died before it was ready is delayed by, "
        "more at each further death",
        minimum=1,
    ),
    opt(
        "emperor-max-throttle",
        "int",
        180000,
        "milliseconds the start delay of a failing vassal grows to (then it is halved)",
        minimum=1,
    ),
    opt(
        "emperor-no-blacklist",
        "bool",
        help="respawn a vassal that died before it was ready at the next scan, without throttling",
    ),
    opt(
        "emperor-tyrant",
        "bool",
        help="run each vassal with the uid and gid of its file's owner (root only; files owned "
        "by uid 0 or gid 0 are refused)",
    ),
    opt(
        "emperor-tyrant-nofollow",
        "bool",
        help="with --emperor-tyrant, the owner of a symlinked vassal file is the link's own",
    ),
    opt(
        "emperor-nofollow",
        "bool",
        help="a symlinked vassal file is reloaded when the link changes, not its target",
    ),
    opt(
        "emperor-stats/emperor-stats-server",
        "str",
        help="serve the Emperor's stats JSON (vassals, blacklist) on this address",
        metavar="ADDR",
    ),
    opt("emperor-pidfile", "str", help="write the Emperor's pid to this file", metavar="FILE"),
    opt("emperor-procname", "str", help="name the Emperor process this"),
    opt(
        "emperor-graceful-shutdown",
        "bool",
        help="stop vassals gracefully (SIGTERM: requests finish) when their file is removed or the "
        "Emperor gets SIGINT/SIGQUIT, instead of at once (SIGINT)",
    ),
    opt(
        "vassals-inherit",
        "list",
        help="load this INI after every vassal's own file and --vassals-include (its values "
        "win, as uWSGI's inherited template)",
        metavar="FILE",
    ),
    opt(
        "vassals-include",
        "list",
        help="load this INI after every vassal's own file (its values win)",
        metavar="FILE",
    ),
    opt(
        "vassals-inherit-before",
        "list",
        help="as --vassals-inherit, loaded before its files (uWSGI applies inherited files last "
        "wherever they are given)",
        metavar="FILE",
    ),
    opt(
        "vassals-include-before",
        "list",
        help="load this INI before every vassal's own file (the vassal's values win)",
        metavar="FILE",
    ),
    opt(
        "vassal-set/vassals-set",
        "list",
        help="pass `--set KEY=VALUE` to every vassal (before its own file: the file's value wins)",
        metavar="KEY=VALUE",
    ),
    opt(
        "emperor-curse-tolerance",
        "int",
        30,
        "uWSGI kills a vassal whose pipe closed but which lives on after N seconds",
        inert="the Emperor is the vassals' parent and reaps them; a vassal asked to stop gets "
        "--reload-mercy (30 s unless set) before SIGKILL",
    ),
    opt(
        "emperor-on-demand-extension/emperor-on-demand-ext",
        "str",
        help="uWSGI's on-demand vassals (socket path in a file with this extension)",
        refused=_NO_ON_DEMAND,
    ),
    opt(
        "emperor-on-demand-directory/emperor-on-demand-dir",
        "str",
        help="uWSGI's on-demand vassals (sockets in this directory)",
        refused=_NO_ON_DEMAND,
    ),
    opt(
        "emperor-on-demand-exec",
        "str",
        help="uWSGI's on-demand vassals (socket path printed by a command)",
        refused=_NO_ON_DEMAND,
    ),
    opt(
        "emperor-broodlord",
        "int",
        0,
        "uWSGI's broodlord mode (zerg vassals spawned on demand)",
        refused="give the vassal more workers, or --cheaper to grow them with the load",
    ),
    opt(
        "emperor-required-heartbeat",
        "int",
        0,
        "uWSGI's vassal heartbeat deadline",
        refused="a vassal's master watches its own workers (--harakiri, --worker-reload-mercy); "
        "the Emperor sees a vassal die by waitpid at once",
    ),
    opt(
        "emperor-wrapper",
        "str",
        help="uWSGI runs the vassals with this binary",
        refused="vassals run `python -m pymaster` with the Emperor's interpreter; use a vassal's "
        "own systemd unit for another binary",
    ),
    opt(
        "emperor-extra-extension",
        "list",
        help="uWSGI's extra vassal file extensions",
        refused=_ONLY_INI,
    ),
    opt(
        "emperor-magic-exec",
        "bool",
        help="uWSGI runs executable vassal files and reads their output as the configuration",
        refused="write the INI file the program would print",
    ),
)

ASGI: list[Option] = _section(
    "ASGI workers",
    opt(
        "asgi",
        "str",
        help="load an ASGI 3.0 app, `MODULE:CALLABLE` (`MODULE` alone: `application`); "
        "each worker serves it from an asyncio event loop, many requests in flight",
        metavar="MODULE:CALLABLE",
    ),
    opt(
        "asgi-loop",
        "str",
        "auto",
        "the event loop of the ASGI workers: `uvloop`, `asyncio`, or `auto` (uvloop when "
        "it imports)",
        choices=("auto", "asyncio", "uvloop"),
        worker=True,
    ),
    opt(
        "asgi-concurrency",
        "int",
        1000,
        "requests (and WebSockets) in flight per ASGI worker; at the cap the worker stops "
        "accepting, so new connections wait in the listen queue for another worker",
        minimum=1,
        worker=True,
    ),
    opt(
        "asgi-lifespan",
        "str",
        "auto",
        "the ASGI lifespan protocol: `on` (a failing startup is an app-load failure), "
        "`off`, or `auto` (on, unless the app does not speak it)",
        choices=("auto", "on", "off"),
        worker=True,
    ),
    opt(
        "websockets-max-size/websocket-max-size",
        "int",
        1024,
        "the largest WebSocket message in KiB (after reassembly of its fragments) an ASGI "
        "worker takes, as in uWSGI; a bigger one closes the socket with 1009",
        minimum=1,
        metavar="KIB",
        worker=True,
    ),
    opt(
        "websockets-ping-freq/websocket-ping-freq",
        "int",
        30,
        "seconds between the pings an ASGI worker sends on an idle WebSocket, as in uWSGI "
        "(0: none)",
        worker=True,
    ),
)

OPTIONS: list[Option] = (
    CONFIGURATION
    + SOCKETS
    + APPLICATIONS
    + RESPONSES
    + MASTER
    + CHEAPER
    + LOGGING
    + PROCNAMES
    + STATS
    + SUBSCRIPTIONS
    + FASTROUTER
    + HTTP_ROUTER
    + STATIC
    + DAEMONS
    + EMPEROR
    + ASGI
)

BY_FLAG: dict[str, Option] = {flag: o for o in OPTIONS for flag in o.flags}
BY_KEY: dict[str, Option] = {key: o for o in OPTIONS for key in o.long_names}
