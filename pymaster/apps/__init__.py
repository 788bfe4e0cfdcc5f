"""Application code adapters: loading a WSGI callable and running one request (PEP 3333).

May import `pymaster.config`, `pymaster.protocols` and `pymaster.log`; never the master, the
workers or the routers.
"""
