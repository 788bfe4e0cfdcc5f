"""Listening sockets as objects: parse uWSGI addresses, bind, and inherit them across re-exec.

An address is `host:port`, `:port` (all interfaces), `[v6]:port`, a filesystem path (unix
socket) or `@name` (abstract unix socket). Inherited sockets arrive the systemd way:
LISTEN_PID = our pid, LISTEN_FDS = count from fd 3, LISTEN_FDNAMES = colon-separated kinds.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
from dataclasses import dataclass

from pymaster.log import log

SD_LISTEN_FDS_START = 3
ACTIVATED = "sd-"  # LISTEN_FDNAMES prefix for systemd-given sockets we re-pass


class SocketError(Exception):
    """A socket that cannot be parsed or bound; the message names the address."""


def parse_address(spec: str):
    """(family, sockaddr) for a uWSGI-style address string."""
    if not spec:
        raise SocketError("empty socket address: expected host:port, :port or a unix path")
    if spec.startswith("@"):
        return socket.AF_UNIX, "\0" + spec[1:]
    if "/" in spec or ":" not in spec:
        return socket.AF_UNIX, spec
    host, _, port = spec.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SocketError(f"invalid port in socket address '{spec}': expected 1-65535")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port))
    if host in ("", "*"):
        host = "0.0.0.0"
    try:
        host = socket.gethostbyname(host)
    except OSError as exc:
        raise SocketError(f"cannot resolve host in socket address '{spec}': {exc}") from None
    return socket.AF_INET, (host, int(port))


def _same_address(family, want, got) -> bool:
    if family == socket.AF_UNIX:
        got = got.decode("latin-1") if isinstance(got, bytes) else got
        return got == want
    return (got[0], got[1]) == (want[0], want[1])


@dataclass
class Listener:
    """One configured listening socket: its name as given, kind and the bound socket."""

    name: str
    kind: str  # "uwsgi" | "http" | "fastrouter" | "subscription" | "stats"
    family: int = socket.AF_INET
    address: object = None
    sock: socket.socket | None = None
    inherited: bool = False
    activated: bool = False  # handed to us by systemd, not in the configuration

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def datagram(self) -> bool:
        return self.kind == "subscription"

    def describe(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"UNIX address {self.name}"
        proto = "UDP" if self.datagram else "TCP"
        return f"{proto if self.family == socket.AF_INET else proto + '6'} address {self.name}"

    def bind(self, backlog: int, chmod: str | None = None) -> None:
        stype = socket.SOCK_DGRAM if self.datagram else socket.SOCK_STREAM
        sock = socket.socket(self.family, stype)
        try:
            if self.family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif not self.address.startswith("\0") and os.path.exists(self.address):
                os.unlink(self.address)
            sock.bind(self.address)
            if not self.datagram:
                sock.listen(backlog)
            if (
                chmod is not None
                and self.family == socket.AF_UNIX
                and not self.address.startswith("\0")
            ):
                os.chmod(self.address, int(chmod or "666", 8))
        except OSError as exc:
            sock.close()
            raise SocketError(
                f"cannot bind {self.kind} socket '{self.name}': {exc.strerror}"
            ) from None
        sock.set_inheritable(True)
        self.sock = sock


def _inherited_fds(environ) -> list[tuple[int, str]]:
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
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
        family, address = parse_address(spec)
        lst = Listener(spec, kind, family, address)
        for i, (sock, _kind) in enumerate(inherited):
            if sock.family == family and _same_address(family, address, sock.getsockname()):
                lst.sock, lst.inherited = sock, True
                inherited.pop(i)
                break
        if lst.sock is None:
            lst.bind(backlog, chmod)
        lst.sock.set_inheritable(True)
        verb = "inherited" if lst.inherited else "bound to"
        log(f"{kind} socket {index} {verb} {lst.describe()} fd {lst.fd}")
        listeners.append(lst)
    for sock, kind in inherited:
        activated = kind.startswith(ACTIVATED)
        kind = kind.removeprefix(ACTIVATED)
        if not (adopt_unmatched or activated) or sock.type != socket.SOCK_STREAM:
            sock.close()
            continue
        kind = kind if kind in ("uwsgi", "http") else "uwsgi"
        name = sock.getsockname()
        if isinstance(name, tuple):
            name = f"{name[0]}:{name[1]}"
        elif isinstance(name, bytes):
            name = "@" + name[1:].decode("latin-1")
        lst = Listener(str(name), kind, sock.family, sock.getsockname(), sock, True, True)
        log("- SystemD socket activation detected -")
        log(f"{kind} socket {len(listeners)} inherited {lst.describe()} fd {lst.fd}")
        listeners.append(lst)
    return listeners


def pass_to_exec(listeners: list[Listener], environ) -> None:
    """Move the listening fds to 3.. and describe them in LISTEN_* for the next image.

    LISTEN_PID is our own pid: exec keeps it, so the new image adopts exactly these fds.
    """
    fds = [lst.sock.fileno() for lst in listeners]
    # dup out of the way first (above any fd the targets could be), then down to 3..
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1024) for fd in fds]
    targets = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + len(fds))
    for fd in fds:  # the originals must not survive the exec
        if fd not in targets:
            os.close(fd)
    for lst in listeners:
        lst.sock.detach()
    for i, fd in enumerate(high):
        os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)
        os.close(fd)
    environ["LISTEN_PID"] = str(os.getpid())
    environ["LISTEN_FDS"] = str(len(listeners))
    environ["LISTEN_FDNAMES"] = ":".join(ACTIVATED * lst.activated + lst.kind for lst in listeners)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_DROP_ALL = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, 0))  # BPF_RET|BPF_K #0: drop
SO_ATTACH_FILTER = 26


def refuse_new_connections(listeners: list[Listener]) -> None:
    """Graceful shutdown: new SYNs are dropped while queued connections stay acceptable.

    A drop-all socket filter on a TCP listener stops the kernel from completing new
    handshakes (the client retries its SYN and is refused once the socket is closed), but
    connections already in the accept queue are untouched: the workers drain them to the
    end, so none is reset by the final close. Unix sockets have no such filter: they keep
    the short race between the last accept and the close.
    """
    prog = bytes(memoryview(_SockFprog(1, _DROP_ALL)))
    for lst in listeners:
        if lst.family in (socket.AF_INET, socket.AF_INET6) and not lst.datagram and lst.sock:
            try:
                lst.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
            except OSError as exc:
                log(f"cannot hold new connections on {lst.name}: {exc.strerror}")


def remove_unix(listeners: list[Listener]) -> None:
    """--vacuum: remove the filesystem unix sockets we bound."""
    for lst in listeners:
        if lst.family == socket.AF_UNIX and not lst.address.startswith("\0"):
            try:
                os.unlink(lst.address)
                log(f"VACUUM: unix socket {lst.address} removed.")
            except OSError:
                pass
