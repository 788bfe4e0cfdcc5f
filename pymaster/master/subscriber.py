"""Subscription heartbeats sent by the master: `--subscribe-to`, `--subscribe2`.

Cadence as uWSGI 2.0.21: once at start, again 1 s later, then every `--subscribe-freq`
seconds counted from the start (t0, t0+1, t0+F, t0+2F, ...). Each datagram goes out on a
fresh non-blocking socket (UDP for `host:port`, unix datagram for a path) and is never
answered. Nothing here raises into the master loop: send errors are logged once per
destination per minute.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace

from pymaster.log import log, log_verbose
from pymaster.protocols.subscription import (
    SUBSCRIBE,
    UNSUBSCRIBE,
    SubscriptionError,
    Target,
    Throttle,
    build_packet,
    connect_address,
    expand_keys_file,
    parse_subscribe2,
    parse_subscribe_to,
    read_secret,
)


def _opt(cfg, name, default=None):
    value = getattr(cfg, name, default)
    return default if value is None else value


class Subscriber:
    """Announces this instance to routers. Used by the master loop only."""

    def __init__(self, cfg, default_address: str, cores: int, own_sockets: list[str] | None = None):
        self.cfg = cfg
        self.cores = max(1, int(cores or 1))
        self.load = 0
        self.freq = max(1, int(_opt(cfg, "subscribe_freq", 10)))
        weight = int(_opt(cfg, "weight", 0) or 0)
        if _opt(cfg, "auto_weight", False) not in (False, None, "", "false", "0", 0):
            weight = self.cores
        self.weight = weight
        self.notify = _opt(cfg, "subscription_notify_socket", None)
        self.force_m1 = _opt(cfg, "subscribe_with_modifier1", None)
        self.secret = None
        secret_file = _opt(cfg, "subscriptions_sign_secret", None)
        if secret_file:
            self.secret = read_secret(secret_file)  # a bad secret file is a startup error
        self.targets: list[Target] = []
        for value in _opt(cfg, "subscribe_to", []) or []:
            self.targets.append(parse_subscribe_to(value, default_address, own_sockets))
        for value in _opt(cfg, "subscribe2", []) or []:
            self.targets.append(parse_subscribe2(value, default_address, own_sockets))
        if self.force_m1 is not None:
            self.targets = [replace(t, modifier1=int(self.force_m1)) for t in self.targets]
        self.paused = bool(_opt(cfg, "start_unsubscribed", False))
        self.started = False
        self.t0 = 0.0
        self.next_due = float("inf")
        self.sent = 0
        self.errors = Throttle(60.0)
        self._addr_cache: dict[str, tuple] = {}

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

    def _resolve(self, server: str, now: float):
        cached = self._addr_cache.get(server)
        if cached is not None and now - cached[2] < 60:
            return cached[0], cached[1]
        family, addr = connect_address(server)
        if family != socket.AF_UNIX:
            info = socket.getaddrinfo(addr[0], addr[1], family, socket.SOCK_DGRAM)
            family, addr = info[0][0], info[0][4]
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
