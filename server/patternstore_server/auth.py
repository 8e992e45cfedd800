"""Bearer tokens and roles, checked once per call in one interceptor.

The tokens file holds one ``TOKEN ROLE`` pair a line (``#`` starts a comment). Roles
nest: ``admin`` may do everything ``write`` may, which may do everything ``read`` may.
Health and reflection stay open so probes and grpcurl work without a token.
"""

from __future__ import annotations

import hmac
import logging
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

__all__ = ["ROLES", "AuthInterceptor", "load_tokens", "required_role"]

log = logging.getLogger(__name__)

ROLES = ("read", "write", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}

_SERVICE = "/patternstore.v1.PatternStore/"
_NEEDS = {
    "GetPattern": "read",
    "GetPatterns": "read",
    "QueryPatterns": "read",
    "SearchSimilar": "read",
    "StorePattern": "write",
    "StorePatterns": "write",
    "DeletePattern": "write",
    "UpdateConfidence": "write",
    "UpdateConfidenceBatch": "write",
    "RecordOutcomes": "write",
    "Flush": "write",
    "GetStats": "admin",
    "Backup": "admin",
    "PrunePatterns": "admin",
}


def load_tokens(path: str | Path) -> dict[str, str]:
    """token -> role. Raises ValueError naming the line of a malformed entry, or when
    other users may write the file."""
    _check_mode(Path(path))
    tokens: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in _RANK:
            raise ValueError(f"{path}:{n}: expected 'TOKEN ROLE' with ROLE one of {ROLES}")
        tokens[parts[0]] = parts[1]
    if not tokens:
        raise ValueError(f"{path}: no tokens; remove the setting to run without auth")
    return tokens


def _check_mode(path: Path) -> None:
    # Like ssh with a private key: a file others may write lets them add an admin token,
    # so the server refuses it. Readable by others only warns: a Kubernetes secret
    # volume mounts files 0644 unless told otherwise, and that is the container's user.
    mode = path.stat().st_mode  # follows symlinks, as a secret volume's files are
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(
            f"{path}: writable by group or others (mode {stat.S_IMODE(mode):o}), who could "
            f"add an admin token; run chmod go-w {path}"
        )
    if mode & stat.S_IROTH:
        log.warning(
            "%s: readable by every user on the host (mode %o); chmod 600 it if the host is shared",
            path,
            stat.S_IMODE(mode),
        )


def required_role(method: str) -> str | None:
    """The role a full method name needs, or None for open services (health, reflection)."""
    if not method.startswith(_SERVICE):
        return None
    # Methods this table does not know yet need the most: fail closed.
    return _NEEDS.get(method[len(_SERVICE) :], "admin")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens

    def _role_of(self, metadata: Any) -> str | None:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    return None
                for known, role in self._tokens.items():
                    # Constant time: the comparison must not leak how much of a token matched.
                    if hmac.compare_digest(known.encode(), token.strip().encode()):
                        return role
                return None
        return None

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        need = required_role(handler_call_details.method)
        if need is None:
            return await continuation(handler_call_details)
        role = self._role_of(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if role is None:
            return _deny_like(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown token: send 'authorization: Bearer TOKEN'",
            )
        if _RANK[role] < _RANK[need]:
            return _deny_like(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{handler_call_details.method} needs the {need} role; this token has {role}",
            )
        return handler


def _deny_like(
    handler: grpc.RpcMethodHandler[Any, Any] | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape (unary or client-streaming) that aborts with ``code``."""

    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # unreachable; makes this an async generator like the real handler

    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)
