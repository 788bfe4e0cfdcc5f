"""Attach what else the master runs besides workers: fastrouter children, subscriptions."""

from __future__ import annotations


def attach(arbiter, cfg, listeners) -> None:
    """Add gateway children and subscription heartbeats to `arbiter` as configured."""
    if getattr(cfg, "fastrouter", None):
        _attach_fastrouter(arbiter, cfg, listeners)
    if getattr(cfg, "subscribe_to", None) or getattr(cfg, "subscribe2", None):
        _attach_subscriber(arbiter, cfg, listeners)


def _attach_fastrouter(arbiter, cfg, listeners) -> None:
    from pymaster.routers import fastrouter

    front = [lst for lst in listeners if lst.kind == "fastrouter"]
    subs = [lst for lst in listeners if lst.kind == "subscription"]
    mine = {id(lst) for lst in front + subs}

    def target(child):
        for lst in listeners:
            if id(lst) not in mine:
                lst.sock.close()
        from pymaster import procname

        procname.set_title(cfg, child.title)
        fastrouter.run(
            cfg, [lst.sock for lst in front], [lst.sock for lst in subs], None, child.number
        )

    for _ in range(max(1, getattr(cfg, "fastrouter_processes", 1) or 1)):
        arbiter.add("fastrouter", target)


def stats_load(arbiter) -> int:
    from pymaster.master.control import listen_queue

    return sum(
        q
        for _, q in listen_queue(
            [lst for lst in arbiter.listeners if lst.kind in ("uwsgi", "http")]
        )
    )


def _attach_subscriber(arbiter, cfg, listeners) -> None:
    from pymaster.master.subscriber import Subscriber

    own = [lst for lst in listeners if lst.kind in ("uwsgi", "http")]
    default_address = own[0].name if own else ""
    cores = max(1, cfg.processes or 1)
    sub = Subscriber(cfg, default_address, cores, [lst.name for lst in own])
    if not getattr(cfg, "start_unsubscribed", False):
        sub.start()

    def heartbeat(now: float) -> None:
        sub.set_load(stats_load(arbiter))  # the instance's listen backlog, as uWSGI sends
        sub.tick(now)

    arbiter.on_tick.append(heartbeat)
    arbiter.on_pause.append(lambda paused: sub.pause() if paused else sub.resume())
    arbiter.on_stop.append(
        lambda reloading: (
            None
            if reloading and not getattr(cfg, "unsubscribe_on_graceful_reload", False)
            else sub.unsubscribe()
        )
    )
    arbiter.subscriber = sub
