"""The master process: the arbiter loop (signal queue, spawn/reap/respawn, reloads), chain
reloads, the reload check, per-tick checks, cheaper, sockets, vacuum, control (FIFO, stats),
notify, subscriber, privileges, and the gateways it attaches.

May import `pymaster.workers`, `pymaster.routers` (from `gateways` only), `pymaster.protocols`,
`pymaster.config`, `pymaster.log` and `pymaster.procname`; never `pymaster.cli`.
"""
