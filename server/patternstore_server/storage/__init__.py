"""Storage: connections (one writer, a reader per thread), pragmas, SQL, migrations."""

from .migrate import Migration, apply_migrations, available_migrations
from .pool import ConnectionPool
from .pragmas import ConnectionOptions

__all__ = [
    "ConnectionOptions",
    "ConnectionPool",
    "Migration",
    "apply_migrations",
    "available_migrations",
]
