"""Wire protocols: uwsgi packets, HTTP/1.1 parsing and framing, subscription datagrams and
the `--subscribe-to` grammar, addresses.

May import only `pymaster.log` (and each other): every other package builds on these.
"""
