"""Attach what else the master runs besides workers: router children (the fastrouter and
the HTTP router), subscriptions.

The master binds every router socket (`fastrouter`, `subscription`, `fastrouter-stats`;
`httprouter`, `https`, `http-to-https`, `http-subscription`, `http-stats` listeners, see
sockets.py), makes each router's private state directory and, with several router
processes, binds one relay socket per router in it; then it forks `--fastrouter-processes`
/ `--http-processes` router children, supervised like workers (respawn, reload, titles
`fastrouter N` / `http N`). In each child the target asks to die with the master
(`workers.contract.die_with_master`), closes the sockets that are not that router's (only
router 1 keeps the stats socket) and runs `routers.fastrouter.run` or
`routers.httprouter.run`. The master removes the relay sockets when it shuts down, and the
state directory once its routers are gone (not on a reload, which carries the pools over).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket

from pymaster.config import Config
from pymaster.log import log
from pymaster.master import sockets


def attach(arbiter, cfg: Config, listeners) -> None:
    """Add gateway children and subscription heartbeats to `arbiter` as configured.
    Bad router or subscription configuration raises (AddressError, SubscriptionError)."""
    if cfg.fastrouter:
        _attach_fastrouter(arbiter, cfg, listeners)
    if cfg.http or cfg.https or cfg.http_to_https:
        _attach_http(arbiter, cfg, listeners)
    if cfg.subscribe_to or cfg.subscribe2:
        _attach_subscriber(arbiter, cfg, listeners)


def _attach_fastrouter(arbiter, cfg: Config, listeners: list[sockets.Listener]) -> None:
    from pymaster.routers import fastrouter

    fastrouter.check(cfg)  # a bad --fastrouter-to, secret or allow list stops the start
    front = [lst for lst in listeners if lst.kind == "fastrouter"]
    subs = [lst for lst in listeners if lst.kind == "subscription"]
    stats = [lst for lst in listeners if lst.kind == "fastrouter-stats"]

    def run(child, stats_sock, directory, relay) -> None:
        fastrouter.run(
            cfg,
            [lst.bound for lst in front],
            [lst.bound for lst in subs],
            stats_sock,
            child.number,
            directory,
            relay,
        )

    _attach_router(
        arbiter, cfg, listeners, "fastrouter", cfg.fastrouter_processes, front, subs, stats, run
    )


def _attach_http(arbiter, cfg: Config, listeners: list[sockets.Listener]) -> None:
    from pymaster.protocols.address import sockaddr_text
    from pymaster.routers import httprouter

    try:
        httprouter.check(cfg)
    except httprouter.HttpConfigError as exc:
        raise sockets.SocketError(str(exc)) from None
    plain = [lst for lst in listeners if lst.kind == "httprouter"]
    tls = [lst for lst in listeners if lst.kind == "https"]
    redirect = [lst for lst in listeners if lst.kind == "http-to-https"]
    subs = [lst for lst in listeners if lst.kind == "http-subscription"]
    stats = [lst for lst in listeners if lst.kind == "http-stats"]
    specs = [httprouter.parse_https(v) for v in cfg.https]
    ports = [httprouter.parse_redirect(v)[1] for v in cfg.http_to_https]
    worker_node = None
    if not cfg.http_to and not subs:  # uWSGI: the instance's uwsgi socket 0
        own = [lst for lst in listeners if lst.kind == "uwsgi"]
        if own:
            worker_node = sockaddr_text(own[0].bound.getsockname())
        else:
            log(
                "[uwsgi-http] no --http-to, no --http-subscription-server and no uwsgi "
                "socket: every request gets 503"
            )

    def run(child, stats_sock, directory, relay) -> None:
        httprouter.run(
            cfg,
            [lst.bound for lst in plain + tls + redirect],
            {lst.fd: spec for lst, spec in zip(tls, specs, strict=True)},
            {lst.fd: port for lst, port in zip(redirect, ports, strict=True)},
            [lst.bound for lst in subs],
            stats_sock,
            child.number,
            directory,
            relay,
            worker_node,
        )

    _attach_router(
        arbiter,
        cfg,
        listeners,
        "http",
        cfg.http_processes,
        plain + tls + redirect,
        subs,
        stats,
        run,
    )


def _attach_router(arbiter, cfg, listeners, name, count, front, subs, stats, run) -> None:
    """`count` router children of flavour `name` (>= 1: the table maps 0 to 1, as uWSGI)
    on the sockets `front` + `subs` + `stats`, with their state directory and relays."""
    from pymaster import procname
    from pymaster.routers.corerouter import state_dir
    from pymaster.workers.contract import die_with_master

    mine = {id(lst) for lst in front + subs + stats}
    directory = state_dir([lst.bound for lst in subs], name) if subs else None
    relays = _bind_relays(directory, count, name) if directory is not None and count > 1 else []
    if relays:
        arbiter.on_stop.append(lambda _graceful: _remove_relays(arbiter, relays))
    if directory is not None:  # once the routers are gone (they save the table on exit)
        arbiter.closers.append(lambda: _remove_state_dir(arbiter, directory, name))

    def target(child):
        # SIGTERM, not SIGKILL: the router saves its subscription table on the way out
        die_with_master(signal.SIGTERM)
        for lst in listeners:
            if id(lst) not in mine:
                lst.bound.close()
        stats_sock = None
        for lst in stats:  # served by the first router only, as uWSGI
            if child.number == 1:
                stats_sock = lst.bound
            else:
                lst.bound.close()
        relay = None
        for rid, lst in enumerate(relays, 1):
            if rid == child.number:
                relay = lst.bound
            else:
                lst.bound.close()
        procname.set_title(cfg, child.title)
        run(child, stats_sock, directory, relay)

    for _ in range(count):
        arbiter.add(name, target)


def _bind_relays(directory: str, count: int, name: str) -> list[sockets.Listener]:
    """One unix datagram socket per router process (`relay-N.sock`), bound before any router
    runs; [] (pools are then per process) when one cannot be bound."""
    from pymaster.routers.corerouter import relay_path

    relays: list[sockets.Listener] = []
    for rid in range(1, count + 1):
        path = relay_path(directory, rid)
        lst = sockets.Listener(path, "relay", socket.AF_UNIX, path)
        try:
            lst.bind(0)
        except sockets.SocketError as exc:
            log(f"[uwsgi-{name}] {exc}: router processes do not share subscriptions")
            for done in relays:
                done.bound.close()
            return []
        lst.bound.set_inheritable(False)  # for the routers (fork), not for a re-exec
        relays.append(lst)
    return relays


def _remove_relays(arbiter, relays: list[sockets.Listener]) -> None:
    """On shutdown (not on a reload: the next image binds them again)."""
    if arbiter.state.mode != "stopping":
        return
    for lst in relays:
        with contextlib.suppress(OSError):
            os.unlink(lst.name)


def _remove_state_dir(arbiter, directory: str, name: str) -> None:
    """When the instance stops for good: a reload (an exec, closers never run) or a router
    respawn keeps the directory, whose snapshot carries the pools and the replay state."""
    if arbiter.state.mode != "stopping":
        return
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.startswith("relay-") or name.startswith("table.json"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log(f"[uwsgi-{name}] cannot remove the state directory {directory}: {exc.strerror}")


def stats_load(arbiter) -> int:
    from pymaster.master.control import listen_queue

    return sum(
        q
        for _, q in listen_queue(
            [lst for lst in arbiter.listeners if lst.kind in ("uwsgi", "http")]
        )
    )


def _attach_subscriber(arbiter, cfg: Config, listeners) -> None:
    from pymaster.master.subscriber import Subscriber

    own = [lst for lst in listeners if lst.kind in ("uwsgi", "http")]
    default_address = own[0].name if own else ""
    # cores announced: the workers (a router-only instance, processes 0, still counts 1)
    sub = Subscriber(cfg, default_address, max(1, cfg.processes), [lst.name for lst in own])
    if not cfg.start_unsubscribed:
        sub.start()

    def heartbeat(now: float) -> None:
        sub.set_load(stats_load(arbiter))  # the instance's listen backlog, as uWSGI sends
        sub.tick(now)

    arbiter.on_tick.append(heartbeat)
    arbiter.on_pause.append(lambda paused: sub.pause() if paused else sub.resume())
    arbiter.on_stop.append(
        lambda reloading: (
            None if reloading and not cfg.unsubscribe_on_graceful_reload else sub.unsubscribe()
        )
    )
    arbiter.subscriber = sub
