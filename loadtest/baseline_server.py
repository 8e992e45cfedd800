"""A trivial grpc.aio server returning a fixed response: the baseline of every h2load figure.

Any method of the PatternStore service answers with the bytes of RESPONSE_FILE, through
the same identity-serialiser path our server uses, so the two differ only by the work
patternstore does per call. ``/bench.Baseline/Count`` returns how many calls succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import grpc


class _FixedHandler(grpc.GenericRpcHandler):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.count = 0

        async def fixed(request: bytes, context: Any) -> bytes:
            self.count += 1
            return self.response

        async def count(request: bytes, context: Any) -> bytes:
            return str(self.count).encode()

        self._fixed = grpc.unary_unary_rpc_method_handler(fixed)
        self._count = grpc.unary_unary_rpc_method_handler(count)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method == "/bench.Baseline/Count":
            return self._count
        if method.startswith("/patternstore.v1.PatternStore/"):
            return self._fixed
        return None


async def _serve(response: bytes) -> None:
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20)]
    )
    server.add_generic_rpc_handlers((_FixedHandler(response),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"baseline serving port={port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("response_file")
    args = parser.parse_args()
    with open(args.response_file, "rb") as f:
        response = f.read()
    asyncio.run(_serve(response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
