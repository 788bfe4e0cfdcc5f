"""What an operator installs beside pymaster, shipped in the package: the example INI files
and the systemd units of `etc/` (in `files/`), and `python -m pymaster.deploy`, which lists
them, prints one, or writes the systemd units with the absolute path of this installation.

May import nothing of pymaster's (it must run on any installation, even a broken one).
"""
