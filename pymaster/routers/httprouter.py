"""The HTTP router (uWSGI's `--http`): HTTP/1.1 clients in, uwsgi packets to the nodes.

Run only under a master, like the fastrouter: the master binds every socket (`--http`,
`--https`, `--http-to-https`, the subscription and stats sockets) and calls `run()` in a
forked child per router process (`--http-processes N`), supervised like workers
(master/gateways.py). Nodes come from, in uWSGI's precedence: the subscription server
(`--http-subscription-server`, pools keyed by the Host header), `--http-to` (round robin,
a failed node skipped for 30 s), or the instance's own uwsgi socket 0 (which the master
creates on 127.0.0.1 with a kernel-chosen port when the instance has an app and no socket).
Subscriptions, table sharing, persistence and stats are the corerouter's
(routers/corerouter.py); one connection is routers/httpsession.py.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import NoReturn

from pymaster.config import Config
from pymaster.log import log
from pymaster.protocols.address import parse as parse_address
from pymaster.routers import corerouter
from pymaster.routers.corerouter import CoreRouter, Settings, socket_name
from pymaster.routers.httpsession import HttpSession


class HttpConfigError(ValueError):
    """An --http* option that cannot work."""


@dataclass
class TlsSpec:
    address: str
    cert: str
    key: str
    ciphers: str = ""


def parse_https(value: str) -> TlsSpec:
    """`ADDR,CERT,KEY[,CIPHERS]` (uWSGI's `--https` syntax)."""
    parts = value.split(",")
    if len(parts) < 3 or not all(parts[:3]):
        raise HttpConfigError(
            f"invalid --https '{value}': expected ADDR,CERT,KEY[,CIPHERS] "
            "(invalid https syntax must be socket,crt,key)"
        )
    if len(parts) > 4:
        raise HttpConfigError(
            f"invalid --https '{value}': client certificates (a fifth field) are not supported"
        )
    return TlsSpec(parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else "")


def parse_redirect(value: str) -> tuple[str, str]:
    """`ADDR[,PORT]` of --http-to-https: the address and the port put in the Location."""
    address, _, port = value.partition(",")
    if port and not port.isdigit():
        raise HttpConfigError(f"invalid --http-to-https '{value}': expected ADDR[,PORT]")
    return address, port


def tls_context(spec: TlsSpec) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(spec.cert, spec.key)
        if spec.ciphers:
            ctx.set_ciphers(spec.ciphers)
    except (OSError, ssl.SSLError) as exc:
        raise HttpConfigError(
            f"--https {spec.address}: cannot load certificate {spec.cert} / key {spec.key}"
            f"{' / ciphers ' + spec.ciphers if spec.ciphers else ''}: {exc}"
        ) from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def check(cfg: Config) -> None:
    """Raise for HTTP router configuration that cannot work (the master calls it before it
    forks routers): bad --http-to node, --https syntax or certificate, --http-var,
    signing secret or allow list."""
    for node in cfg.http_to:
        parse_address(node, "--http-to node")
    for value in cfg.https:
        tls_context(parse_https(value))
    for value in cfg.http_to_https:
        parse_redirect(value)
    extra_vars(cfg)
    corerouter.check_subscriptions(cfg)


def extra_vars(cfg: Config) -> list[tuple[bytes, bytes]]:
    out = []
    for item in cfg.http_var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HttpConfigError(f"invalid --http-var '{item}': expected KEY=VALUE")
        out.append((key.encode("latin-1"), value.encode("latin-1")))
    return out


def settings(cfg: Config, worker_node: str | None) -> Settings:
    timeout = float(cfg.http_timeout)
    connect = cfg.http_connect_timeout
    to = list(cfg.http_to)
    if not to and worker_node is not None:
        to = [worker_node]
    return Settings(
        name="http",
        timeout=timeout,
        connect_timeout=float(connect) if connect else timeout,
        processes=cfg.http_processes,
        to=to,
        backlog=cfg.listen,
    )


class HttpRouter(CoreRouter):
    """An HTTP router process."""

    def __init__(
        self,
        cfg: Config,
        listen_socks: list[socket.socket],
        tls: dict[int, TlsSpec],
        redirects: dict[int, str],
        subscription_socks: list[socket.socket],
        stats_sock: socket.socket | None,
        router_id: int,
        directory: str | None = None,
        relay_sock: socket.socket | None = None,
        worker_node: str | None = None,
    ):
        super().__init__(
            cfg,
            settings(cfg, worker_node),
            listen_socks,
            subscription_socks,
            stats_sock,
            router_id,
            directory,
            relay_sock,
        )
        self.tls = tls  # fd -> certificate of an --https socket
        self.redirects = redirects  # fd -> port of an --http-to-https socket
        self.headers_timeout = float(cfg.http_headers_timeout or cfg.http_timeout)
        self.keepalive_timeout = float(cfg.http_keepalive)
        self.auto_chunked = cfg.http_auto_chunked
        self.websockets = cfg.http_websockets
        self.manage_expect = cfg.http_manage_expect
        self.chunked_limit = cfg.http_chunked_limit
        self.max_headers = cfg.http_max_headers
        self.max_head = cfg.http_max_head
        self.modifier1 = cfg.http_modifier1
        self.modifier2 = cfg.http_modifier2
        self.extra_vars = extra_vars(cfg)
        self.hostname = socket.gethostname()
        self._sni_contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self._sni_failed: set[tuple[str, str]] = set()
        flag = (cfg.http_server_name_as_http_host or "").lower()
        self.server_name: list[tuple[bytes, bytes]] = (
            []
            if flag not in ("", "0", "false", "no", "off")
            else [(b"SERVER_NAME", self.hostname.encode())]
        )  # empty: SERVER_NAME comes from the Host header

    def protocol_factory(self, sock: socket.socket):
        port = socket_name(sock).rsplit(":", 1)[-1] if sock.family != socket.AF_UNIX else ""
        https = sock.fileno() in self.tls
        redirect = self.redirects.get(sock.fileno())
        return lambda: HttpSession(self, port, https, redirect)

    def ssl_context(self, sock: socket.socket) -> ssl.SSLContext | None:
        spec = self.tls.get(sock.fileno())
        if spec is None:
            return None
        ctx = tls_context(spec)
        if self.use_subscriptions:
            ctx.sni_callback = self._sni
        return ctx

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        """The certificate a (signed) subscription announced for this key, if any; else
        the --https one."""
        pair = self.table.sni.get(name) if name else None
        if pair is None:
            return
        ctx = self._sni_contexts.get(pair)
        if ctx is None:
            try:
                ctx = tls_context(TlsSpec(name or "", pair[0], pair[1]))
            except HttpConfigError as exc:
                if pair not in self._sni_failed:
                    self._sni_failed.add(pair)
                    log(f"[uwsgi-http] SNI for {name!r}: {exc}")
                return
            if len(self._sni_contexts) > 1024:
                self._sni_contexts.clear()
            self._sni_contexts[pair] = ctx
        sslobj.context = ctx


def run(
    cfg: Config,
    listen_socks: list[socket.socket],
    tls: dict[int, TlsSpec],
    redirects: dict[int, str],
    subscription_socks: list[socket.socket],
    stats_sock: socket.socket | None,
    router_id: int,
    directory: str | None = None,
    relay_sock: socket.socket | None = None,
    worker_node: str | None = None,
) -> NoReturn:
    """Run HTTP router process `router_id` on the sockets the master bound; never returns
    (see corerouter.run)."""
    corerouter.run(
        "http",
        router_id,
        lambda: HttpRouter(
            cfg,
            listen_socks,
            tls,
            redirects,
            subscription_socks,
            stats_sock,
            router_id,
            directory,
            relay_sock,
            worker_node,
        ),
    )
