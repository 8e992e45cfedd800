"""Deterministic test corpus shaped like what the learning workers store.

Used by tests/test_codecs.py (small slices, so tests stay fast) and by
loadtest/bench_codecs.py (the full 10,000 records). Every generator takes a seed
and uses its own ``random.Random`` / ``numpy.random.Generator``, so the same
seed gives the same bytes on every run and machine.

Payloads are JSON documents (200 B - 4 KiB) with the fields a worker writes:
type, name, description, conditions, an ``actions`` list of tool steps with
parameters, success criteria, metrics and tags. Vocabulary is drawn from fixed
word lists, numbers and identifiers are random, so the corpus is repetitive in
structure (as real patterns are) but not in content.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "PAYLOAD_MAX_BYTES",
    "PAYLOAD_MIN_BYTES",
    "embeddings",
    "payloads",
    "trajectory_float32_walk",
    "trajectory_full_precision_walk",
    "trajectory_smooth",
    "trajectory_white_noise",
]

PAYLOAD_MIN_BYTES = 200
PAYLOAD_MAX_BYTES = 4096

_TYPES = (
    "tool_sequence", "error_recovery", "optimization", "workflow", "query_template",
    "retry_policy", "code_fix", "data_pipeline", "deployment", "diagnosis",
)
_DOMAINS = (
    "postgres", "kubernetes", "s3", "billing", "auth", "search", "etl", "cache",
    "payments", "email", "webhook", "ci", "metrics", "inventory", "ledger", "crm",
)
_VERBS = (
    "fetch", "validate", "retry", "rollback", "summarise", "index", "migrate", "resize",
    "rotate", "deduplicate", "reconcile", "notify", "restart", "scale", "compact",
    "backfill", "throttle", "classify", "extract", "merge",
)
_NOUNS = (
    "records", "invoices", "pods", "tokens", "queries", "sessions", "files", "rows",
    "events", "users", "orders", "documents", "snapshots", "credentials", "replicas",
    "partitions", "reports", "alerts", "embeddings", "batches",
)
_ADJECTIVES = (
    "stale", "failed", "duplicate", "slow", "large", "pending", "expired", "partial",
    "corrupted", "unindexed", "orphaned", "throttled", "recent", "missing", "hot",
)
_FILLER = (
    "when", "the", "a", "is", "after", "before", "if", "then", "with", "from", "into",
    "for", "each", "all", "only", "and", "or", "without", "until", "because", "so",
    "upstream", "downstream", "service", "request", "timeout", "error", "returns",
    "reports", "exceeds", "threshold", "window", "limit", "previous", "step", "result",
    "cluster", "region", "tenant", "job", "worker", "queue", "latency", "budget",
)
_TOOLS = (
    "http.get", "http.post", "sql.query", "sql.execute", "shell.run", "kubectl.apply",
    "kubectl.rollout", "s3.list", "s3.copy", "s3.delete", "slack.post", "email.send",
    "python.eval", "git.checkout", "git.diff", "llm.complete", "llm.classify",
    "vector.search", "cache.invalidate", "metrics.query", "pagerduty.ack", "jira.create",
    "json.transform", "csv.parse", "file.read", "file.write", "sleep", "assert.equals",
)
_PARAM_NAMES = (
    "url", "query", "table", "timeout_ms", "retries", "limit", "offset", "bucket",
    "prefix", "namespace", "deployment", "channel", "template", "model", "temperature",
    "max_tokens", "path", "branch", "command", "batch_size", "index", "top_k", "key",
    "region", "dry_run", "expected", "format", "encoding", "headers", "method",
)
_CONDITION_FIELDS = (
    "error.code", "error.message", "latency_ms", "status", "attempt", "queue.depth",
    "cpu.percent", "memory.mb", "http.status", "rows.affected", "tenant.tier",
    "input.size_bytes", "time.hour", "service.name", "user.role",
)
_OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "matches")
_METRIC_NAMES = (
    "success_rate", "avg_latency_ms", "p95_latency_ms", "executions", "failures",
    "tokens_used", "cost_usd", "rows_processed", "retries", "time_saved_s",
)
_CRITERIA = (
    "status == 200", "rows.affected > 0", "error is null", "latency_ms < 500",
    "output matches schema", "no alerts fired for 10 minutes", "all replicas ready",
    "checksum equal", "queue.depth < 100", "user confirmed", "tests pass",
    "cost_usd < budget", "response contains id",
)
_AUTHORS = ("learning-worker-1", "learning-worker-2", "learning-worker-3", "curator", "import")


def _sentence(rng: random.Random, words: int) -> str:
    parts: list[str] = []
    for _ in range(words):
        pool = rng.choice((_FILLER, _FILLER, _VERBS, _NOUNS, _ADJECTIVES, _DOMAINS))
        parts.append(rng.choice(pool))
    return " ".join(parts).capitalize() + "."


def _identifier(rng: random.Random) -> str:
    return f"{rng.choice(_DOMAINS)}-{rng.getrandbits(32):08x}"


def _param_value(rng: random.Random, name: str) -> Any:
    if name in ("timeout_ms", "retries", "limit", "offset", "batch_size", "top_k", "max_tokens"):
        return rng.choice((1, 3, 5, 10, 50, 100, 250, 500, 1000, 5000, rng.randint(1, 30000)))
    if name in ("temperature",):
        return round(rng.random(), 2)
    if name == "dry_run":
        return rng.random() < 0.5
    if name == "url":
        host, version = rng.choice(_DOMAINS), rng.randint(1, 3)
        return f"https://{host}.internal/api/v{version}/{rng.choice(_NOUNS)}"
    if name == "query":
        return (
            f"SELECT id, status FROM {rng.choice(_NOUNS)} WHERE {rng.choice(_ADJECTIVES)} = "
            f"true AND updated_at < now() - interval '{rng.randint(1, 72)} hours' "
            f"LIMIT {rng.choice((10, 100, 1000))}"
        )
    if name == "headers":
        return {"content-type": "application/json", "x-request-id": _identifier(rng)}
    if name == "command":
        return f"{rng.choice(_VERBS)} --{rng.choice(_PARAM_NAMES)}={rng.choice(_NOUNS)}"
    if name == "path":
        return f"/var/lib/{rng.choice(_DOMAINS)}/{rng.choice(_NOUNS)}/{rng.randint(0, 999)}.json"
    return f"{rng.choice(_ADJECTIVES)}_{rng.choice(_NOUNS)}"


def _action(rng: random.Random, step: int) -> dict[str, Any]:
    names = rng.sample(_PARAM_NAMES, rng.randint(1, 5))
    action: dict[str, Any] = {
        "step": step,
        "tool": rng.choice(_TOOLS),
        "parameters": {name: _param_value(rng, name) for name in sorted(names)},
    }
    if rng.random() < 0.6:
        action["on_error"] = rng.choice(("retry", "skip", "abort", "rollback", "escalate"))
    if rng.random() < 0.4:
        action["note"] = _sentence(rng, rng.randint(4, 12))
    return action


def _payload(rng: random.Random, index: int) -> dict[str, Any]:
    verb, noun, adj = rng.choice(_VERBS), rng.choice(_NOUNS), rng.choice(_ADJECTIVES)
    domain = rng.choice(_DOMAINS)
    # A skewed step count gives the 200 B - 4 KiB spread: most patterns are short.
    steps = min(int(rng.expovariate(1 / 3.5)), 14)
    payload: dict[str, Any] = {
        "type": rng.choice(_TYPES),
        "name": f"{verb}-{adj}-{noun}-{domain}",
        "description": " ".join(
            _sentence(rng, rng.randint(3, 18)) for _ in range(rng.randint(1, 3))
        ),
        "conditions": [
            {
                "field": rng.choice(_CONDITION_FIELDS),
                "op": rng.choice(_OPERATORS),
                "value": rng.choice((rng.randint(0, 1000), rng.choice(_ADJECTIVES), domain)),
            }
            for _ in range(rng.randint(0, 4))
        ],
        "actions": [_action(rng, step + 1) for step in range(steps)],
        "success_criteria": rng.sample(_CRITERIA, rng.randint(1, 3)),
        "metrics": {
            name: round(rng.uniform(0, 1000), rng.choice((0, 2, 3)))
            for name in rng.sample(_METRIC_NAMES, rng.randint(2, 6))
        },
        "tags": rng.sample(_DOMAINS + _ADJECTIVES, rng.randint(1, 5)),
        "source": {"worker": rng.choice(_AUTHORS), "run_id": _identifier(rng), "seq": index},
        "schema_version": 2,
    }
    return payload


def payloads(count: int = 10_000, seed: int = 1) -> list[bytes]:
    """``count`` compact JSON payloads, each between 200 B and 4 KiB."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for index in range(count):
        doc = _payload(rng, index)
        blob = json.dumps(doc, separators=(",", ":")).encode()
        # Trim steps until it fits, then pad the description up to the floor:
        # keeps every record inside the stated size band without changing its shape.
        while len(blob) > PAYLOAD_MAX_BYTES and doc["actions"]:
            doc["actions"].pop()
            blob = json.dumps(doc, separators=(",", ":")).encode()
        while len(blob) < PAYLOAD_MIN_BYTES:
            doc["description"] += " " + _sentence(rng, 8)
            blob = json.dumps(doc, separators=(",", ":")).encode()
        out.append(blob)
    return out


