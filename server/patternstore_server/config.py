"""The one settings table.

Every setting has a name, a default and a help line. Each is a command-line flag
(``--name-with-dashes``) and an environment variable (``PATTERNSTORE_NAME_IN_CAPS``);
the flag wins over the environment, the environment over the default. Settings are
read once, here, into a frozen :class:`Settings`.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

__all__ = ["SETTINGS", "Setting", "Settings", "build_parser", "load_settings", "split_address"]


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None


_T = TypeVar("_T")


def _setting(default: _T, help: str, choices: tuple[str, ...] | None = None) -> _T:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """The server's settings: this class is the table (name, default, help)."""

    listen: str = _setting("127.0.0.1:50051", "gRPC address host:port; port 0 binds a free port")
    metrics_listen: str = _setting(
        "127.0.0.1:9464",
        "Prometheus /metrics address host:port; port 0 binds a free port, empty disables it",
    )
    data_dir: str = _setting(
        "./data", "directory of the database; the file is data_dir/patterns.db"
    )
    max_batch: int = _setting(1000, "a group commit closes at this many queued writes")
    max_delay_ms: float = _setting(2.0, "... or this long after its first write, whichever first")
    queued_delay_ms: float = _setting(
        20.0,
        "... or this long when only QUEUED writes wait in it (no caller waits for the "
        "commit): fewer, larger transactions; the most a QUEUED write can lag",
    )
    max_queue: int = _setting(
        10_000,
        "queued writes not yet committed; beyond it writes get RESOURCE_EXHAUSTED "
        "(a call carrying more is INVALID_ARGUMENT)",
    )
    synchronous: str = _setting(
        "NORMAL",
        "SQLite synchronous: NORMAL survives a process crash (kill -9), FULL also a power loss",
        ("NORMAL", "FULL"),
    )
    busy_timeout_ms: int = _setting(5000, "SQLite busy timeout of every connection")
    wal_autocheckpoint_pages: int = _setting(
        4000, "the writer checkpoints (PASSIVE) once the WAL holds this many pages"
    )
    prior_alpha: float = _setting(1.0, "Beta prior alpha of a new pattern")
    prior_beta: float = _setting(1.0, "Beta prior beta of a new pattern")
    decay_factor: float = _setting(0.95, "evidence is multiplied by this once per decay period")
    decay_period_s: float = _setting(2_592_000.0, "decay period in seconds (30 days)")
    confidence_model: str = _setting(
        "beta",
        "beta: Bayesian Beta posterior mean; ema: the original system's moving average",
        ("beta", "ema"),
    )
    learning_rate: float = _setting(0.1, "EMA step per unit weight (confidence_model=ema)")
    dedup_window: int = _setting(
        100_000, "outcome request_ids remembered (and persisted) to answer retries unapplied"
    )
    embedding_storage: str = _setting(
        "float32",
        "embeddings at rest: float32 (exact); float16, int16, int8 are lossy (see codecs DESIGN)",
        ("float32", "float16", "int16", "int8"),
    )
    zstd_level: int = _setting(3, "zstd level of stored payloads")
    zstd_dict_min_samples: int = _setting(
        1000, "distinct payloads stored before a zstd dictionary is trained on them"
    )
    l1_policy: str = _setting(
        "adaptive",
        "L1 eviction policy: adaptive (W-TinyLFU), lru or lfu",
        ("adaptive", "lru", "lfu"),
    )
    l1_max_entries: int = _setting(100_000, "L1 cache capacity in patterns")
    l1_max_bytes: int = _setting(256 * 1024 * 1024, "L1 cache capacity in serialised bytes")
    grpc_metrics: str = _setting(
        "on", "per-call grpc_server_* metrics; off exists to measure what they cost", ("on", "off")
    )
    slow_query_ms: float = _setting(100.0, "SQLite reads slower than this count as slow queries")
    l2_max_bytes: int = _setting(
        64 * 1024 * 1024,
        "L2 (zstd-compressed patterns) capacity in bytes of memory (compressed values, "
        "keys and ~320 bytes an entry); 0 disables",
    )
    l2_ttl_s: float = _setting(600.0, "an L2 entry expires this long after it was cached")
    l3_max_entries: int = _setting(1000, "L3 (QueryPatterns replies) capacity; 0 disables")
    l3_max_staleness_ms: float = _setting(
        1000.0, "a cached BOUNDED query may lag confidence changes by at most this long"
    )
    rank_interval_ms: float = _setting(
        500.0,
        "QueryPatterns orders by confidence, usage and recency copied at most this long "
        "after an outcome commits (at once for stores, STRONG queries and Flush)",
    )
    warm_count: int = _setting(
        10_000, "patterns loaded into L1/L2 at start (most used, then most trusted)"
    )
    prune_below_confidence: float = _setting(
        0.0,
        "prune patterns whose confidence is below this after prune_min_evidence outcomes; "
        "0 disables",
    )
    prune_min_evidence: int = _setting(10, "outcomes a pattern needs before it can be pruned")
    prune_idle_s: float = _setting(
        0.0, "prune patterns with no outcome, store or read for this long; 0 disables"
    )
    prune_interval_s: float = _setting(60.0, "how often the pruner runs (expired ones always go)")
    prune_batch: int = _setting(1000, "at most this many patterns deleted per pruning pass")
    query_threads: int = _setting(2, "threads that run QueryPatterns against SQLite")
    max_receive_bytes: int = _setting(
        16 * 1024 * 1024, "largest request message accepted; larger gets RESOURCE_EXHAUSTED"
    )
    max_send_bytes: int = _setting(
        64 * 1024 * 1024,
        "largest reply sent; a GetPatterns or SearchSimilar past it gets RESOURCE_EXHAUSTED, "
        "a QueryPatterns page ends early",
    )
    max_concurrent_rpcs: int = _setting(
        0,
        "PatternStore calls served at once before new ones get RESOURCE_EXHAUSTED "
        "(health and reflection not counted); 0 = no limit",
    )
    auth_tokens_file: str = _setting(
        "", "file of 'TOKEN ROLE' lines (roles read, write, admin); empty = no auth"
    )
    tls_cert: str = _setting("", "PEM certificate chain; with tls_key, serve TLS")
    tls_key: str = _setting("", "PEM private key of tls_cert")
    tls_client_ca: str = _setting("", "PEM CA bundle; when set, clients must present a cert")
    grace_s: float = _setting(8.0, "on SIGTERM, how long in-flight calls get to finish")
    log_level: str = _setting("INFO", "logging level", ("DEBUG", "INFO", "WARNING", "ERROR"))


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name, f.default, f.metadata["help"], f.metadata["choices"]) for f in fields(Settings)
)


