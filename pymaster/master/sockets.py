"""Listening sockets as objects: parse uWSGI addresses, bind, and inherit them across re-exec.

Addresses follow `pymaster.protocols.address` (`host:port`, `:port`, `*:port`, `[v6]:port`,
a unix path, `@name`); binding resolves names there too. Kinds: `uwsgi` and `http` (the
workers'), `fastrouter`, `subscription` (UDP or unix datagram) and `fastrouter-stats` (the
fastrouter's), `httprouter`, `https`, `http-to-https`, `http-subscription` and `http-stats`
(the HTTP router's), `relay` (unix datagram sockets between router processes, see gateways.py) and
`stats` (the master's own, see control.py). Inherited sockets arrive the systemd
way: LISTEN_PID = our pid, LISTEN_FDS = count from fd 3, LISTEN_FDNAMES = colon-separated kinds;
or from Server::Starter's `start_server`: SERVER_STARTER_PORT = `host:port=fd;path=fd;...`.
Server::Starter's sockets are *shared*: the next generation accepts on the very same socket,
so a graceful stop must leave it untouched (no drop filter, see refuse_new_connections).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import socket
import stat
from dataclasses import dataclass

from pymaster.log import log
from pymaster.protocols.address import AddressError, SockAddr, sockaddr_text
from pymaster.protocols.address import parse as parse_text

SD_LISTEN_FDS_START = 3
ACTIVATED = "sd-"  # LISTEN_FDNAMES prefix for systemd-given sockets we re-pass
SHARED = "ss-"  # LISTEN_FDNAMES prefix (after ACTIVATED) for Server::Starter's sockets
SERVER_STARTER = "SERVER_STARTER_PORT"
DATAGRAM_KINDS = ("subscription", "http-subscription", "relay")


class SocketError(Exception):
    """A socket that cannot be parsed or bound; the message names the address."""


def parse_address(spec: str, kind: str = "uwsgi") -> tuple[int, SockAddr]:
    """(family, sockaddr) to bind a `kind` socket on `spec`; names are resolved."""
    stype = socket.SOCK_DGRAM if kind in DATAGRAM_KINDS else socket.SOCK_STREAM
    try:
        return parse_text(spec, f"{kind} socket").resolve(stype, bind=True)
    except AddressError as exc:
        raise SocketError(str(exc)) from None


def _same_address(family: int, want: SockAddr, got) -> bool:
    if family == socket.AF_UNIX:
        return isinstance(want, str) and os.fsencode(want) == (
            got if isinstance(got, bytes) else os.fsencode(got)
        )
    return isinstance(want, tuple) and (got[0], got[1]) == (want[0], want[1])


@dataclass
class Listener:
    """One configured listening socket: its name as given, kind and the bound socket."""

    name: str
    # "uwsgi" | "http" | "fastrouter" | "subscription" | "fastrouter-stats" | "stats" | "relay"
    # | "httprouter" | "https" | "http-to-https" | "http-subscription" | "http-stats"
    kind: str
    family: int = socket.AF_INET
    address: SockAddr = ""
    sock: socket.socket | None = None
    inherited: bool = False
    activated: bool = False  # handed to us by systemd, not in the configuration
    shared: bool = False  # Server::Starter's: the next generation accepts on it too

    @property
    def bound(self) -> socket.socket:
        """The socket, once bound or adopted."""
        if self.sock is None:
            raise SocketError(f"{self.kind} socket '{self.name}' is not bound")
        return self.sock

    @property
    def fd(self) -> int:
        return self.bound.fileno()

    @property
    def datagram(self) -> bool:
        return self.kind in DATAGRAM_KINDS

    def describe(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"UNIX address {self.name}"
        proto = "UDP" if self.datagram else "TCP"
        return f"{proto if self.family == socket.AF_INET else proto + '6'} address {self.name}"

    @property
    def path(self) -> str | None:
        """The filesystem path of a unix socket (None for inet and abstract sockets)."""
        if isinstance(self.address, str) and not self.address.startswith("\0"):
            return self.address
        return None

    def bind(self, backlog: int, chmod: str | None = None) -> None:
        """Bind and listen; a stale unix socket file is replaced (never another kind of file).
        `chmod` is `--chmod-socket`, an octal mode for filesystem unix sockets."""
        path = self.path
        mode = None
        if chmod is not None and path is not None:
            if not re.fullmatch(r"[0-7]{3,4}", chmod):
                raise SocketError(
                    f"invalid --chmod-socket '{chmod}' for socket '{self.name}': "
                    f"expected an octal mode such as 660"
                )
            mode = int(chmod, 8)
        stype = socket.SOCK_DGRAM if self.datagram else socket.SOCK_STREAM
        sock = socket.socket(self.family, stype)
        try:
            if self.family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif path is not None and os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
            sock.bind(self.address)
            if not self.datagram:
                sock.listen(backlog)
            if mode is not None and path is not None:
                os.chmod(path, mode)
        except OSError as exc:
            sock.close()
            raise SocketError(
                f"cannot bind {self.kind} socket '{self.name}': {exc.strerror}"
            ) from None
        sock.set_inheritable(True)
        self.sock = sock


def inherits_sockets(environ) -> bool:
    """Listening sockets come from outside (systemd's LISTEN_FDS or Server::Starter)."""
    return "LISTEN_FDS" in environ or SERVER_STARTER in environ


def _server_starter_fds(environ) -> list[tuple[int, str]]:
    """SERVER_STARTER_PORT (`127.0.0.1:8080=3;/tmp/s.sock=4`): the fds, named `sd-ss-http`
    (activated, shared; unmatched ones are served as HTTP, as by Starman or Starlet).
    Left in the environment: every generation start_server runs gets its own."""
    found = []
    for item in filter(None, environ.get(SERVER_STARTER, "").split(";")):
        _addr, sep, fd = item.rpartition("=")
        if not sep or not fd.isdigit():
            log(f"{SERVER_STARTER}: ignoring '{item}' (expected ADDRESS=FD)")
            continue
        found.append((int(fd), ACTIVATED + SHARED + "http"))
    return found


def _inherited_fds(environ) -> list[tuple[int, str]]:
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return _server_starter_fds(environ)
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    found = [(SD_LISTEN_FDS_START + i, names[i] if i < len(names) else "") for i in range(count)]
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    return found


def setup(
    specs: list[tuple[str, str]],
    backlog: int,
    chmod=None,
    environ=None,
    adopt_unmatched: bool = True,
) -> list[Listener]:
    """Bind (or adopt from LISTEN_FDS) every (kind, address) in `specs`, in order.

    Inherited sockets that match no configured address are adopted as uwsgi (or, by their
    LISTEN_FDNAMES name, http) sockets under systemd socket activation, and closed after a
    re-exec of our own (`adopt_unmatched=False`: configured away since the last start).
    """
    environ = os.environ if environ is None else environ
    inherited = []
    for fd, kind in _inherited_fds(environ):
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        inherited.append((sock, kind))
    listeners = []
    for index, (kind, spec) in enumerate(specs):
        family, address = parse_address(spec, kind)
        lst = Listener(spec, kind, family, address)
        stype = socket.SOCK_DGRAM if lst.datagram else socket.SOCK_STREAM
        for i, (sock, name) in enumerate(inherited):
            if (
                sock.family == family
                and sock.type == stype
                and _same_address(family, address, sock.getsockname())
            ):
                lst.sock, lst.inherited = sock, True
                lst.shared = name.removeprefix(ACTIVATED).startswith(SHARED)
                inherited.pop(i)
                break
        if lst.sock is None:
            lst.bind(backlog, chmod)
        lst.bound.set_inheritable(True)
        verb = "inherited" if lst.inherited else "bound to"
        log(f"{kind} socket {index} {verb} {lst.describe()} fd {lst.fd}")
        listeners.append(lst)
    for sock, kind in inherited:
        activated = kind.startswith(ACTIVATED)
        kind = kind.removeprefix(ACTIVATED)
        shared = kind.startswith(SHARED)
        kind = kind.removeprefix(SHARED)
        if not (adopt_unmatched or activated) or sock.type != socket.SOCK_STREAM:
            sock.close()
            continue
        kind = kind if kind in ("uwsgi", "http") else "uwsgi"
        name = sock.getsockname()
        lst = Listener(sockaddr_text(name), kind, sock.family, name, sock, True, True, shared)
        log(
            "- Server::Starter socket detected -"
            if shared
            else "- SystemD socket activation detected -"
        )
        log(f"{kind} socket {len(listeners)} inherited {lst.describe()} fd {lst.fd}")
        listeners.append(lst)
    return listeners


def pass_to_exec(listeners: list[Listener], environ) -> None:
    """Move the listening fds to 3.. and describe them in LISTEN_* for the next image.

    LISTEN_PID is our own pid: exec keeps it, so the new image adopts exactly these fds.
    """
    fds = [lst.fd for lst in listeners]
    # dup out of the way first (above any fd the targets could be), then down to 3..
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1024) for fd in fds]
    targets = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + len(fds))
    for fd in fds:  # the originals must not survive the exec
        if fd not in targets:
            os.close(fd)
    for lst in listeners:
        lst.bound.detach()
    for i, fd in enumerate(high):
        os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)
        os.close(fd)
    environ["LISTEN_PID"] = str(os.getpid())
    environ["LISTEN_FDS"] = str(len(listeners))
    environ["LISTEN_FDNAMES"] = ":".join(
        ACTIVATED * lst.activated + SHARED * lst.shared + lst.kind for lst in listeners
    )


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


