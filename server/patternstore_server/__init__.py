"""patternstore server: stores learned patterns, serves them fast, learns their confidence."""

from .config import SETTINGS, Settings, load_settings
from .server import PatternStoreServer, create_server, serve

__all__ = ["SETTINGS", "PatternStoreServer", "Settings", "create_server", "load_settings", "serve"]
