"""Gateways: the corerouter every router process is built on (lifecycle, subscription
server, table sharing, persistence, stats), the subscription pools it uses, and its two
flavours: the fastrouter (uwsgi in, uwsgi out: fastrouter.py, session.py) and the HTTP
router (HTTP/1.1 and TLS in, uwsgi out: httprouter.py, httpsession.py).

May import `pymaster.protocols`, `pymaster.config` and `pymaster.log`; never the master or the
workers (the master supervises routers, not the other way round).
"""