# Drop a TCP segment with SYN and without ACK (a new handshake); let everything else through:
# the last ACK and the first data of handshakes already under way must reach the listener, or
# a connection deferred by TCP_DEFER_ACCEPT would be reset when the listener closes.
#   ldb [13] (TCP flags: the filter sees the TCP header)  jset #0x10 (ACK)  ret -1 | ret 0
_HOLD_NEW = (_SockFilter * 4)(
    _SockFilter(0x30, 0, 0, 13),  # BPF_LD|BPF_B|BPF_ABS
    _SockFilter(0x45, 0, 1, 0x10),  # BPF_JMP|BPF_JSET|BPF_K: ACK set -> accept
    _SockFilter(0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET|BPF_K: accept the whole segment
    _SockFilter(0x06, 0, 0, 0),  # BPF_RET|BPF_K: drop
)
SO_ATTACH_FILTER = 26


def refuse_new_connections(listeners: list[Listener]) -> None:
    """Graceful shutdown: new SYNs are dropped while queued connections stay acceptable.

    A socket filter on a TCP listener that drops new SYNs stops the kernel from starting new
    handshakes (the client retries its SYN and is refused once the socket is closed), while
    segments of handshakes already under way pass, and connections in the accept queue are
    untouched: the workers drain the queue until it stays empty, so none is reset by the
    final close. Unix sockets have no such filter: they keep
    the short race between the last accept and the close. Server::Starter's sockets are
    left alone: the filter would hold the new generation's connections too.
    """
    prog = bytes(memoryview(_SockFprog(len(_HOLD_NEW), _HOLD_NEW)))
    for lst in listeners:
        if lst.shared:  # Server::Starter's next generation accepts on this very socket
            continue
        if lst.family in (socket.AF_INET, socket.AF_INET6) and not lst.datagram and lst.sock:
            try:
                lst.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
            except OSError as exc:
                log(f"cannot hold new connections on {lst.name}: {exc.strerror}")


def remove_unix(listeners: list[Listener]) -> None:
    """--vacuum: remove the filesystem unix sockets we bound."""
    for lst in listeners:
        if lst.path is not None:
            try:
                os.unlink(lst.path)
                log(f"VACUUM: unix socket {lst.path} removed.")
            except OSError:
                pass
