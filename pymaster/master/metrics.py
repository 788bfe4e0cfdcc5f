"""Prometheus metrics: `GET /metrics` on the stats server (`--stats ADDR --stats-http`).

`render()` turns the stats document (uWSGI's JSON, `control.stats_document`), the master's
own state and, when a fastrouter runs, its stats document into the Prometheus text
exposition format 0.0.4, or OpenMetrics 1.0 when the scraper asks for it in `Accept`.
One source of truth: every figure here is a figure of the JSON that uwsgitop shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

WORKER_STATUSES = ("idle", "busy", "cheap", "pause")
MASTER_STATES = ("running", "reloading", "stopping")

Labels = dict[str, str]


class Family:
    """One metric family: name (a counter's without `_total`), type, help, samples."""

    __slots__ = ("name", "kind", "help", "samples")

    def __init__(self, name: str, kind: str, help: str):
        self.name = name
        self.kind = kind
        self.help = help
        self.samples: list[tuple[Labels, float]] = []

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))


def wants_openmetrics(accept: str) -> bool:
    """True when the `Accept` header asks for OpenMetrics (Prometheus sends it first, with
    the text format as a lower-quality fallback)."""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() != "application/openmetrics-text":
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            return True
    return False


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def exposition(families: Iterable[Family], openmetrics: bool = False) -> bytes:
    """The families as text: HELP and TYPE lines, then the samples (counters get `_total`)."""
    out: list[str] = []
    for fam in families:
        sample_name = fam.name + "_total" if fam.kind == "counter" else fam.name
        head_name = fam.name if openmetrics else sample_name
        help_text = fam.help.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {head_name} {help_text}")
        out.append(f"# TYPE {head_name} {fam.kind}")
        for labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                out.append(f"{sample_name}{{{inner}}} {_number(value)}")
            else:
                out.append(f"{sample_name} {_number(value)}")
    if openmetrics:
        out.append("# EOF")
    return ("\n".join(out) + "\n").encode()


def instance_families(doc: dict, master: dict) -> list[Family]:
    """The master, its sockets and its workers, from the stats document `doc` and `master`
    (`state`, `start_time`, `processes`)."""
    fams = {}

    def fam(name: str, kind: str, help: str) -> Family:
        fams[name] = Family("pymaster_" + name, kind, help)
        return fams[name]

    fam("build_info", "gauge", "pymaster version (always 1)").add(1, version=doc["version"])
    fam("master_pid", "gauge", "process id of the master").add(doc["pid"])
    fam("master_start_time_seconds", "gauge", "when the master process started (epoch)").add(
        master["start_time"]
    )
    state = fam("master_state", "gauge", "the master's state (1 for the current one)")
    for name in MASTER_STATES:
        state.add(int(master["state"] == name), state=name)
    fam("master_paused", "gauge", "1 while the workers are paused (fifo p / SIGTSTP)").add(
        int(master.get("paused", False))
    )
    fam("workers_configured", "gauge", "worker slots (--processes, with SIGTTIN/TTOU)").add(
        master["processes"]
    )
    queue = fam("listen_queue", "gauge", "connections waiting in the socket's backlog")
    queue_max = fam("listen_queue_max", "gauge", "the socket's backlog size (--listen)")
    for sock in doc["sockets"]:
        queue.add(sock["queue"], socket=sock["name"], proto=sock["proto"])
        queue_max.add(sock["max_queue"], socket=sock["name"], proto=sock["proto"])

    per_worker = (
        ("requests", "counter", "requests served by the worker since it was spawned", "requests"),
        (
            "exceptions",
            "counter",
            "requests whose app raised, since the worker was spawned",
            "exceptions",
        ),
        ("harakiri", "counter", "times the worker was killed by --harakiri", "harakiri_count"),
        (
            "respawns",
            "counter",
            "times the worker slot was spawned (1 for the first spawn)",
            "respawn_count",
        ),
        ("transmitted_bytes", "counter", "response bytes sent, head and body (uWSGI's tx)", "tx"),
        ("rss_bytes", "gauge", "resident memory of the worker", "rss"),
        ("vsz_bytes", "gauge", "address space of the worker", "vsz"),
        ("pid", "gauge", "process id of the worker (0 while cheaped)", "pid"),
        ("accepting", "gauge", "1 when the worker accepts requests", "accepting"),
        (
            "last_spawn_time_seconds",
            "gauge",
            "when the worker was last spawned (epoch)",
            "last_spawn",
        ),
    )
    worker_fams = [(fam("worker_" + name, kind, help), key) for name, kind, help, key in per_worker]
    busy = fam("worker_busy", "gauge", "1 while the worker runs a request")
    status = fam(
        "worker_status", "gauge", "the worker's status as uwsgitop shows it (1 for the current one)"
    )
    avg = fam(
        "worker_average_response_time_seconds", "gauge", "moving average of the response time"
    )
    running = fam(
        "worker_running_time_seconds", "counter", "time spent in requests since the spawn"
    )
    for w in doc["workers"]:
        wid = str(w["id"])
        for family, key in worker_fams:
            family.add(w[key], worker=wid)
        busy.add(int(w["status"] == "busy"), worker=wid)
        for name in WORKER_STATUSES:
            status.add(int(w["status"] == name), worker=wid, status=name)
        avg.add(w["avg_rt"] / 1e6, worker=wid)
        running.add(w["running_time"] / 1e6, worker=wid)
    return list(fams.values())


