"""The Emperor (`pymaster --emperor DIR|GLOB`): one vassal per INI file, each a separate
`python -m pymaster --ini FILE` master that the Emperor starts, respawns (throttled while it
dies before it is ready), reloads when its file is touched and stops when it is removed.

- `monitor.py`: the directory and glob scans (which files are vassals, their mtime and owner)
- `blacklist.py`: uWSGI's throttle for vassals that die before they are ready
- `vassal.py`: one vassal: its command line, environment and start; death with the Emperor
- `stats.py`: `--emperor-stats`, uWSGI's Emperor stats JSON
- `emperor.py`: the Emperor loop: signal queue, scans, reaping, readiness, Ragnarok

Vassals report readiness the way a pymaster master reports it to systemd: the Emperor hands
each one a NOTIFY_SOCKET of its own and reads READY=1 / RELOADING=1 from it (the sender's pid
comes with the datagram). Signals are the only commands the Emperor sends a vassal: SIGHUP
(graceful reload), SIGTERM (graceful stop), SIGINT (stop at once).

May import `pymaster.config`, `pymaster.log`, `pymaster.procname`, `pymaster.protocols`,
`pymaster.workers.contract` (death with the parent) and, of the master, only the self-contained
`pymaster.master.notify` (sd_notify) and `pymaster.master.sockets` (binding the stats socket);
never `pymaster.cli`, the arbiter or the routers.
"""
