"""The ASGI 3.0 worker: one asyncio event loop (uvloop when it imports) per worker process,
many requests in flight, on the sockets the master bound -- HTTP/1.1 (httptools, through
`pymaster.protocols.http`), the uwsgi protocol and WebSockets (`websockets` sans-I/O) -- with the lifespan
protocol, the scoreboard, recycling and the request log line of the WSGI worker.

`worker.py` runs the loop and keeps the contract with the master; `conn.py` holds the
connection protocols, `cycle.py` one HTTP request/response, `websocket.py` one WebSocket,
`lifespan.py` the lifespan protocol, `scope.py` builds the scopes, `app.py` loads the app.

May import `pymaster.config`, `pymaster.log`, `pymaster.procname`, `pymaster.apps`,
`pymaster.protocols`, `pymaster.workers.contract`, `pymaster.workers.scoreboard` and, from
the WSGI worker, only its request log (`workers.wsgi.reqlog`) and connection constants
(`workers.wsgi.conns`); never `pymaster.master`, `pymaster.routers` or `pymaster.cli`.
"""
