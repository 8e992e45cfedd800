"""Storage: connections (one writer, a reader per thread), pragmas, SQL, migrations."""

from .lock import DataDirLock
from .migrate import Migration, apply_migrations, available_migrations
from .pool import ConnectionPool
from .pragmas import ConnectionOptions

__all__ = [
    "ConnectionOptions",
    "ConnectionPool",
    "DataDirLock",
    "Migration",
    "apply_migrations",
    "available_migrations",
]
