"""SERVER_STARTER_PORT (Server::Starter's start_server) in pymaster.master.sockets: fds
adopted, matched to configured sockets by address (keeping their kind), unmatched ones
served as HTTP, all marked shared (no drop filter at a graceful stop)."""

from __future__ import annotations

import socket

from pymaster.master import sockets


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_server_starter_fds_adopted_matched_and_shared():
    a, b = _listening(), _listening()
    pa, pb = a.getsockname()[1], b.getsockname()[1]
    env = {"SERVER_STARTER_PORT": f"127.0.0.1:{pa}={a.detach()};127.0.0.1:{pb}={b.detach()};junk"}
    assert sockets.inherits_sockets(env)
    listeners = sockets.setup([("uwsgi", f"127.0.0.1:{pb}")], 16, environ=env)
    try:
        by_port = {lst.bound.getsockname()[1]: lst for lst in listeners}
        assert by_port[pb].kind == "uwsgi" and by_port[pb].inherited and by_port[pb].shared
        assert by_port[pa].kind == "http" and by_port[pa].inherited and by_port[pa].shared
        assert "SERVER_STARTER_PORT" in env  # each generation start_server runs gets it
        # a graceful stop leaves the shared sockets alone: no filter holds new handshakes
        sockets.refuse_new_connections(listeners)
        with socket.create_connection(("127.0.0.1", pa), timeout=2):
            pass
    finally:
        for lst in listeners:
            lst.bound.close()


def test_no_server_starter_no_inherited_sockets():
    assert not sockets.inherits_sockets({})
    assert sockets._server_starter_fds({"SERVER_STARTER_PORT": "nofd;x=y"}) == []
