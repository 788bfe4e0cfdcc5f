"""The demo as a visitor sees it: `pymaster --emperor etc/demo` (the very files
scripts/demo.sh runs, on their fixed ports 4000-4007 and 8080) and Debian's chromium,
headless, driven by Playwright, through the frontend vassal's HTTP router: the landing
page, its links to /psgi/ and /wsgi/, the seed's pictures loaded through /static, and the
PID of the backend worker changing on reload until every node of each cluster has
answered. A screenshot of the landing page is saved in the test's tmp dir (and copied to
$DEMO_SCREENSHOT when set: that is how docs/demo.png is made).

Skipped, with the reason, when chromium or Playwright is missing or a demo port is taken.
The Emperor gets SIGTERM if the test process dies (PR_SET_PDEATHSIG), its vassals die with
it, and the test checks that none of its processes is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.pm import ROOT, Pymaster

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (pip playwright) missing")

CHROMIUM = "/usr/bin/chromium"
BASE = "http://127.0.0.1:8080"
TCP_PORTS = (8080, *range(4000, 4008))
STATS = "\0pymaster-demo-fastrouter-stats"  # etc/demo/fastrouter.ini: fastrouter-stats
CLUSTERS = {"psgi": ("psgi_cluster", "hokkaidopm.gif"), "wsgi": ("wsgi_cluster", "python.png")}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-proxy-server"]
TIMEOUT = 90.0

pytestmark = [
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"{CHROMIUM} missing (Debian's chromium package)"),
    pytest.mark.skipif(not shutil.which("plackup"), reason="plackup (libplack-perl) missing: the PSGI backends need it"),
]


def taken_ports() -> list[str]:
    """The demo's fixed addresses that something else holds right now."""
    taken = []
    for port in TCP_PORTS:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                taken.append(f"tcp {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", 4001))
        except OSError:
            taken.append("udp 4001")
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.bind(STATS)
        except OSError:
            taken.append("@" + STATS[1:])
    return taken


def die_with_parent() -> None:
    """In the Emperor's child before exec: SIGTERM (its graceful Ragnarok) when we die."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def vassal_of(pid: int) -> str:
    """The vassal (`psgi-4002`, ...) whose master is the parent of worker `pid`."""
    title = " ".join(psutil.Process(pid).parent().cmdline())
    found = re.search(r"\[demo ([\w-]+)\]", title)
    return found[1] if found else title


@pytest.fixture
def demo(tmp_path):
    """The Emperor on etc/demo, up with all six nodes subscribed; everything gone after."""
    taken = taken_ports()
    if taken:
        pytest.skip(f"the demo's fixed addresses are in use ({', '.join(taken)}): "
                    "is a demo already running?")
    emperor = Pymaster(["--emperor", ROOT / "etc" / "demo", "--emperor-freq", "1"], tmp_path,
                       preexec_fn=die_with_parent)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + TIMEOUT
        log = ""
        while time.monotonic() < deadline:
            seen.update((p.pid, p) for p in tree(emperor.pid))
            log = emperor.log()
            if (emperor.proc.poll() is not None
                    or (log.count("psgi_cluster => new node") >= 3
                        and log.count("wsgi_cluster => new node") >= 3
                        and log.count("is ready to accept requests") >= 8)):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the demo did not come up in {TIMEOUT} s:\n{log[-4000:]}")
        assert emperor.proc.poll() is None, f"the Emperor exited:\n{log[-4000:]}"
        seen.update((p.pid, p) for p in tree(emperor.pid))
        yield emperor
    finally:
        seen.update((p.pid, p) for p in tree(emperor.pid))
        emperor.signal(signal.SIGTERM)  # the graceful Ragnarok scripts/demo.sh uses
        try:
            emperor.wait(60)
        except Exception:
            pass
        emperor.stop()  # SIGKILL to whatever is still there
        gone, alive = psutil.wait_procs(list(seen.values()), timeout=15)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        leftover = [p.pid for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not leftover, f"processes left behind by the demo: {leftover}"


def pid_on(page) -> int:
    found = re.search(r"PID:\s*(\d+)", page.inner_text("body"))
    assert found, page.content()[:500]
    return int(found[1])


def image_loaded(page, selector: str = "img") -> None:
    page.wait_for_function(
        f"() => {{ const i = document.querySelector({selector!r});"
        " return i && i.complete && i.naturalWidth > 1; }", timeout=TIMEOUT * 1000)


def test_the_demo_in_a_browser(demo, tmp_path):
    # :8080 is the frontend vassal's HTTP router, in front of its own workers.
    assert "httprouter socket 0 bound to TCP address 127.0.0.1:8080" in demo.log()
    profile = tmp_path / "profile"  # a new, empty --user-data-dir
    profile.mkdir()
    shot = tmp_path / "demo.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1100, "height": 900}, timeout=TIMEOUT * 1000)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT * 1000)
            for name, (_, picture) in CLUSTERS.items():
                response = page.goto(BASE + "/")
                assert response is not None and response.status == 200
                assert "pymaster" in page.title()
                # Both pictures on the landing page come through /static.
                image_loaded(page, f"img[src='/static/{picture}']")
                page.click(f"a#{name}")
                page.wait_for_url(f"{BASE}/{name}/")
                image_loaded(page)
                assert page.get_attribute("img", "src") == f"/static/{picture}"
                pids = {pid_on(page)}
                deadline = time.monotonic() + TIMEOUT
                while len(pids) < 3:
                    assert time.monotonic() < deadline, f"{name}: only PIDs {pids} answered"
                    page.reload()
                    image_loaded(page)
                    pids.add(pid_on(page))
                # One worker of each of the cluster's three vassals answered.
                owners = sorted(vassal_of(pid) for pid in pids)
                assert owners == [f"{name}-{p}" for p in
                                  ((4002, 4003, 4004) if name == "psgi" else (4005, 4006, 4007))]
            # The landing page's live table now lists the six nodes.
            page.goto(BASE + "/")
            rows = page.inner_text("#pools")
            for key, _ in CLUSTERS.values():
                assert rows.count(key) == 3, rows
            image_loaded(page, "img[src='/static/python.png']")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("DEMO_SCREENSHOT"):
        shutil.copyfile(shot, Path(os.environ["DEMO_SCREENSHOT"]))
