"""Addresses, one grammar for all of them: listening sockets, subscription servers, nodes.

| form | meaning |
|---|---|
| `host:port` | TCP (or UDP for a subscription server); `host` is a name or an IPv4 address |
| `:port`, `*:port` | every IPv4 address when binding, 127.0.0.1 when connecting |
| `[v6]:port` | an IPv6 address (`[::]:port`: every IPv6 address / ::1 when connecting) |
| a path | a unix socket: anything with a `/` in it, or without a `:` (`app.sock`) |
| `@name` | an abstract unix socket (Linux) |

Ports are 1-65535 everywhere. `parse()` only reads the text: it never resolves a name, so
an address announced in a subscription is kept exactly as given (`Address.text`). Names are
resolved in one place, `Address.resolve()`: for binding (wildcards become 0.0.0.0 / ::) and
for sending or connecting (wildcards become loopback). The router connects through asyncio,
which takes the host as `connect_host` and resolves it without blocking its loop.

Every malformed address raises `AddressError` (a ValueError) naming the address, the part
that is wrong and what was expected.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

FORMS = "host:port, :port, *:port, [v6]:port, a unix path or @name"
MAX_UNIX = 107  # bytes of a unix socket path or abstract name (sun_path is 108, NUL included)
_PORT = re.compile(r"[0-9]{1,5}\Z")
_HOST = re.compile(r"[A-Za-z0-9_.-]{1,253}\Z")
WILDCARDS = ("", "*")
SockAddr = str | tuple[Any, ...]  # what socket.bind / connect / sendto take


class AddressError(ValueError):
    """An address that cannot be used; the message names it and what was expected."""


@dataclass(frozen=True)
class Address:
    """A parsed address. `host` is as written, without brackets ('' or '*' for a wildcard);
    `path` is the unix path, or NUL + name for `@name`."""

    text: str
    family: int
    host: str = ""
    port: int = 0
    path: str = ""
    what: str = field(default="address", compare=False)

    @property
    def unix(self) -> bool:
        return self.family == socket.AF_UNIX

    @property
    def abstract(self) -> bool:
        return self.unix and self.path.startswith("\0")

    @property
    def bind_host(self) -> str:
        """The host to bind: a wildcard means every address of the family."""
        if self.host in WILDCARDS:
            return "0.0.0.0"
        return self.host

    @property
    def connect_host(self) -> str:
        """The host to send to or connect to: a wildcard (also 0.0.0.0, ::) means loopback."""
        if self.family == socket.AF_INET6:
            return (
                "::1" if ipaddress.ip_address(self.host.split("%")[0]).is_unspecified else self.host
            )
        return "127.0.0.1" if self.host in (*WILDCARDS, "0.0.0.0") else self.host

    def resolve(
        self, kind: int = socket.SOCK_STREAM, *, bind: bool = False
    ) -> tuple[int, SockAddr]:
        """(family, sockaddr) for bind() (`bind=True`) or connect()/sendto(); resolves names
        (IPv4 for `host:port`, as uWSGI). Raises AddressError when a name does not resolve."""
        if self.unix:
            return socket.AF_UNIX, self.path
        host = self.bind_host if bind else self.connect_host
        flags = socket.AI_NUMERICHOST if self.family == socket.AF_INET6 else 0
        try:
            info = socket.getaddrinfo(host, self.port, self.family, kind, 0, flags)
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise AddressError(
                f"cannot resolve host '{self.host}' in {self.what} '{self.text}': {reason}"
            ) from None
        return info[0][0], info[0][4]

    def __str__(self) -> str:
        return self.text


def _port(text: str, port: str, what: str) -> int:
    if not _PORT.match(port) or not 0 < int(port) < 65536:
        raise AddressError(f"invalid port '{port}' in {what} '{text}': expected 1-65535")
    return int(port)


def _unix(text: str, path: str, what: str) -> Address:
    if "\0" in text:
        raise AddressError(f"invalid {what} {text!r}: a unix path cannot contain NUL")
    try:
        size = len(os.fsencode(path))
    except UnicodeError:
        raise AddressError(
            f"invalid {what} {text!r}: the unix path is not encodable as a file name"
        ) from None
    if size > MAX_UNIX + path.startswith("\0"):
        raise AddressError(
            f"unix socket path too long in {what} '{text}': {size} bytes, at most {MAX_UNIX}"
        )
    return Address(text, socket.AF_UNIX, path=path, what=what)


def parse(text: str, what: str = "address") -> Address:
    """Parse one address (see the module docstring); `what` names it in error messages, e.g.
    'fastrouter socket' or '--fastrouter-to node'. Never resolves anything."""
    if not text:
        raise AddressError(f"empty {what}: expected {FORMS}")
    if text.startswith("@"):
        if len(text) == 1:
            raise AddressError(f"empty abstract socket name in {what} '@': expected @name")
        return _unix(text, "\0" + text[1:], what)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if not sep or not port.startswith(":"):
            raise AddressError(f"invalid {what} '{text}': expected [v6]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(
                f"invalid IPv6 address '[{host}]' in {what} '{text}': expected [v6]:port "
                f"with v6 an IPv6 address such as ::1"
            ) from None
        return Address(text, socket.AF_INET6, host, _port(text, port[1:], what), what=what)
    if "/" in text or ":" not in text:
        return _unix(text, text, what)
    host, _, port = text.rpartition(":")
    if host not in WILDCARDS and not _HOST.match(host):
        hint = " (an IPv6 address needs brackets: [v6]:port)" if ":" in host else ""
        raise AddressError(
            f"invalid host '{host}' in {what} '{text}': expected a name, an IPv4 address, "
            f"* or nothing{hint}"
        )
    return Address(text, socket.AF_INET, host, _port(text, port, what), what=what)


def sockaddr_text(sockaddr: SockAddr | bytes) -> str:
    """A bound socket's name (`getsockname()`) written in this grammar."""
    if isinstance(sockaddr, tuple):
        host, port = sockaddr[0], sockaddr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(sockaddr, bytes):
        sockaddr = os.fsdecode(sockaddr)
    return "@" + sockaddr[1:] if sockaddr.startswith("\0") else sockaddr
