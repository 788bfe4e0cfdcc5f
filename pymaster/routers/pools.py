"""The subscription table of a router: key -> pool of nodes, uWSGI 2.0's weighted round robin,
expiry, death marks, access control, signing checks, stats and persistence.

Single-threaded: one `Table` per router process, driven by its event loop. Nothing here does
network I/O; `handle_datagram` never raises (hostile datagrams are logged, throttled, and
dropped). Log lines follow uWSGI's wording (`[uwsgi-subscription for pid N] ...`).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable

from pymaster.log import log as _default_log
from pymaster.protocols.subscription import (
    Announcement,
    SubscriptionError,
    Throttle,
    parse_packet,
    verify,
)

DEFAULT_TOLERANCE = 17
STATIC_GRACETIME = 30


def djb33x_hash(key: str) -> int:
    """uWSGI's slot hash, as shown in the stats `hash` field (bucket = hash % 0xffff)."""
    value = 5381
    for byte in key.encode("latin-1", "replace"):
        value = (((value << 5) + value) ^ byte) & 0xFFFFFFFF
    return value % 0xFFFF


class Node:
    """One backend address in a pool (or a static --fastrouter-to node)."""

    __slots__ = (
        "name",
        "modifier1",
        "modifier2",
        "last_check",
        "requests",
        "last_requests",
        "tx",
        "rx",
        "cores",
        "load",
        "weight",
        "wrr",
        "ref",
        "failcnt",
        "death_mark",
        "notify",
        "grace_until",
    )

    def __init__(
        self,
        name: str,
        modifier1: int = 0,
        modifier2: int = 0,
        now: float = 0.0,
        cores: int = 0,
        load: int = 0,
        weight: int = 1,
    ):
        self.name = name
        self.modifier1 = modifier1
        self.modifier2 = modifier2
        self.last_check = now
        self.requests = self.last_requests = self.tx = self.rx = 0
        self.cores, self.load = cores, load
        self.weight = weight or 1
        self.wrr = self.ref = self.failcnt = self.death_mark = 0
        self.notify: str | None = None
        self.grace_until = 0.0

    def stats(self) -> dict:
        return {
            "name": self.name,
            "modifier1": self.modifier1,
            "modifier2": self.modifier2,
            "last_check": int(self.last_check),
            "pid": 0,
            "uid": 0,
            "gid": 0,
            "requests": self.requests,
            "last_requests": self.last_requests,
            "tx": self.tx,
            "rx": self.rx,
            "cores": self.cores,
            "load": self.load,
            "weight": self.weight,
            "wrr": self.wrr,
            "ref": self.ref,
            "failcnt": self.failcnt,
            "death_mark": self.death_mark,
        }

    def __repr__(self) -> str:
        return f"<Node {self.name} m1={self.modifier1} w={self.weight} dead={self.death_mark}>"


class Pool:
    __slots__ = ("key", "hash", "hits", "nodes")

    def __init__(self, key: str):
        self.key = key
        self.hash = djb33x_hash(key)
        self.hits = 0
        self.nodes: list[Node] = []

    def find(self, address: str) -> Node | None:
        for node in self.nodes:
            if node.name == address:
                return node
        return None


def wrr_pick(nodes: list[Node]) -> Node | None:
    """uWSGI 2.0's weighted round robin over `nodes` (list order), skipping dead ones:
    the first live node with credit is chosen; when none has credit every live node gets
    weight // min_weight and the LAST live node is chosen."""
    live = [n for n in nodes if not n.death_mark]
    if not live:
        return None
    for node in live:
        if node.wrr > 0:
            node.wrr -= 1
            return node
    low = min(n.weight for n in live)
    for node in live:
        node.wrr = node.weight // low
    node = live[-1]
    node.wrr -= 1
    return node


def parse_allow(entries) -> list:
    """`--subscription-allow` values (CIDRs or addresses, comma/space separated too)."""
    nets = []
    for entry in entries or []:
        for item in str(entry).replace(",", " ").split():
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise SubscriptionError(
                    f"invalid --subscription-allow value {item!r} "
                    f"(expected an address or CIDR, e.g. 10.0.0.0/8)"
                ) from None
    return nets


