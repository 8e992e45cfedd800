"""QueryPatterns: filters, orderings and keyset pagination with opaque page tokens."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from patternstore.v1 import patternstore_pb2 as pb

from . import validate
from .codecs import CodecError
from .errors import InvalidArgument
from .model import row_to_pattern
from .storage import ConnectionPool
from .storage import queries as q

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "QuerySpec",
    "parse_query",
    "run_query",
    "thompson_page_token",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

log = logging.getLogger(__name__)

_ORDERS = {
    pb.ORDER_BY_UNSPECIFIED: "confidence",
    pb.ORDER_BY_CONFIDENCE: "confidence",
    pb.ORDER_BY_USAGE: "usage",
    pb.ORDER_BY_RECENT: "recent",
    pb.ORDER_BY_LOWER_BOUND: "lower_bound",
    pb.ORDER_BY_THOMPSON: "thompson",
    pb.ORDER_BY_ID: "id",
}
_TOKEN_VERSION = 1
_EXPIRES_AT = 19  # storage.queries.COLUMNS position of expires_ns
# Tokens are client input: bounded before decoding (a real one is under 1 KiB, its id at
# most 256 bytes), and what they carry is checked as strictly as any field.
_MAX_TOKEN_CHARS = 2048
_MAX_THOMPSON_OFFSET = 2**31
_INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True, slots=True)
class QuerySpec:
    type: str
    min_confidence: float
    order: str
    limit: int
    after: tuple[Any, str] | None  # (ordering value, id) of the previous page's last row

    def cache_key(self) -> tuple[Any, ...]:
        return (self.type, self.min_confidence, self.order, self.limit, self.after)


def parse_query(req: pb.QueryPatternsRequest) -> QuerySpec:
    if req.type:
        validate.check_type(req.type)
    if math.isnan(req.min_confidence):
        raise InvalidArgument("min_confidence", "must be a number, not NaN")
    order = _ORDERS.get(req.order_by)
    if order is None:
        raise InvalidArgument("order_by", f"unknown ordering {req.order_by}")
    # Above the maximum the page is coerced down, as Google's AIP-158 asks of page sizes.
    limit = DEFAULT_LIMIT if req.limit == 0 else min(req.limit, MAX_LIMIT)
    after = None
    if req.page_token:
        after = _decode_token(req.page_token, req.type, req.min_confidence, order)
    return QuerySpec(req.type, req.min_confidence, order, limit, after)


def thompson_page_token(spec: QuerySpec, offset: int, seed: int) -> str:
    """A Thompson ranking pages by offset into the same seeded draw."""
    return _encode_token(spec, offset, str(seed))


def run_query(
    pool: ConnectionPool, spec: QuerySpec, now_ns: int, max_bytes: int
) -> tuple[bytes, bool]:
    """Run the query on this thread's reader; return the serialised response."""
    params: dict[str, Any] = {
        "now": now_ns,
        "min_confidence": spec.min_confidence,
        "limit": spec.limit + 1,  # one more than asked tells whether a next page exists
    }
    if spec.type:
        params["type"] = spec.type
    if spec.after is not None:
        params["after_value"], params["after_id"] = spec.after
    sql = q.query_sql(spec.order, bool(spec.type), spec.after is not None)
    rows = pool.query(f"query_{spec.order}", sql, params)
    resp = pb.QueryPatternsResponse()
    expiring = False
    size = 0
    taken = 0
    for row in rows[: spec.limit]:
        try:
            pattern = row_to_pattern(row, pool.dictionaries)
        except CodecError as exc:
            # Left out, not the whole page failed: else no page past it could ever be
            # read (an export by id would stop there). GetPattern says DATA_LOSS for it.
            log.warning("query reply leaves out a row that does not decode: %s", exc)
            taken += 1
            continue
        size += pattern.ByteSize() + 16  # its field tag and length, at most
        if taken and size > max_bytes:
            break  # the page ends here; the token continues after the last one sent
        resp.patterns.append(pattern)
        expiring = expiring or bool(row[_EXPIRES_AT])
        taken += 1
    if len(rows) > taken:
        last = rows[taken - 1]
        resp.next_page_token = _encode_token(spec, last[-1], last[0])
    # A reply holding a pattern that will expire must not be cached: it would outlive it.
    return resp.SerializeToString(), not expiring


def _encode_token(spec: QuerySpec, value: Any, pid: str) -> str:
    body = {
        "v": _TOKEN_VERSION,
        "t": spec.type,
        "m": spec.min_confidence,
        "o": spec.order,
        "a": [value, pid],
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, qtype: str, min_confidence: float, order: str) -> tuple[Any, str]:
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidArgument("page_token", "is not a token this server issued")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        value, pid = body["a"]
        same = (body["v"], body["t"], body["m"], body["o"]) == (
            _TOKEN_VERSION,
            qtype,
            min_confidence,
            order,
        )
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise InvalidArgument("page_token", "is not a token this server issued") from None
    if not same:
        raise InvalidArgument(
            "page_token",
            "belongs to a query with another type, min_confidence or order_by; "
            "repeat the original query's filters",
        )
    if not _valid_after(order, value, pid):
        raise InvalidArgument("page_token", "is not a token this server issued")
    return value, pid


def _valid_after(order: str, value: Any, pid: Any) -> bool:
    """Whether a token's (value, id) could have been written by ``_encode_token``: a
    forged one must be INVALID_ARGUMENT, not an overflow in SQLite or numpy."""
    if not isinstance(pid, str) or isinstance(value, bool):
        return False
    if order == "thompson":
        # (offset, seed) from thompson_page_token: a seed is 1..2**64-1 in decimal.
        return (
            isinstance(value, int)
            and 0 <= value <= _MAX_THOMPSON_OFFSET
            and 0 < len(pid) <= 20
            and pid.isascii()
            and pid.isdigit()
            and 0 < int(pid) < 2**64
        )
    if isinstance(value, int):
        return value in _INT64
    return isinstance(value, float) and math.isfinite(value)
