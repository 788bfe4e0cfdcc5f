"""Application adapters: WSGI (in-process) and PSGI (the plackup bridge)."""
