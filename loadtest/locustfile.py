"""Locust users for patternstore: learning workers speaking gRPC through our client.

    locust -f loadtest/locustfile.py --host 127.0.0.1:50051 --patterns 100000 \\
        --headless -u 20 -r 5 -t 60s

Every call goes through a client interceptor that fires locust's ``request`` event with the
method name, the time to the reply and the gRPC error, if any, so locust's statistics,
charts and failure counts work as they do for HTTP. The mix is a learning worker's: read
patterns by id (Zipf over ids, the hot ones most), read a batch, query the top patterns of
a type, report outcomes (one at a time, and as a RecordOutcomes stream) and store new
patterns. Ids are those ``pybench.py --load`` (or ``bench.py``) stores: load first.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# gevent must drive gRPC's I/O, or one blocking call stalls every user of this process;
# locust has already monkey-patched the standard library when it imports this file.
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task
from locust.env import Environment

grpc_gevent.init_gevent()

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent / "client"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from patternstore import PatternStoreClient, RetryPolicy  # noqa: E402
from patternstore.v1 import patternstore_pb2 as pb  # noqa: E402
from pybench import BATCH, OUTCOMES, STREAM, TYPES, Zipf, make_pattern, pattern_id  # noqa: E402


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument(
        "--patterns",
        type=int,
        default=100_000,
        env_var="PATTERNSTORE_PATTERNS",
        help="ids pattern-0000000.. the Zipf reads draw from (store them first)",
    )
    parser.add_argument(
        "--zipf-s", type=float, default=1.0, env_var="PATTERNSTORE_ZIPF_S", help="Zipf exponent"
    )


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Fires locust's request event for every unary and client-streaming call."""

    def __init__(self, environment: Environment) -> None:
        self.env = environment

    def _report(self, method: str, started: float, call: Any) -> Any:
        # The sync channel's continuation returns a finished call: its exception() is the
        # RpcError, if any, without raising it here (the client raises it to the task).
        exc = call.exception()
        length = 0 if exc is not None else call.result().ByteSize()
        self.env.events.request.fire(  # type: ignore[no-untyped-call]
            request_type="grpc",
            name=method.rsplit("/", 1)[-1],
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            response=None if exc is not None else call.result(),
            context={},
            exception=exc,
        )
        return call

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        started = time.perf_counter()
        return self._report(
            client_call_details.method, started, continuation(client_call_details, request)
        )

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        started = time.perf_counter()
        return self._report(
            client_call_details.method,
            started,
            continuation(client_call_details, request_iterator),
        )


class GrpcUser(User):
    """A user holding one channel to ``--host`` (host:port, an optional grpc:// is ignored)."""

    abstract = True
    client: PatternStoreClient

    def on_start(self) -> None:
        host = (self.host or "127.0.0.1:50051").removeprefix("grpc://")
        channel = grpc.intercept_channel(
            grpc.insecure_channel(host), LocustInterceptor(self.environment)
        )
        # No retries: a retried call would hide the failure from locust's figures.
        self.client = PatternStoreClient(
            host, channel=channel, timeout=30, retry=RetryPolicy(attempts=1)
        )

    def on_stop(self) -> None:
        self.client.close()


class LearningWorker(GrpcUser):
    """Reads before a task, reports after it, sometimes learns something new."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        super().on_start()
        opts = self.environment.parsed_options
        n = opts.patterns if opts is not None else 100_000
        s = opts.zipf_s if opts is not None else 1.0
        self.zipf = Zipf(n, s)
        self.rng = random.Random()
        self.stored = 0
        self.tag = f"{id(self):x}-{time.time_ns() % 10**9}"

    def _call(self, fn: Callable[[], Any]) -> None:
        # A failure is already counted by the interceptor; the user carries on.
        with contextlib.suppress(grpc.RpcError):
            fn()

    @task(60)
    def get(self) -> None:
        self._call(lambda: self.client.get_pattern(pattern_id(self.zipf.one())))

    @task(10)
    def get_batch(self) -> None:
        self._call(lambda: self.client.get_patterns(self.zipf.ids(BATCH)))

    @task(5)
    def query_top(self) -> None:
        kind = f"type{self.rng.randrange(TYPES)}"
        self._call(lambda: self.client.query_patterns(kind, order_by="lower_bound", limit=10))

    @task(15)
    def report_outcome(self) -> None:
        pid = pattern_id(self.zipf.one())
        self._call(lambda: self.client.update_confidence(pid, self.rng.choice(OUTCOMES)))

    @task(5)
    def stream_outcomes(self) -> None:
        def updates() -> Iterator[pb.UpdateConfidenceRequest]:
            for r in self.zipf.sample(STREAM):
                yield pb.UpdateConfidenceRequest(
                    id=pattern_id(r), outcome=self.rng.choice(OUTCOMES)
                )

        self._call(lambda: self.client.record_outcomes(updates()))

    @task(5)
    def store_new(self) -> None:
        self.stored += 1
        pattern = make_pattern(self.stored, id=f"locust-{self.tag}-{self.stored}")
        self._call(lambda: self.client.store_pattern(pattern))
