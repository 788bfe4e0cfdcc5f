"""The benchmark harness itself runs end to end: against uWSGI only for the WSGI scenario
(so the check does not depend on pymaster's numbers), and the ASGI scenarios against every
ASGI server; short runs, JSON written and sane, no timing asserted."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.external import ROOT, have, uwsgi_plugin_available


@pytest.mark.skipif(not (have("wrk") and uwsgi_plugin_available("python3")),
                    reason="wrk or uWSGI python3 plugin not installed")
def test_benchmark_runs_against_uwsgi(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--duration", "1",
         "--connections", "4", "--warmup", "0", "--only", "http", "--servers", "uwsgi",
         "--output", str(out)],
        capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    results = report["results"]
    assert {r["app"] for r in results} == {"hello", "seed"}
    for r in results:
        assert "error" not in r, r["error"]
        assert r["server"] == "uwsgi" and r["scenario"] == "http"
        assert r["requests"] > 0 and r["rps"] > 0
        assert r["errors"] == 0, r
        assert r["master_rss_mb"] > 0
        assert 0 < r["server_cpu_us"] < 1e6  # CPU of the server's processes per request
        assert len(r["workers_uss_mb"]) == 2 and all(u > 0 for u in r["workers_uss_mb"])
    assert report["environment"]["uwsgi"].startswith("2.")
    assert "| http | hello | uwsgi |" in proc.stdout


def _importable(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


ASGI_SCENARIOS = ("asgi", "asgi-nginx", "asgi-ws")


@pytest.mark.skipif(not (have("wrk") and have("nginx")
                         and _importable("uvicorn", "gunicorn", "websockets", "uvloop")),
                    reason="wrk, nginx, uvicorn, gunicorn, websockets or uvloop not installed")
def test_benchmark_asgi_scenarios_run(tmp_path):
    """The ASGI scenarios end to end in a tiny run: the JSON app over HTTP and behind nginx
    (proxy_pass to a keep-alive upstream, and pymaster -s behind uwsgi_pass), the WebSocket
    echo through benchmarks/ws_load.py, against pymaster, uvicorn and gunicorn -k asgi."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--duration", "1",
         "--connections", "4", "--warmup", "0", "--only", ",".join(ASGI_SCENARIOS),
         "--apps", "json,echo", "--output", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    rows = {(r["scenario"], r["server"], r["via"]) for r in results}
    assert rows == {
        *{("asgi", s, "http") for s in ("pymaster", "uvicorn", "gunicorn")},
        *{("asgi-nginx", s, "nginx proxy_pass") for s in ("pymaster", "uvicorn", "gunicorn")},
        ("asgi-nginx", "pymaster", "nginx uwsgi_pass"),
        *{("asgi-ws", s, "websocket") for s in ("pymaster", "uvicorn", "gunicorn")},
        ("asgi-ws", "uvicorn", "websocket, uvicorn --ws wsproto"),
    }
    for r in results:
        assert "error" not in r, r["error"]
        assert r["app"] == ("echo" if r["scenario"] == "asgi-ws" else "json")
        assert r["requests"] > 0 and r["rps"] > 0
        assert r["errors"] == 0, r
        assert r["server_cpu_pct"] > 0 and r["server_cpu_us"] > 0
        assert len(r["workers_uss_mb"]) == 2 and all(u > 0 for u in r["workers_uss_mb"])
        if r["server"] != "pymaster":
            assert set(r["ratios"]) == {f"pymaster/{r['server']}"}
    ws = [r for r in results if r["scenario"] == "asgi-ws"]
    assert all(r["ws_load"]["size"] == 1024 and r["ws_load"]["errors_mismatch"] == 0 for r in ws)
    assert "| asgi-nginx | json | pymaster | nginx uwsgi_pass |" in proc.stdout
    assert "| asgi-ws | echo | uvicorn | websocket |" in proc.stdout
