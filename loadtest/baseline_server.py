"""A trivial grpc.aio server returning a fixed response: the baseline of every h2load figure.

Any method of the PatternStore service answers with fixed bytes (``--response
METHOD=FILE`` per method, RESPONSE_FILE for the rest), through the same identity-serialiser
path our server uses, so the two differ only by the work patternstore does per call.
``/bench.Baseline/Count`` returns how many calls succeeded. One process serves every
figure's baseline, so each is measured against the same warmed-up server.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import grpc


class _FixedHandler(grpc.GenericRpcHandler):
    def __init__(self, default: bytes, per_method: dict[str, bytes]) -> None:
        self.count = 0

        def fixed(response: bytes) -> grpc.RpcMethodHandler[Any, Any]:
            async def handle(request: bytes, context: Any) -> bytes:
                self.count += 1
                return response

            return grpc.unary_unary_rpc_method_handler(handle)

        async def count(request: bytes, context: Any) -> bytes:
            return str(self.count).encode()

        self._default = fixed(default)
        self._methods = {
            f"/patternstore.v1.PatternStore/{name}": fixed(data)
            for name, data in per_method.items()
        }
        self._count: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(count)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method == "/bench.Baseline/Count":
            return self._count
        if method in self._methods:
            return self._methods[method]
        if method.startswith("/patternstore.v1.PatternStore/"):
            return self._default
        return None


async def _serve(default: bytes, per_method: dict[str, bytes]) -> None:
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20)]
    )
    server.add_generic_rpc_handlers((_FixedHandler(default, per_method),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"baseline serving port={port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("response_file", nargs="?", help="the reply of every other method")
    parser.add_argument(
        "--response",
        action="append",
        default=[],
        metavar="METHOD=FILE",
        help="the reply of one method (repeatable)",
    )
    args = parser.parse_args(argv)
    default = Path(args.response_file).read_bytes() if args.response_file else b""
    per_method: dict[str, bytes] = {}
    for item in args.response:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--response {item!r} is not METHOD=FILE")
        per_method[name] = Path(path).read_bytes()
    asyncio.run(_serve(default, per_method))
    return 0


if __name__ == "__main__":
    sys.exit(main())
