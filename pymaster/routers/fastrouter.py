"""The fastrouter: a uwsgi-protocol load balancer (asyncio, uvloop when importable).

Run only under a master: `pymaster --fastrouter ADDR [--fastrouter-subscription-server ADDR]
[--fastrouter-to ADDR] [--fastrouter-stats ADDR] ...`. The master binds every socket (the
stats one too) and calls `run()` in a forked child, once per router process
(`--fastrouter-processes N`), supervising them like workers (master/gateways.py); the router
binds nothing itself.

Per client connection (routers/session.py): read the uwsgi header and vars, pick the key
(UWSGI_FASTROUTER_KEY > HTTP_HOST > SERVER_NAME), pick a node (subscription pools with
uWSGI's wrr, else static `--fastrouter-to` round robin), connect, rewrite header bytes 0 and
3 to the node's modifier1/modifier2, and stream both ways until the node closes. Everything
else (subscriptions, table sharing between processes, persistence, stats) is the
corerouter's, shared with the HTTP router (routers/corerouter.py).
"""

from __future__ import annotations

import socket
from typing import NoReturn

from pymaster.config import Config
from pymaster.protocols.address import parse as parse_address
from pymaster.routers import corerouter
from pymaster.routers.corerouter import CoreRouter, Settings, relay_path, socket_name, state_dir
from pymaster.routers.session import ClientSession

__all__ = ["Router", "check", "relay_path", "run", "settings", "socket_name", "state_dir"]

# --------------------------------------------------------------------------- configuration
# Explicit zeroes are mapped by the option table, as uWSGI's corerouter maps them:
# `--fastrouter-timeout 0` is 60 s (`if (!ucr->socket_timeout) ucr->socket_timeout = 60`),
# `--fastrouter-processes 0` is 1 (`if (ucr->processes < 1) ucr->processes = 1`);
# `--subscription-tolerance 0` is taken as given (see routers/pools.py).


def check(cfg: Config) -> None:
    """Raise for router configuration that cannot work (called by the master before it forks
    routers): a malformed `--fastrouter-to` node (AddressError), an unreadable or short
    signing secret, a bad `--subscription-allow` entry (SubscriptionError, OSError)."""
    for node in cfg.fastrouter_to:
        parse_address(node, "--fastrouter-to node")
    corerouter.check_subscriptions(cfg)


def settings(cfg: Config) -> Settings:
    timeout = float(cfg.fastrouter_timeout)
    # a connect that takes longer marks the node failed and tries the next one; 0 is
    # uWSGI's behaviour (the connect shares --fastrouter-timeout, the session is cut)
    connect = cfg.fastrouter_connect_timeout
    return Settings(
        name="fastrouter",
        timeout=timeout,
        connect_timeout=min(float(connect), timeout) if connect else timeout,
        processes=cfg.fastrouter_processes,
        to=list(cfg.fastrouter_to),
        backlog=cfg.listen,
    )


class Router(CoreRouter):
    """A fastrouter process: uwsgi sessions (routers/session.py) on the corerouter."""

    def __init__(
        self,
        cfg: Config,
        listen_socks: list[socket.socket],
        subscription_socks: list[socket.socket],
        stats_sock: socket.socket | None,
        router_id: int,
        directory: str | None = None,
        relay_sock: socket.socket | None = None,
    ):
        super().__init__(
            cfg,
            settings(cfg),
            listen_socks,
            subscription_socks,
            stats_sock,
            router_id,
            directory,
            relay_sock,
        )

    def protocol_factory(self, sock: socket.socket):
        return lambda: ClientSession(self)

    @staticmethod
    def unavailable(key: str) -> bytes:
        return _error("503 Service Unavailable", f'no node available for key "{key}"')

    @staticmethod
    def bad_gateway(key: str) -> bytes:
        return _error("502 Bad Gateway", f'no node for key "{key}" accepted the connection')


def _error(status: str, text: str) -> bytes:
    """A complete HTTP/1.0 error answer the router writes itself (then closes)."""
    body = f"{status}: {text}\n".encode("latin-1", "replace")
    return (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1") + body


def run(
    cfg: Config,
    listen_socks: list[socket.socket],
    subscription_socks: list[socket.socket],
    stats_sock: socket.socket | None,
    router_id: int,
    directory: str | None = None,
    relay_sock: socket.socket | None = None,
) -> NoReturn:
    """Run router process `router_id` (1-based) on sockets the master bound (`stats_sock` for
    router 1 only, `relay_sock` with siblings) with the state `directory` it made; never
    returns (see corerouter.run)."""
    corerouter.run(
        "fastrouter",
        router_id,
        lambda: Router(
            cfg, listen_socks, subscription_socks, stats_sock, router_id, directory, relay_sock
        ),
    )
