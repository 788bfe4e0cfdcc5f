"""The seed demo's HTTP frontend in Python: what examples/frontend.psgi (Plack::App::uWSGI
under plackup) does, as a pymaster WSGI app. Run by etc/demo/frontend.ini:

    wsgi-file = examples/frontend.wsgi           (the landing page on /)
    mount = /psgi=examples/frontend.wsgi         (the PSGI cluster)
    mount = /wsgi=examples/frontend.wsgi         (the WSGI cluster)
    manage-script-name = true
    static-map = /static=examples/static

pymaster loads this file once per mount and picks the app by mountpoint; the app then sees
SCRIPT_NAME = the mountpoint and forwards the request to the fastrouter with the cluster's
key (pymaster.apps.uwsgi_pass.UwsgiPass, the Python Plack::App::uWSGI). Anything else is
the landing page, which also shows the fastrouter's pools live from its stats socket.

Environment: DEMO_FASTROUTER (127.0.0.1:4000), DEMO_FASTROUTER_STATS (the stats socket;
unset: no live table).
"""

import html
import json
import os
import socket

from pymaster.apps.uwsgi_pass import UwsgiPass
from pymaster.protocols import address

FASTROUTER = os.environ.get("DEMO_FASTROUTER", "127.0.0.1:4000")
STATS = os.environ.get("DEMO_FASTROUTER_STATS", "")

# mountpoint -> (the fastrouter pass for the cluster, what it is)
CLUSTERS = {
    "/psgi": (
        # modifier1 5 (PSGI) as the seed's commented-out line; the fastrouter would use the
        # node's own modifier1 anyway, which the PSGI backends subscribed with.
        UwsgiPass(FASTROUTER, modifier1=5, vars={"UWSGI_FASTROUTER_KEY": "psgi_cluster"}),
        "PSGI",
    ),
    "/wsgi": (
        UwsgiPass(FASTROUTER, vars={"UWSGI_FASTROUTER_KEY": "wsgi_cluster"}),
        "WSGI",
    ),
}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pymaster: the seed's cluster</title>
<style>
 body {{ font-family: sans-serif; max-width: 58em; margin: 2em auto; padding: 0 1em;
        color: #222; line-height: 1.45; }}
 h1 {{ margin-bottom: .2em; }}
 .clusters {{ display: flex; gap: 1.5em; flex-wrap: wrap; margin: 1.5em 0; }}
 .cluster {{ border: 1px solid #ccc; border-radius: 8px; padding: 1em; flex: 1 1 20em; }}
 .cluster img {{ width: 100%; max-width: 480px; height: auto; display: block; }}
 .cluster a.go {{ font-size: 1.3em; font-weight: bold; }}
 pre {{ background: #f4f4f4; padding: .8em; overflow-x: auto; }}
 table {{ border-collapse: collapse; }}
 td, th {{ border-bottom: 1px solid #ddd; padding: .2em .8em; text-align: left; }}
 code {{ background: #f4f4f4; padding: 0 .2em; }}
</style>
</head>
<body>
<h1>The seed's cluster, on pymaster</h1>
<p>Eight pymaster instances started by one Emperor (<code>pymaster --emperor etc/demo</code>),
each from its own file in <code>etc/demo/</code>. Pick a cluster:</p>
<div class="clusters">
 <div class="cluster">
  <a class="go" id="psgi" href="/psgi/">PSGI cluster &rarr; /psgi/</a>
  <p>Three Perl backends running the seed's <code>app.psgi</code> (Text::Xslate), on
  127.0.0.1:4002-4004, subscribed as <code>psgi_cluster</code> with modifier1 5.</p>
  <img src="/static/hokkaidopm.gif" alt="PSGI cluster" width="480" height="160">
 </div>
 <div class="cluster">
  <a class="go" id="wsgi" href="/wsgi/">WSGI cluster &rarr; /wsgi/</a>
  <p>Three Python backends running the seed's <code>app.wsgi</code> (Jinja2), on
  127.0.0.1:4005-4007, subscribed as <code>wsgi_cluster</code>.</p>
  <img src="/static/python.png" alt="WSGI cluster" width="480" height="160">
 </div>
</div>
<h2>What you see</h2>
<p>Each cluster page is the seed's app: a picture and the <b>PID</b> of the backend worker
that rendered it. Reload the page and the PID changes: the fastrouter hands each request to
the next node of the cluster's pool, round robin.</p>
<pre>
browser --HTTP--> :8080 HTTP router --uwsgi--> frontend worker (this page; /static;
                                               /psgi and /wsgi: pymaster.apps.uwsgi_pass)
        --uwsgi, UWSGI_FASTROUTER_KEY=psgi_cluster | wsgi_cluster-->
        :4000 fastrouter --uwsgi--> a node of the pool: :4002 :4003 :4004 | :4005 :4006 :4007
              :4001 subscription server  &lt;--UDP heartbeats--  each backend's master
</pre>
<p>Nobody tells the fastrouter about the backends: each backend's master announces
"I serve key K at address A" to the subscription server every few seconds, and the
fastrouter adds the node to the pool for K (a node that stops announcing is dropped).
Try it: <code>touch etc/demo/wsgi-4005.ini</code> reloads that backend (new PID, same
port), <code>mv etc/demo/wsgi-4005.ini /tmp/</code> stops it and the pool shrinks to two,
moving it back starts it again.</p>
<h2>The fastrouter's pools now</h2>
{pools}
</body>
</html>
"""


def fastrouter_stats(where: str, timeout: float = 1.0) -> dict:
    """The fastrouter's stats JSON (it writes it to each connection, then closes)."""
    family, sockaddr = address.parse(where, "fastrouter stats").resolve()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def pools_table() -> str:
    if not STATS:
        return "<p>(no DEMO_FASTROUTER_STATS: the live table is off)</p>"
    try:
        pools = fastrouter_stats(STATS).get("subscriptions", [])
    except (OSError, ValueError) as exc:
        return f"<p>The fastrouter's stats are not available: {html.escape(str(exc))}</p>"
    if not pools:
        return "<p>No pool yet: no backend has subscribed.</p>"
    rows = []
    for pool in sorted(pools, key=lambda p: p["key"]):
        for node in pool["nodes"]:
            rows.append(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
                    html.escape(pool["key"]),
                    html.escape(node["name"]),
                    int(node["modifier1"]),
                    int(node["requests"]),
                )
            )
    return (
        '<table id="pools"><tr><th>key</th><th>node</th><th>modifier1</th>'
        "<th>requests</th></tr>\n" + "\n".join(rows) + "\n</table>"
    )


def landing(environ, start_response):
    if environ.get("PATH_INFO", "/") not in ("", "/"):
        body = b"Not Found: try / for the demo's landing page\n"
        start_response(
            "404 Not Found",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]
    body = PAGE.format(pools=pools_table()).encode("utf-8")
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


def application(environ, start_response):
    """The app pymaster picked by mountpoint: a cluster's pass, or the landing page."""
    cluster = CLUSTERS.get(environ.get("SCRIPT_NAME", "").rstrip("/"))
    if cluster is None:
        return landing(environ, start_response)
    return cluster[0](environ, start_response)
