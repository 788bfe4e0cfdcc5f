"""Subscription heartbeats sent by the master: `--subscribe-to`, `--subscribe2`.

Cadence as uWSGI 2.0.21: once at start, again 1 s later, then every `--subscribe-freq`
seconds counted from the start (t0, t0+1, t0+F, t0+2F, ...). Each datagram goes out on a
fresh non-blocking socket (UDP for `host:port` / `[v6]:port`, unix datagram for a path) and
is never answered; server names are resolved by `pymaster.protocols.address` (cached for a
minute), the announced address is sent as given. Bad configuration raises
`SubscriptionError` from the constructor; after that nothing here raises into the master
loop: send errors are logged once per destination per minute.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace

from pymaster.config import Config
from pymaster.log import log, log_verbose
from pymaster.protocols.address import SockAddr
from pymaster.protocols.address import parse as parse_address
from pymaster.protocols.subscription import (
    SUBSCRIBE,
    UNSUBSCRIBE,
    SubscriptionError,
    Target,
    Throttle,
    build_packet,
    expand_keys_file,
    parse_subscribe2,
    parse_subscribe_to,
    read_secret,
)


class Subscriber:
    """Announces this instance to routers. Used by the master loop only."""

    def __init__(
        self, cfg: Config, default_address: str, cores: int, own_sockets: list[str] | None = None
    ):
        self.cfg = cfg
        self.cores = max(1, cores)
        self.load = 0
        self.freq = cfg.subscribe_freq  # >= 1 (the table refuses 0: uWSGI divides by it)
        self.weight = self.cores if cfg.auto_weight else cfg.weight
        self.notify: str | None = cfg.subscription_notify_socket
        self.secret = None
        if cfg.subscriptions_sign_secret is not None:
            self.secret = read_secret(cfg.subscriptions_sign_secret)  # bad file: startup error
        self.targets: list[Target] = []
        for value in cfg.subscribe_to:
            self.targets.append(parse_subscribe_to(value, default_address, own_sockets))
        for value in cfg.subscribe2:
            self.targets.append(parse_subscribe2(value, default_address, own_sockets))
        forced = cfg.subscribe_with_modifier1  # 0-255 (the table checks it)
        if forced is not None:  # as uWSGI (it tests the string), 0 forces 0 too
            self.targets = [replace(t, modifier1=forced) for t in self.targets]
        self.paused = cfg.start_unsubscribed
        self.started = False
        self.t0 = 0.0
        self.next_due = float("inf")
        self.sent = 0
        self.errors = Throttle(60.0)
        self._addr_cache: dict[str, tuple[int, SockAddr, float]] = {}

    # ------------------------------------------------------------------ master API
    def start(self, now: float | None = None) -> None:
        """Announce now (logging each entry and what it parsed to); schedule heartbeats."""
        now = time.time() if now is None else now
        self.started = True
        self.paused = False
        for target in self.targets:
            log_verbose(f"subscribing to {target.value}")
            log(f"subscription {target.value!r}: {target.describe()}")
            if target.rsa_sign:
                log(
                    f"subscription {target.value!r}: uWSGI RSA signing ({target.rsa_sign}) is "
                    f"not supported; use --subscriptions-sign-secret FILE"
                )
        self._send_all(SUBSCRIBE, now)
        self.t0 = now
        self.next_due = now + 1

    def tick(self, now: float | None = None) -> None:
        """Call every master tick; sends only when a heartbeat is due."""
        if now is None:
            now = time.time()
        if now < self.next_due or self.paused or not self.started:
            return
        self._send_all(SUBSCRIBE, now)
        periods = int((now - self.t0) // self.freq) + 1
        self.next_due = self.t0 + periods * self.freq
        if self.next_due <= now:  # clock jumped: re-anchor
            self.t0, self.next_due = now, now + self.freq

    def unsubscribe(self, now: float | None = None) -> None:
        """Tell every router to drop us (shutdown, brutal reload, pause)."""
        if not self.started:
            return
        for target in self.targets:
            log_verbose(f"unsubscribing from {target.value}")
        self._send_all(UNSUBSCRIBE, time.time() if now is None else now)

    def pause(self) -> None:
        if not self.paused:
            self.unsubscribe()
            self.paused = True
            log_verbose("subscriptions blocked")

    def resume(self) -> None:
        if self.paused or not self.started:
            log_verbose("subscriptions re-enabled")
            self.start()

    def toggle(self) -> None:
        """Master FIFO `S`: block / re-enable subscriptions."""
        if self.paused or not self.started:
            self.resume()
        else:
            self.pause()

    def set_load(self, n: int) -> None:
        self.load = max(0, int(n))

    # ------------------------------------------------------------------ sending
    def _expanded(self, now: float) -> list[Target]:
        out = []
        for target in self.targets:
            if target.check and os.path.exists(target.check):
                continue  # subscribe2 check=FILE: skipped while it exists
            if target.keys_file:
                try:
                    out += expand_keys_file(target)
                except (OSError, SubscriptionError) as exc:
                    if self.errors.ok(("file", target.keys_file), now):
                        log(
                            f"subscription {target.value!r}: cannot read keys from "
                            f"{target.keys_file}: {exc}"
                        )
            else:
                out.append(target)
        return out

    def packets(self, cmd: int, now: float | None = None) -> list[tuple[str, bytes]]:
        """(server, datagram) for every announcement due now."""
        now = time.time() if now is None else now
        out = []
        for t in self._expanded(now):
            weight = self.weight if t.weight is None else t.weight
            try:
                data = build_packet(
                    cmd,
                    t.key,
                    t.address,
                    t.modifier1,
                    t.modifier2,
                    self.cores,
                    self.load,
                    weight,
                    t.extra,
                    self.notify,
                    self.secret,
                    now,
                )
            except SubscriptionError as exc:
                if self.errors.ok(("build", t.value), now):
                    log(f"subscription {t.value!r}: {exc}")
                continue
            out.append((t.server, data))
        return out

    def _send_all(self, cmd: int, now: float) -> None:
        for server, data in self.packets(cmd, now):
            self._send(server, data, now)

    def _resolve(self, server: str, now: float) -> tuple[int, SockAddr]:
        cached = self._addr_cache.get(server)
        if cached is not None and now - cached[2] < 60:
            return cached[0], cached[1]
        target = parse_address(server, "subscription server")
        family, addr = target.resolve(socket.SOCK_DGRAM)
        self._addr_cache[server] = (family, addr, now)
        return family, addr

    def _send(self, server: str, data: bytes, now: float) -> None:
        try:
            family, addr = self._resolve(server, now)
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(data, addr)
            self.sent += 1
        except (OSError, ValueError) as exc:
            self._addr_cache.pop(server, None)
            if self.errors.ok(("send", server), now):
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                log(f"send_subscription()/sendto() to {server}: {reason} (logged once a minute)")
