"""Assembling and running the server: create_server() for tests, serve() for the process."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .auth import AuthInterceptor, load_tokens
from .cache import make_cache
from .cache.l2 import CompressedCache
from .cache.l3 import QueryCache
from .cache.tiers import PatternTiers
from .config import Settings, split_address
from .engine import Clock, Engine
from .errors import PatternStoreError
from .metrics import SERVICE, Metrics, StateReading
from .servicer import BACKUP_PREFIX, PatternStoreServicer
from .sideport import SidePort
from .storage import ConnectionOptions, ConnectionPool, DataDirLock
from .vector import limit_blas_threads

__all__ = ["DB_NAME", "PatternStoreServer", "create_server", "serve"]

log = logging.getLogger("patternstore_server")

DB_NAME = "patterns.db"
_DRAIN_QUIET_S = 0.1


class PatternStoreServer:
    """One server process's parts: gRPC, the engine and its writer, metrics, health."""

    def __init__(self, settings: Settings, clock: Clock = time.time_ns) -> None:
        self.settings = settings
        self._clock = clock
        self.port = 0
        self.metrics_port = 0
        self.metrics = Metrics(slow_query_seconds=settings.slow_query_ms / 1000.0)
        self.metrics.per_call = settings.grpc_metrics == "on"
        self._grpc: grpc.aio.Server | None = None
        self._http: SidePort | None = None
        self._serving = False
        # Tasks started from callbacks, kept referenced until done (asyncio holds weak refs).
        self._background: set[asyncio.Future[None]] = set()
        self._pruner: asyncio.Task[None] | None = None
        self._health = health.aio.HealthServicer()
        self._stopped = False
        # Acknowledged writes a stop could not commit (a writer stuck on a fault).
        self.uncommitted = 0
        self._lock = DataDirLock(settings.data_dir, "patternstore-server")

    @property
    def db_path(self) -> Path:
        return Path(self.settings.data_dir) / DB_NAME

    async def start(self) -> None:
        self._lock.acquire()
        try:
            await self._start()
        except BaseException:
            self._lock.release()
            raise

    async def _start(self) -> None:
        s = self.settings
        # Read before anything starts: a bad file must fail the start with nothing to
        # undo (a pool opened, the writer thread running).
        tokens = load_tokens(s.auth_tokens_file) if s.auth_tokens_file else None
        _remove_orphan_backups(Path(s.data_dir))
        limit_blas_threads()
        self.pool = ConnectionPool(
            self.db_path,
            ConnectionOptions(s.synchronous, s.busy_timeout_ms, s.wal_autocheckpoint_pages),
            observer=self.metrics.observe_query,
        )
        clock = self._clock

        def fake_s() -> float:
            return clock() / 1e9

        # L2's TTL and L3's staleness bound are durations: timed on the monotonic clock,
        # or a wall-clock step back (NTP, a resumed VM) keeps a BOUNDED query's reply
        # for as long as the step (helper-24: 30 minutes, for a 1 s bound). A test's
        # injected clock drives them too, so it can move them without sleeping.
        clock_s = time.monotonic if clock is time.time_ns else fake_s

        l2 = (
            CompressedCache(s.l2_max_bytes, s.l2_ttl_s, timer=clock_s)
            if s.l2_max_bytes > 0
            else None
        )
        l1 = make_cache(
            s.l1_policy,
            s.l1_max_entries,
            s.l1_max_bytes,
            on_evict=None if l2 is None else l2.put,
        )
        l3 = QueryCache(s.l3_max_entries, s.l3_max_staleness_ms / 1000.0, timer=clock_s)
        self.engine = Engine(s, self.pool, PatternTiers(l1, l2), l3, self._clock)
        self.engine.committer.batch_observer = self.metrics.observe_batch
        self.engine.on_failure = self._on_failure
        self.engine.on_readiness = self._on_readiness
        self.engine.start(asyncio.get_running_loop())
        self.servicer = PatternStoreServicer(
            self.engine,
            self.pool,
            self.metrics,
            s.query_threads,
            s.max_send_bytes,
            s.max_concurrent_rpcs,
        )

        interceptors = []
        if tokens is not None:
            interceptors.append(AuthInterceptor(tokens))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                # On by default: a second server would silently share the port.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", s.max_receive_bytes),
                # The servicer keeps replies below it; this is the backstop.
                ("grpc.max_send_message_length", s.max_send_bytes),
            ],
        )
        server.add_generic_rpc_handlers((self.servicer.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        host, _ = split_address(s.listen)
        credentials = _server_credentials(s)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(s.listen)
            else:
                self.port = server.add_secure_port(s.listen, credentials)
        except RuntimeError as exc:
            # grpcio raises RuntimeError for any port it cannot open; the files were
            # checked already (_server_credentials), so the address is what failed.
            raise OSError(
                f"cannot bind listen={s.listen}: the port is in use, or the host is not "
                "an address of this machine"
            ) from exc
        if self.port == 0:
            raise OSError(f"cannot bind listen={s.listen}")
        # Health answers NOT_SERVING (the default for "" is SERVING) and calls get
        # UNAVAILABLE until the pattern memory is loaded.
        await self._health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._grpc = server

        metrics_addr = "-"
        if s.metrics_listen:
            mhost, mport = split_address(s.metrics_listen)
            self.metrics.add_state_collector(self._state)
            try:
                self._http = SidePort(mhost, mport, self.metrics.registry, self._not_ready)
            except OSError as exc:
                raise OSError(f"cannot bind metrics_listen={s.metrics_listen}: {exc}") from exc
            self._http.start()
            self.metrics_port = self._http.port
            metrics_addr = f"{mhost}:{self.metrics_port}"
        # Bound and answering (health NOT_SERVING, calls UNAVAILABLE) while the memory
        # loads, which takes seconds at a million patterns: say where, so an operator
        # (or a test) can watch the start-up rather than wait blind.
        log.info(
            "patternstore loading grpc=%s:%d metrics=%s db=%s: calls get UNAVAILABLE "
            "until the pattern memory is loaded",
            host,
            self.port,
            metrics_addr,
            self.db_path,
        )
        loop = asyncio.get_running_loop()
        loaded, seconds = await loop.run_in_executor(None, self.engine.load_memory)
        log.info(
            "loaded %d posteriors and %d embeddings in %.2f s",
            loaded,
            len(self.engine.memory.vectors),
            seconds,
        )
        warmed, seconds = await loop.run_in_executor(None, self.engine.warm, s.warm_count)
        log.info("warmed %d patterns into the caches in %.2f s", warmed, seconds)
        self.servicer.ready = True
        await self._health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        self._pruner = asyncio.create_task(self._prune_loop())
        log.info(
            "patternstore serving grpc=%s:%d metrics=%s db=%s auth=%s tls=%s",
            host,
            self.port,
            metrics_addr,
            self.db_path,
            # Said at every start: a server without auth is easy to run by mistake.
            "tokens" if s.auth_tokens_file else "off",
            ("mutual" if s.tls_client_ca else "on") if s.tls_cert else "off",
        )

    async def _prune_loop(self) -> None:
        """Delete expired patterns (and what the pruning settings name) every interval."""
        while True:
            await asyncio.sleep(self.settings.prune_interval_s)
            try:
                taken, _ = await self.engine.prune(False, self.settings.prune_batch)
            except PatternStoreError as exc:
                log.warning("pruning pass skipped: %s", exc)
                continue
            except Exception:
                # Nothing awaits this task: an escaped error would end pruning silently.
                log.exception("pruning pass failed; retrying next interval")
                continue
            removed = {why: len(ids) for why, ids in taken.items() if ids}
            if removed:
                log.info("pruned %s", removed)

    def _not_ready(self) -> str | None:
        """Why /readyz says 503, or None when ready (migrated, warmed, writer alive)."""
        if not self._serving:
            return "starting" if not self._stopped else "shutting down"
        if self.engine.degraded is not None:
            return f"writes paused: {self.engine.degraded}"
        if not self.engine.healthy:
            return "the writer stopped after a failed commit; see the log and restart"
        return None

    def _on_failure(self, error: BaseException) -> None:
        log.error("a commit failed, refusing writes until restart: %s", error)
        self._on_readiness(False)

    def _on_readiness(self, ready: bool) -> None:
        # gRPC health mirrors /readyz: load balancers stop sending here while writes pause.
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in (SERVICE, ""):
            task = asyncio.ensure_future(self._health.set(service, status))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _state(self) -> StateReading:
        e = self.engine
        db, wal = self.pool.file_sizes()
        return StateReading(
            queue_depth=e.queue_depth,
            queue_capacity=e.queue_capacity,
            durable_sequence=e.durable_sequence,
            last_sequence=e.last_sequence,
            batches=e.committer.batches,
            items=e.committer.items,
            caches=e.cache_figures(),
            database_bytes=db,
            wal_bytes=wal,
            outcomes=dict(e.outcome_counts),
            checkpoints=e.committer.checkpoints,
            busy_retries=self.pool.busy_retries,
            l1_window=e.l1_window_size(),
            codec_bytes_in=dict(e.blobs.bytes_in),
            codec_bytes_out=dict(e.blobs.bytes_out),
            dictionaries=len(self.pool.dictionaries),
            pruned=dict(e.pruned),
            vectors=len(e.memory.vectors),
            vector_bytes=e.memory.vectors.memory_bytes(),
        )

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new writes, let calls in flight finish, commit the queue, checkpoint."""
        if self._stopped:
            return
        self._stopped = True
        self._serving = False
        if self._pruner is not None:
            self._pruner.cancel()
        grace = self.settings.grace_s if grace is None else grace
        deadline = time.monotonic() + grace
        self.engine.stop_accepting()
        await self._health.enter_graceful_shutdown()
        # Drain before stopping gRPC: calls that reach a handler now are answered (writes
        # with UNAVAILABLE, which clients retry), where grpc's stop() would cancel calls
        # not yet matched to a handler with CANCELLED, which they do not.
        # Clients that were answered UNAVAILABLE go away; wait until no call is in a handler
        # and none has started for a moment (calls queued in grpc have then been served).
        quiet = _DRAIN_QUIET_S
        while time.monotonic() < deadline and (
            self.servicer.in_flight or time.perf_counter() - self.servicer.last_started < quiet
        ):
            await asyncio.sleep(0.005)
        if self._grpc is not None:
            await self._grpc.stop(max(0.0, deadline - time.monotonic()))
        # A writer stuck on a fault gets the rest of the grace, no more.
        remaining = max(1.0, deadline - time.monotonic())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.engine.close, remaining)
        writer = self.engine.committer
        # A healthy writer still committing acknowledged QUEUED writes is let finish:
        # stopping it would lose them (the orchestrator's kill is the only bound then).
        while writer.running and not self.engine.writes_paused:
            log.info("waiting for the writer to commit %d queued writes", writer.queued)
            await loop.run_in_executor(None, self.engine.close, 1.0)
        self.servicer.close()
        if writer.running:
            # Stuck on a fault: its connection is in use on its thread, so it is not
            # closed under it; the process exits with those writes uncommitted. Counted
            # by sequence, as the queue-depth metric is: ``queued`` leaves out the batch
            # the writer is retrying.
            self.uncommitted = max(0, self.engine.last_sequence - self.engine.durable_sequence)
            log.error(
                "stopping with the writer stuck on a fault (%s); %d acknowledged writes are "
                "not committed and are lost",
                self.engine.degraded,
                self.uncommitted,
            )
        else:
            self.pool.close()
            self._lock.release()  # (a stuck writer's process exits, which drops it)
        if self._http is not None:
            self._http.close()
        log.info("patternstore stopped; durable_sequence=%d", self.engine.durable_sequence)

    async def wait(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()


def _remove_orphan_backups(data_dir: Path) -> None:
    """Backup copies a crash left beside the database: each a full-size file no one will
    stream (the directory lock is held, so no other server is streaming them)."""
    for orphan in data_dir.glob(f"{BACKUP_PREFIX}*.db"):
        log.warning("removing %s, a backup copy left by an earlier process", orphan)
        orphan.unlink(missing_ok=True)


def _server_credentials(s: Settings) -> grpc.ServerCredentials | None:
    if not (s.tls_cert or s.tls_key):
        if s.tls_client_ca:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return None
    if not (s.tls_cert and s.tls_key):
        raise ValueError("TLS needs both tls_cert and tls_key")
    key = Path(s.tls_key).read_bytes()
    chain = Path(s.tls_cert).read_bytes()
    ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
    # Checked here: gRPC reports files it cannot use as a failure to bind the port (the
    # cause only in its C log), which would send the operator to the wrong problem.
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(s.tls_cert, s.tls_key)
        if s.tls_client_ca:
            context.load_verify_locations(s.tls_client_ca)
    except ssl.SSLError as exc:
        raise ValueError(
            f"cannot serve TLS with tls_cert={s.tls_cert} tls_key={s.tls_key}"
            + (f" tls_client_ca={s.tls_client_ca}" if s.tls_client_ca else "")
            + f": check they are PEM and the key matches the certificate ({exc.reason})"
        ) from None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


async def create_server(settings: Settings, clock: Clock = time.time_ns) -> PatternStoreServer:
    """Start a server (port 0 binds a free port: read it from ``.port``)."""
    server = PatternStoreServer(settings, clock)
    await server.start()
    return server


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain; the exit status (1: writes were lost).

    The signal handlers come first: a signal while the memory loads (seconds at 1M
    patterns) would otherwise kill the process unlogged, or, as PID 1 in a container,
    be dropped by the kernel until docker stop's SIGKILL. A second signal during the
    drain says how to cut it short; a third exits at once.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 2:
            log.warning("already draining (grace_s=%s); signal again to exit now", settings.grace_s)
        elif signals >= 3:
            log.error("exiting now, without draining: queued writes are lost")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    server = await create_server(settings)
    # What start-up built (modules, the memory, the warmed caches) lives as long as the
    # process: move it out of the collector's generations, so no collection walks it
    # again. Each full collection is a pause of the event loop, and such pauses are what
    # GetPattern's latency tail is made of. Here, not in start(): a process that starts
    # and stops many servers (the tests) would never collect the cycles of stopped ones.
    gc.collect()
    gc.freeze()
    await stop.wait()
    log.info("patternstore draining")
    await server.stop()
    return 1 if server.uncommitted else 0
