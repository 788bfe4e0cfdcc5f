"""Wire protocols: uwsgi packets, subscription datagrams, HTTP/1.1. Imports nothing of ours."""