def _parse(setting: Setting, raw: str) -> Any:
    kind: Callable[[str], Any] = type(setting.default)
    value = kind(raw)
    if setting.choices is not None:
        value = str(value)
        upper = {c.upper(): c for c in setting.choices}
        if value.upper() not in upper:
            raise ValueError(f"{setting.name} must be one of {', '.join(setting.choices)}")
        value = upper[value.upper()]
    return value


def env_name(name: str) -> str:
    return "PATTERNSTORE_" + name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patternstore-server",
        description="patternstore gRPC server. Every flag is also an environment variable "
        "PATTERNSTORE_<NAME>.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for s in SETTINGS:
        parser.add_argument(
            "--" + s.name.replace("_", "-"),
            dest=s.name,
            default=None,
            metavar=s.name.upper(),
            help=f"{s.help} [env {env_name(s.name)}; default {s.default!r}]",
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build Settings from flags, then environment, then defaults; overrides win over all.

    Raises ValueError naming the setting when a value does not parse.
    """
    environ = os.environ if environ is None else environ
    _check_environment(environ)
    flags = vars(build_parser().parse_args(list(argv or [])))
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = flags.get(s.name)
        if raw is None:
            raw = environ.get(env_name(s.name))
        if raw is None:
            continue
        try:
            values[s.name] = _parse(s, raw)
        except ValueError as exc:
            raise ValueError(f"setting {s.name}: cannot use {raw!r}: {exc}") from None
    values.update(overrides)
    settings = Settings(**values)
    _check(settings)
    return settings


# PATTERNSTORE_* names the client, the CLI and the locust load test read (the image sets
# PATTERNSTORE_TARGET for the CLI inside the container); TLS_CERT and TLS_KEY are
# settings here too.
_CLIENT_ENVIRONMENT = {
    "PATTERNSTORE_TARGET",
    "PATTERNSTORE_TOKEN",
    "PATTERNSTORE_TLS_CA",
    "PATTERNSTORE_PATTERNS",
    "PATTERNSTORE_ZIPF_S",
}


def _check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a PATTERNSTORE_* variable that names no setting, as an unknown flag is:
    a misspelt PATTERNSTORE_AUTH_TOKEN_FILE otherwise starts the server without auth
    and says nothing (helper-27)."""
    known = {env_name(s.name) for s in SETTINGS} | _CLIENT_ENVIRONMENT
    for name in environ:
        if name.startswith("PATTERNSTORE_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"unknown environment variable {name}{hint}")


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of ``host:port``; an empty host means every interface."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65_535:
        raise ValueError(f"address {address!r} is not host:port with a port in 0-65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def _address_ok(address: str, optional: bool = False) -> bool:
    if optional and not address:
        return True
    try:
        split_address(address)
    except ValueError:
        return False
    return True


# gRPC options and SQLite's busy timeout are C ints.
_MAX_GRPC_INT = 2**31 - 1

# A prior (or a learning rate) past this would drown every outcome (weights stop at 1e6
# too), and near 1e102 the lower bound's arithmetic overflows.
_MAX_PRIOR = 1e6


def _check(s: Settings) -> None:
    """Values that parse but cannot work: refuse them at start, naming the setting.

    Comparisons are written so NaN fails each one, and every float has an upper bound
    (inf parses as a float too)."""
    problems = {
        "listen": _address_ok(s.listen),
        "metrics_listen": _address_ok(s.metrics_listen, optional=True),
        "prior_alpha": 0 < s.prior_alpha <= _MAX_PRIOR,
        "prior_beta": 0 < s.prior_beta <= _MAX_PRIOR,
        "decay_factor": 0 < s.decay_factor <= 1,
        "decay_period_s": 0 < s.decay_period_s < math.inf,
        "max_batch": s.max_batch >= 1,
        "max_queue": s.max_queue >= 1,
        "max_delay_ms": 0 <= s.max_delay_ms < math.inf,
        "queued_delay_ms": 0 <= s.queued_delay_ms < math.inf,
        "rank_interval_ms": 0 <= s.rank_interval_ms < math.inf,
        "learning_rate": 0 < s.learning_rate <= _MAX_PRIOR,
        "prune_below_confidence": 0 <= s.prune_below_confidence <= 1,
        "prune_min_evidence": s.prune_min_evidence >= 0,
        "prune_idle_s": 0 <= s.prune_idle_s < math.inf,
        # 0 would run back-to-back passes (a core busy while idle); <= 0 batches delete
        # nothing, or slice from the end.
        "prune_interval_s": 0 < s.prune_interval_s < math.inf,
        "prune_batch": s.prune_batch >= 1,
        # Below a kilobyte even a GetPatterns of a few ids is refused.
        "max_receive_bytes": 1024 <= s.max_receive_bytes <= _MAX_GRPC_INT,
        "max_concurrent_rpcs": 0 <= s.max_concurrent_rpcs <= _MAX_GRPC_INT,
        # A reply must hold at least one pattern of the largest size stored (1 MiB data,
        # a 1M-value trajectory of 8 MiB).
        "max_send_bytes": 16 * 1024 * 1024 <= s.max_send_bytes <= _MAX_GRPC_INT,
        "data_dir": bool(s.data_dir),
        # 0 would answer a retried request_id by applying it again, which the clients
        # rely on never happening.
        "dedup_window": s.dedup_window >= 1,
        "busy_timeout_ms": 0 <= s.busy_timeout_ms <= _MAX_GRPC_INT,
        "wal_autocheckpoint_pages": s.wal_autocheckpoint_pages >= 0,
        "zstd_dict_min_samples": s.zstd_dict_min_samples >= 1,
        "l1_max_entries": s.l1_max_entries >= 1,
        "l1_max_bytes": s.l1_max_bytes >= 1,
        "l2_max_bytes": s.l2_max_bytes >= 0,
        "l2_ttl_s": 0 <= s.l2_ttl_s < math.inf,
        "l3_max_entries": s.l3_max_entries >= 0,
        # NaN or inf here kept a BOUNDED reply for ever.
        "l3_max_staleness_ms": 0 <= s.l3_max_staleness_ms < math.inf,
        "slow_query_ms": 0 <= s.slow_query_ms < math.inf,
        "warm_count": s.warm_count >= 0,
        "query_threads": 1 <= s.query_threads <= 64,
        "grace_s": 0 <= s.grace_s < math.inf,
    }
    bad = [name for name, ok in problems.items() if not ok]
    if bad:
        raise ValueError(f"setting {bad[0]}: {getattr(s, bad[0])!r} is out of range")