def embeddings(count: int = 10_000, dims: int = 384, seed: int = 2) -> npt.NDArray[np.float32]:
    """``count`` random unit vectors (float32), shape (count, dims)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dims))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def trajectory_smooth(
    steps: int = 200, dims: int = 8, seed: int = 3, resolution: float = 1e-3
) -> npt.NDArray[np.float64]:
    """Random walk with small steps, logged at a fixed resolution (like a sensor
    or a rounded state): steps x dims, row-major, float64."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-50, 50, size=dims)
    walk = start + np.cumsum(rng.normal(0.0, 0.01, size=(steps, dims)), axis=0)
    return np.round(walk / resolution) * resolution


def trajectory_float32_walk(
    steps: int = 200, dims: int = 8, seed: int = 4
) -> npt.NDArray[np.float64]:
    """Random walk computed in float32 (what most ML states are) then widened to
    float64, as protobuf ``repeated double`` carries it."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-50, 50, size=dims).astype(np.float32)
    steps_f32 = rng.normal(0.0, 0.01, size=(steps, dims)).astype(np.float32)
    walk = start + np.cumsum(steps_f32, axis=0, dtype=np.float32)
    return walk.astype(np.float64)


def trajectory_full_precision_walk(
    steps: int = 200, dims: int = 8, seed: int = 5
) -> npt.NDArray[np.float64]:
    """Random walk with full float64 precision: every step carries ~40 bits of
    fresh entropy, which bounds what any lossless codec can save."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-50, 50, size=dims)
    return start + np.cumsum(rng.normal(0.0, 0.01, size=(steps, dims)), axis=0)


def trajectory_white_noise(
    steps: int = 200, dims: int = 8, seed: int = 6
) -> npt.NDArray[np.float64]:
    """Independent standard normal values: incompressible in the mantissa."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((steps, dims))
