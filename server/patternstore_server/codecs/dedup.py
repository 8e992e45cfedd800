"""Content keys for storing identical payload blobs once.

The key is BLAKE2b with a 16-byte digest over the *uncompressed* payload: the same
payload must map to one blob whichever dictionary or level encoded it. 128 bits
keep the chance of any collision among 10**12 blobs below 10**-14, so a key match
is treated as equality without comparing bytes. The ref-counted blob table that
uses it is described in DESIGN.md.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["CONTENT_KEY_SIZE", "content_key"]

CONTENT_KEY_SIZE: Final = 16
# A personalisation string keeps these keys distinct from any other BLAKE2b use in
# the system (an id, a cache key) that might hash the same bytes.
_PERSON: Final = b"ps-payload-v1"


def content_key(data: bytes) -> bytes:
    """16-byte BLAKE2b key of ``data``."""
    return hashlib.blake2b(data, digest_size=CONTENT_KEY_SIZE, person=_PERSON).digest()
