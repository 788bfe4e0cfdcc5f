"""pymaster: a prefork application server and router in the uWSGI mould."""

__version__ = "0.1.0"
