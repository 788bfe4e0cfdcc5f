"""master/metrics.py on its own: Accept negotiation, escaping, and the exposition parsed
back by prometheus_client in both formats."""

from __future__ import annotations

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from pymaster.master import metrics


@pytest.mark.parametrize(
    "accept, expected",
    [
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", True),
        ("text/plain;version=0.0.4;q=0.5,*/*;q=0.1", False),
        ("application/openmetrics-text; q=0", False),
        ("application/openmetrics-text; q=x", False),
        ("APPLICATION/OPENMETRICS-TEXT", True),
        ("", False),
    ],
)
def test_openmetrics_only_when_asked(accept, expected):
    assert metrics.wants_openmetrics(accept) is expected


def families() -> list[metrics.Family]:
    c = metrics.Family("t_requests", "counter", 'help with \\ and\nnewline')
    c.add(3, worker="1", path='a "quoted" \\ value\nhere')
    g = metrics.Family("t_ratio", "gauge", "a float")
    g.add(0.25)
    g.add(float("inf"), kind="inf")
    return [c, g]


def test_text_format_round_trips():
    text = metrics.exposition(families()).decode()
    assert "# TYPE t_requests_total counter" in text and "# EOF" not in text
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = parsed["t_requests"].samples
    assert sample.name == "t_requests_total" and sample.value == 3
    assert sample.labels == {"worker": "1", "path": 'a "quoted" \\ value\nhere'}
    assert parsed["t_requests"].documentation == "help with \\ and\nnewline"
    assert [s.value for s in parsed["t_ratio"].samples] == [0.25, float("inf")]


def test_openmetrics_round_trips():
    text = metrics.exposition(families(), openmetrics=True).decode()
    assert text.endswith("# EOF\n") and "# TYPE t_requests counter" in text
    parsed = {f.name: f for f in openmetrics_families(text)}
    assert parsed["t_requests"].samples[0].value == 3
    assert parsed["t_ratio"].type == "gauge"


def test_router_families_from_a_router_document():
    doc = {
        "active_sessions": 2,
        "subscriptions": [
            {"key": "a.test", "hits": 7, "nodes": [
                {"name": "127.0.0.1:3031", "requests": 5, "failcnt": 1, "death_mark": 0,
                 "weight": 1, "load": 0, "ref": 2},
            ]},
        ],
        "static_nodes": [{"name": "127.0.0.1:4000", "hits": 4, "grace": 12}],
    }
    text = metrics.exposition(metrics.router_families(doc)).decode()
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(text) for s in f.samples}
    node = (("key", "a.test"), ("node", "127.0.0.1:3031"))
    assert found[("pymaster_fastrouter_up", ())] == 1
    assert found[("pymaster_fastrouter_pool_hits_total", (("key", "a.test"),))] == 7
    assert found[("pymaster_fastrouter_node_failures_total", node)] == 1
    assert found[("pymaster_fastrouter_node_active_connections", node)] == 2
    static = (("node", "127.0.0.1:4000"),)
    assert found[("pymaster_fastrouter_static_node_failing", static)] == 1
    down = metrics.exposition(metrics.router_families(None)).decode()
    assert down.strip().endswith("pymaster_fastrouter_up 0")
