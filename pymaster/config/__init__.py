"""Configuration: the option table, its sources (environment, command line, INI files,
placeholders), the help and `docs/options.md` generator, and the typed Config.

Every other package imports from here; this package imports nothing of pymaster's but
`pymaster.__version__`.
"""

from pymaster.config.ini import ConfigError
from pymaster.config.options import Config, parse

__all__ = ["Config", "ConfigError", "parse"]
