"""Gateways: the subscription pools shared by every router, the fastrouter process and its
sessions.

May import `pymaster.protocols`, `pymaster.config` and `pymaster.log`; never the master or the
workers (the master supervises routers, not the other way round).
"""
