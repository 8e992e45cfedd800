"""``patternstore-server``: run the server until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from .config import load_settings
from .errors import PatternStoreError
from .server import serve


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"patternstore-server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(serve(settings))
    except (OSError, ValueError, PatternStoreError) as exc:
        # One line, in the log's format: a full disk, a newer schema, a port in use.
        logging.getLogger("patternstore_server").error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