class Table:
    """key -> Pool, fed by subscription datagrams."""

    def __init__(
        self,
        tolerance: float = DEFAULT_TOLERANCE,
        secret: bytes | None = None,
        allow=(),
        pid: int | None = None,
        log: Callable[[str], None] | None = None,
        notify_send: Callable[[str, bytes], None] | None = None,
    ):
        self.pools: dict[str, Pool] = {}
        # taken as given, 0 too: uWSGI has no default for 0 (a node then expires at once)
        self.tolerance = tolerance
        self.secret = secret
        self.allow = list(allow)
        self.pid = pid or os.getpid()
        self.log = log if log is not None else _default_log
        self.label = "fastrouter"  # the router's name in log lines (`[uwsgi-http]` ...)
        self.sni: dict[str, tuple[str, str]] = {}  # key -> (certificate, key), see _set_sni
        self.sni_refused = 0
        self.notify_send = notify_send
        self.throttle = Throttle(60.0)
        # replay state: (key, address) -> (last accepted `unix`, when it was accepted);
        # persisted with the pools (dump/restore) so a router restart does not forget it
        self.last_unix: dict[tuple[str, str], tuple[float, float]] = {}
        self.dirty = False
        self.urgent = False  # a signed membership change: persist it now, not within 1 s
        self.accepted = self.rejected = 0

    # ------------------------------------------------------------------ intake
    def _prefix(self) -> str:
        return f"[uwsgi-subscription for pid {self.pid}]"

    def _reject(self, source, reason: str, now: float, kind: str = "malformed") -> None:
        self.rejected += 1
        who = source[0] if isinstance(source, tuple) else (source or "unix socket")
        if self.throttle.ok((who, kind), now):
            self.log(
                f"{self._prefix()} rejected subscription datagram from {who}: {reason} "
                f"(logged once a minute per source)"
            )

    def source_allowed(self, source) -> bool:
        if not self.allow or not isinstance(source, tuple):
            return True  # unix datagram sockets are guarded by file permissions
        try:
            ip = ipaddress.ip_address(source[0].split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)

    def handle_datagram(
        self, data: bytes, source=None, now: float | None = None, check_source: bool = True
    ) -> Announcement | None:
        """Apply one datagram; return it when accepted, None when dropped. Never raises."""
        now = time.time() if now is None else now
        try:
            if check_source and not self.source_allowed(source):
                self._reject(source, "source not in --subscription-allow", now, "allow")
                return None
            ann = parse_packet(data)
            fresh = False
            if self.secret is not None:
                reason = verify(ann, self.secret, now, self.tolerance)
                if reason is None and ann.unix is not None:  # verified: it is signed
                    ident = (ann.key, ann.address)
                    prev = self.last_unix.get(ident)
                    if prev is not None and ann.unix <= prev[0]:
                        if not check_source:
                            # a sibling's relayed copy of what a restored snapshot already
                            # holds (the relay sockets are private): a duplicate, not an attack
                            return None
                        reason = "replayed signature"
                    else:
                        self.last_unix[ident] = (ann.unix, now)
                        self.dirty = True
                        fresh = not ann.subscribe or self._is_new(ann.key, ann.address)
                if reason is not None:
                    self._reject(
                        source,
                        f"invalid (sniffed ?) packet for slot {ann.key!r}: {reason}",
                        now,
                        reason.split(" (")[0],
                    )
                    return None
            self.apply(ann, now)
            self.accepted += 1
            self.urgent = self.urgent or fresh
            return ann
        except SubscriptionError as exc:
            self._reject(source, str(exc), now)
        except Exception as exc:  # a bug must not kill the router
            self._reject(source, f"internal error {exc!r}", now)
        return None

    def _set_sni(self, ann: Announcement) -> None:
        """sni_crt / sni_key of a subscription: the HTTPS router presents that certificate
        for the key. Only from signed subscriptions (the router would read files a datagram
        names); else logged and ignored."""
        sni = dict(ann.sni)
        if self.secret is None:
            self.sni_refused += 1
            if self.sni_refused == 1:
                self.log(
                    f"{self._prefix()} sni_* of {ann.key!r} ignored: SNI certificates come "
                    "only from signed subscriptions (--subscriptions-sign-secret)"
                )
            return
        if "sni_crt" in sni and "sni_key" in sni:
            self.sni[ann.key] = (sni["sni_crt"], sni["sni_key"])

    def _is_new(self, key: str, address: str) -> bool:
        pool = self.pools.get(key)
        node = pool.find(address) if pool is not None else None
        return node is None or bool(node.death_mark)

    def apply(self, ann: Announcement, now: float) -> None:
        if ann.subscribe and ann.sni:
            self._set_sni(ann)
        if ann.subscribe:
            self.subscribe(
                ann.key,
                ann.address,
                ann.modifier1,
                ann.modifier2,
                ann.cores,
                ann.load,
                ann.weight,
                now,
                ann.notify,
            )
        else:
            self.unsubscribe(ann.key, ann.address)

    # ------------------------------------------------------------------ membership
    def subscribe(
        self,
        key: str,
        address: str,
        modifier1: int = 0,
        modifier2: int = 0,
        cores: int = 0,
        load: int = 0,
        weight: int = 0,
        now: float | None = None,
        notify: str | None = None,
    ) -> Node:
        now = time.time() if now is None else now
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(key)
            self.log(f"{self._prefix()} new pool: {key} (hash key: {pool.hash})")
        node = pool.find(address)
        if node is None:
            node = Node(address, modifier1, modifier2, now, cores, load, weight)
            node.notify = notify
            pool.nodes.append(node)
            self.dirty = True
            self.log(f"{self._prefix()} {key} => new node: {address}")
            if notify and self.notify_send is not None:
                self.notify_send(
                    notify,
                    f"[subscription ack] {key} => new node: {address}".encode("latin-1", "replace"),
                )
        else:
            node.death_mark = 0
            node.last_check = now
            node.cores, node.load, node.weight = cores, load, weight or 1
            node.last_requests = 0
        return node

    def _drop(self, pool: Pool, node: Node) -> None:
        if node in pool.nodes:
            pool.nodes.remove(node)
            self.dirty = True
        if not pool.nodes and self.pools.get(pool.key) is pool:
            del self.pools[pool.key]
            self.sni.pop(pool.key, None)

    def _mark(self, pool: Pool, node: Node, why: str = "") -> None:
        if not node.death_mark:
            self.log(f"{self._prefix()} {pool.key} => marking {node.name} as failed{why}")
        node.failcnt += 1
        node.death_mark = 1
        if node.ref <= 0:
            self._drop(pool, node)

    def unsubscribe(self, key: str, address: str) -> bool:
        pool = self.pools.get(key)
        node = pool.find(address) if pool else None
        if pool is None or node is None:
            return False
        self._mark(pool, node)
        return True

    def _expire_pool(self, pool: Pool, now: float) -> None:
        limit = self.tolerance
        for node in list(pool.nodes):
            if not node.death_mark and now - node.last_check > limit:
                self._mark(pool, node, f" (no announce received in {int(limit)} seconds)")

    def expire(self, now: float | None = None) -> None:
        """Mark and drop every node not heard from within the tolerance; run every tick."""
        now = time.time() if now is None else now
        for pool in list(self.pools.values()):
            self._expire_pool(pool, now)
        if self.last_unix and len(self.last_unix) > 64:
            self.last_unix = {
                k: v for k, v in self.last_unix.items() if now - v[1] <= 2 * self.tolerance
            }

    def replay_state(self, now: float) -> list[list]:
        """[key, address, unix] of every last-seen signature that can still matter: one
        older than the tolerance is refused as stale anyway."""
        return [
            [key, address, unix]
            for (key, address), (unix, _seen) in self.last_unix.items()
            if unix >= now - self.tolerance
        ]

    # ------------------------------------------------------------------ routing
    def pick(self, key: str, now: float | None = None) -> Node | None:
        """Choose a node for `key` (wrr) and take a reference on it; None if no live node."""
        pool = self.pools.get(key)
        if pool is None:
            return None
        pool.hits += 1
        self._expire_pool(pool, time.time() if now is None else now)
        node = wrr_pick(pool.nodes)
        if node is not None:
            node.ref += 1
        return node

    def connected(self, node: Node) -> None:
        node.requests += 1
        node.last_requests += 1

    def fail(self, key: str, node: Node) -> None:
        """A connect to `node` failed: death mark (it goes once unreferenced)."""
        pool = self.pools.get(key)
        if pool is not None and node in pool.nodes:
            if not node.death_mark:
                self.log(f"[uwsgi-{self.label}] {key} => marking {node.name} as failed")
            node.failcnt += 1
            node.death_mark = 1

    def release(self, key: str, node: Node) -> None:
        node.ref = max(0, node.ref - 1)
        if node.death_mark and node.ref == 0:
            pool = self.pools.get(key)
            if pool is not None:
                self._drop(pool, node)

    # ------------------------------------------------------------------ stats / persistence
    def snapshot(self) -> list[dict]:
        return [
            {
                "key": p.key,
                "hash": p.hash,
                "hits": p.hits,
                "sni_enabled": int(p.key in self.sni),
                "nodes": [n.stats() for n in p.nodes],
            }
            for p in self.pools.values()
        ]

    def dump(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        return {
            "format": "pymaster-subscriptions-1",
            "saved": now,
            "pools": [
                {
                    "key": p.key,
                    "hits": p.hits,
                    "nodes": [
                        {
                            "name": n.name,
                            "modifier1": n.modifier1,
                            "modifier2": n.modifier2,
                            "last_check": n.last_check,
                            "cores": n.cores,
                            "load": n.load,
                            "weight": n.weight,
                            "requests": n.requests,
                            "failcnt": n.failcnt,
                        }
                        for n in p.nodes
                        if not n.death_mark
                    ],
                }
                for p in self.pools.values()
            ],
            "replay": self.replay_state(now),
        }

    def restore_replay(self, doc: dict, now: float | None = None) -> int:
        """Load the last-seen signature timestamps of `dump()` output (whatever the age of
        the pools); the newer one wins where this table already has one. Returns how many."""
        now = time.time() if now is None else now
        if not isinstance(doc, dict) or doc.get("format") != "pymaster-subscriptions-1":
            return 0
        count = 0
        entries = doc.get("replay")
        for entry in entries if isinstance(entries, list) else []:
            try:
                key, address, unix = entry
                unix = float(unix)
            except (TypeError, ValueError):
                continue
            if not isinstance(key, str) or not isinstance(address, str) or unix != unix:
                continue
            if unix < now - self.tolerance:
                continue  # stale: refused by the signature check anyway
            prev = self.last_unix.get((key, address))
            if prev is None or prev[0] < unix:
                self.last_unix[(key, address)] = (unix, now)
                count += 1
        return count

    def restore(self, doc: dict, now: float | None = None) -> int:
        """Load nodes from `dump()` output that are still within the tolerance."""
        now = time.time() if now is None else now
        count = 0
        if not isinstance(doc, dict) or doc.get("format") != "pymaster-subscriptions-1":
            return 0
        for p in doc.get("pools") or []:
            key = p.get("key")
            if not isinstance(key, str) or not key:
                continue
            for n in p.get("nodes") or []:
                try:
                    last = float(n["last_check"])
                    if now - last > self.tolerance or last > now + 5:
                        continue
                    pool = self.pools.get(key)
                    if pool is not None and pool.find(n["name"]):
                        continue
                    if pool is None:
                        pool = self.pools[key] = Pool(key)
                        pool.hits = int(p.get("hits", 0))
                    node = Node(
                        str(n["name"]),
                        int(n["modifier1"]) & 0xFF,
                        int(n["modifier2"]) & 0xFF,
                        last,
                        int(n.get("cores", 0)),
                        int(n.get("load", 0)),
                        int(n.get("weight", 1)),
                    )
                    node.requests = int(n.get("requests", 0))
                    node.failcnt = int(n.get("failcnt", 0))
                    pool.nodes.append(node)
                    count += 1
                except (KeyError, TypeError, ValueError):
                    continue
        return count


class StaticNodes:
    """`--fastrouter-to` / `--http-to` nodes: plain round robin; a failed node is skipped for 30 s."""

    def __init__(self, addresses, gracetime: float = STATIC_GRACETIME):
        self.nodes = [Node(a) for a in addresses]
        self.gracetime = gracetime
        self.next = 0

    def pick(self, now: float | None = None) -> Node | None:
        now = time.time() if now is None else now
        for _ in range(len(self.nodes)):
            node = self.nodes[self.next % len(self.nodes)]
            self.next += 1
            if node.grace_until <= now:
                node.ref += 1
                return node
        return None

    def fail(self, node: Node, now: float | None = None) -> None:
        node.failcnt += 1
        node.grace_until = (time.time() if now is None else now) + self.gracetime

    def snapshot(self) -> list[dict]:
        now = time.time()
        return [
            {"name": n.name, "hits": n.requests, "grace": max(0, int(n.grace_until - now))}
            for n in self.nodes
        ]
