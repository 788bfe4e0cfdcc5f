"""Workers: the contract every worker kind keeps with the master (`contract.py`), the
shared scoreboard, and one folder per kind: `wsgi/` (the Python worker) and `psgi/` (the
plackup bridge and its Perl files).

May import `pymaster.config`, `pymaster.log`, `pymaster.procname`, `pymaster.apps` and
`pymaster.protocols`; never `pymaster.master`, `pymaster.routers` or `pymaster.cli`.
"""
