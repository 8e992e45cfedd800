"""The confidence model: worked examples by hand, and batches equal one-by-one (Hypothesis)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patternstore import ORDER_BY_LOWER_BOUND, Pattern, PatternStoreClient, update_request
from patternstore_server.confidence import Evidence, ModelParams, apply_outcome, lower_bound

from .conftest import FakeClock, RunningServer, make_settings

DAY = 86_400
PERIOD = 30 * DAY


def _ts(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds))


def test_worked_example_beta(client: PatternStoreClient, clock: FakeClock) -> None:
    client.store_pattern(Pattern(id="p", type="plan"))
    t0 = clock.now_ns // 10**9 - 3 * PERIOD
    r = client.update_confidence("p", "success", observed_at=_ts(t0))
    assert r.confidence == pytest.approx(2 / 3, abs=1e-12)
    # 30 days later: evidence above the prior decays by 0.95, then a weight-2 failure.
    r = client.update_confidence("p", "failure", weight=2, observed_at=_ts(t0 + PERIOD))
    assert abs(r.confidence - 0.3939393939393939) < 1e-12  # 1.95 / 4.95
    r = client.update_confidence("p", "partial", weight=0.5, observed_at=_ts(t0 + 2 * PERIOD))
    assert abs(r.confidence - 0.4059405940594059) < 1e-12  # 2.1525 / 5.3025
    p = client.get_pattern("p")
    assert abs(p.alpha - 2.1525) < 1e-12 and abs(p.beta - 3.15) < 1e-12
    assert (p.usage_count, p.success_count, p.failure_count) == (3, 1, 1)
    assert p.last_outcome_at.seconds == t0 + 2 * PERIOD
    # An outcome observed before the last one does not decay (dt = max(0, ...)) and does
    # not move last_outcome_at back.
    r = client.update_confidence("p", "success", observed_at=_ts(t0))
    assert abs(client.get_pattern("p").alpha - 3.1525) < 1e-12
    assert client.get_pattern("p").last_outcome_at.seconds == t0 + 2 * PERIOD


def test_lower_bound_worked_example() -> None:
    assert abs(lower_bound(2.0, 1.0, 2 / 3) - 0.27897094877444206) < 1e-15
    assert lower_bound(1.0, 50.0, 1 / 51) == 0.0  # clamped at zero


def test_lower_bound_ordering_prefers_evidence(client: PatternStoreClient) -> None:
    client.store_patterns([Pattern(id="lucky", type="t"), Pattern(id="proven", type="t")])
    client.update_confidence_batch([update_request("lucky", "success")] * 2)  # 0.75 on two
    client.update_confidence_batch(
        [update_request("proven", "success")] * 30 + [update_request("proven", "failure")] * 10
    )
    client.flush()  # the ordering follows outcomes within rank_interval_ms; Flush: at once
    conf = [p.id for p in client.query_patterns("t").patterns]
    lb = [p.id for p in client.query_patterns("t", order_by=ORDER_BY_LOWER_BOUND).patterns]
    assert conf == ["lucky", "proven"]  # 0.75 > 31/42
    assert lb == ["proven", "lucky"]


def test_worked_example_ema(start_server: object, clock: FakeClock) -> None:
    srv = start_server(clock, confidence_model="ema")  # type: ignore[operator]
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="p", type="plan"))
        t0 = clock.now_ns // 10**9 - 2 * PERIOD
        assert (
            abs(c.update_confidence("p", "success", observed_at=_ts(t0)).confidence - 0.55) < 1e-12
        )
        r = c.update_confidence("p", "failure", weight=2, observed_at=_ts(t0 + PERIOD))
        assert abs(r.confidence - 0.438) < 1e-12  # 0.5 + 0.05*0.95 = 0.5475; -0.2*0.5475


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data: Path = tmp_path_factory.mktemp("hyp") / "data"
    srv = RunningServer(make_settings(data), time.time_ns)
    yield srv
    srv.stop()


_ids = itertools.count()
outcomes = st.lists(
    st.tuples(
        st.sampled_from(["success", "failure", "partial"]),
        st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e6)),
        st.integers(min_value=0, max_value=4 * PERIOD),  # observed this long after a base
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(outcomes=outcomes)
def test_a_batch_equals_one_at_a_time(
    shared_server: RunningServer, outcomes: list[tuple[str, float, int]]
) -> None:
    base = time.time() - 5 * PERIOD
    n = next(_ids)
    batched, single = f"batched-{n}", f"single-{n}"
    with PatternStoreClient(shared_server.target) as c:
        c.store_patterns([Pattern(id=batched, type="h"), Pattern(id=single, type="h")])
        reqs = [(o, w, _ts(base + dt)) for o, w, dt in outcomes]
        batch = c.update_confidence_batch(
            [update_request(batched, o, weight=w, observed_at=t) for o, w, t in reqs]
        )
        one_by_one = [c.update_confidence(single, o, weight=w, observed_at=t) for o, w, t in reqs]
        assert [r.confidence for r in batch.results] == [r.confidence for r in one_by_one]
        a, b = c.get_pattern(batched), c.get_pattern(single)
    for field in ("alpha", "beta", "confidence", "usage_count", "success_count", "failure_count"):
        assert getattr(a, field) == getattr(b, field), field  # bit-identical, not approximately
    # And both equal the model applied in order in this process.
    p = ModelParams()
    e = Evidence(1.0, 1.0, 0.5)
    for o, w, t in reqs:
        score = {"success": 1.0, "failure": 0.0, "partial": 0.5}[o]
        e = apply_outcome(e, score, w or 1.0, t.ToNanoseconds(), p)
    assert (a.alpha, a.beta, a.confidence) == (e.alpha, e.beta, e.confidence)


@settings(max_examples=300, deadline=None)
@given(
    alpha=st.floats(0.01, 1e6),
    beta=st.floats(0.01, 1e6),
    confidence=st.floats(0.0, 1.0),
    counts=st.tuples(*[st.integers(0, 10**9)] * 3),
    last_s=st.one_of(st.just(0), st.integers(1, 4_000_000_000)),
    score=st.sampled_from([0.0, 0.5, 1.0]),
    weight=st.floats(0.01, 1000.0),
    dt_s=st.integers(-10_000, 10**8),
    model=st.sampled_from(["beta", "ema"]),
)
def test_the_servers_in_place_learn_matches_apply_outcome(
    alpha: float,
    beta: float,
    confidence: float,
    counts: tuple[int, int, int],
    last_s: int,
    score: float,
    weight: float,
    dt_s: int,
    model: str,
) -> None:
    # model.learn is the event loop's fused form of the contract's apply_outcome: the
    # same bits in the message and in the learned row, for both models.
    from patternstore.v1 import patternstore_pb2 as pb
    from patternstore_server.model import (
        evidence_of,
        learn,
        learned_row,
        set_evidence,
        set_ns,
    )

    params = ModelParams(model=model)
    p = pb.Pattern(
        id="p",
        alpha=alpha,
        beta=beta,
        confidence=confidence,
        usage_count=counts[0],
        success_count=counts[1],
        failure_count=counts[2],
        version=7,
    )
    if last_s:
        p.last_outcome_at.seconds = last_s
    t_ns = max(1, last_s + dt_s) * 10**9 + 123
    now = t_ns + 5
    expected = pb.Pattern()
    expected.CopyFrom(p)
    set_evidence(expected, apply_outcome(evidence_of(expected), score, weight, t_ns, params))
    set_ns(expected.updated_at, now)
    expected.version += 1
    row = learn(p, score, weight, t_ns, now, 42, params)
    assert p == expected
    assert row == learned_row(expected, 42)


def test_a_batch_over_many_patterns_is_written_whole(
    start_server: Callable[..., RunningServer], clock: FakeClock
) -> None:
    """One commit's learned rows go to SQLite in chunks of statements (256 rows each):
    after a restart, which reads them back from SQLite, every pattern of a batch over
    more patterns than a chunk, and repeated ones, carries all its outcomes."""
    from patternstore.v1 import patternstore_pb2 as pb

    n = 600
    ids = [f"chunked-{i:04d}" for i in range(n)]
    server = start_server(clock)
    with PatternStoreClient(server.target, timeout=30) as c:
        c.store_patterns([Pattern(id=pid, type="h") for pid in ids])
        # Every pattern once, the first 100 three times more: 900 outcomes in one call.
        targets = ids + ids[:100] * 3
        updates = [
            update_request(pid, "success" if i % 2 else "failure") for i, pid in enumerate(targets)
        ]
        reply = c.update_confidence_batch(updates, durability=pb.DURABILITY_COMMITTED)
        assert all(r.code == 0 for r in reply.results)
        expected = {pid: c.get_pattern(pid) for pid in ids}
    server.stop()
    server = start_server(clock)
    with PatternStoreClient(server.target, timeout=30) as c:
        stored = {p.id: p for p in c.get_patterns(ids).patterns}
    assert set(stored) == set(ids)
    for pid in ids:
        got, want = stored[pid], expected[pid]
        assert (got.alpha, got.beta, got.confidence, got.usage_count) == (
            want.alpha,
            want.beta,
            want.confidence,
            want.usage_count,
        ), pid
    assert stored[ids[0]].usage_count == 4 and stored[ids[-1]].usage_count == 1