def router_families(router: dict | None) -> list[Family]:
    """The fastrouter's pools and nodes from its stats document (None: it did not answer)."""
    up = Family("pymaster_fastrouter_up", "gauge", "1 when the fastrouter's stats were read")
    up.add(int(router is not None))
    fams = [up]
    if router is None:
        return fams
    sessions = Family("pymaster_fastrouter_active_sessions", "gauge", "connections being routed")
    sessions.add(router.get("active_sessions", 0))
    nodes = Family(
        "pymaster_fastrouter_pool_nodes", "gauge", "nodes in the pool (subscription key)"
    )
    hits = Family("pymaster_fastrouter_pool_hits", "counter", "requests routed to the pool's key")
    node_fams = (
        (
            Family("pymaster_fastrouter_node_requests", "counter", "requests sent to the node"),
            "requests",
        ),
        (
            Family(
                "pymaster_fastrouter_node_failures",
                "counter",
                "failed connects to the node (while it is in the pool)",
            ),
            "failcnt",
        ),
        (
            Family("pymaster_fastrouter_node_dead", "gauge", "1 once the node is marked failed"),
            "death_mark",
        ),
        (
            Family("pymaster_fastrouter_node_weight", "gauge", "the node's announced weight"),
            "weight",
        ),
        (Family("pymaster_fastrouter_node_load", "gauge", "the node's announced load"), "load"),
        (
            Family(
                "pymaster_fastrouter_node_active_connections",
                "gauge",
                "connections to the node now",
            ),
            "ref",
        ),
    )
    for pool in router.get("subscriptions", []):
        key = str(pool["key"])
        nodes.add(len(pool["nodes"]), key=key)
        hits.add(pool["hits"], key=key)
        for node in pool["nodes"]:
            for family, field in node_fams:
                family.add(node[field], key=key, node=str(node["name"]))
    static_hits = Family(
        "pymaster_fastrouter_static_node_requests",
        "counter",
        "requests sent to the --fastrouter-to node",
    )
    static_grace = Family(
        "pymaster_fastrouter_static_node_failing",
        "gauge",
        "1 while the node is skipped after a failed connect",
    )
    for node in router.get("static_nodes", []):
        static_hits.add(node["hits"], node=str(node["name"]))
        static_grace.add(int(node["grace"] > 0), node=str(node["name"]))
    fams += [sessions, nodes, hits, *(f for f, _ in node_fams)]
    if router.get("static_nodes"):
        fams += [static_hits, static_grace]
    return fams


def render(
    doc: dict, master: dict, router: dict | None, with_router: bool, openmetrics: bool
) -> bytes:
    families = instance_families(doc, master)
    if with_router:
        families += router_families(router)
    return exposition(families, openmetrics)
