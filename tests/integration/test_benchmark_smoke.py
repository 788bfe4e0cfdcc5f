"""The benchmark harness itself runs end to end (against uWSGI only, so the check does
not depend on pymaster's numbers): one short wrk run per app, JSON written and sane."""

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
