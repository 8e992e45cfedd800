"""Outcomes with a request_id are applied once, even when the retry crosses a kill -9."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import grpc
import pytest
from patternstore import (
    DURABILITY_QUEUED,
    OUTCOME_FAILURE,
    OUTCOME_SUCCESS,
    Pattern,
    PatternStoreClient,
    RetryPolicy,
    UpdateConfidenceRequest,
)
from patternstore.v1 import patternstore_pb2 as pb

from ..proc import ServerProcess
from .ledger import OBSERVED_AT
from .test_crash import chaos_seed

NO_RETRY = RetryPolicy(attempts=1)


def _outcome(pid: str, request_id: str, success: bool = True) -> UpdateConfidenceRequest:
    return UpdateConfidenceRequest(
        id=pid,
        outcome=OUTCOME_SUCCESS if success else OUTCOME_FAILURE,
        observed_at=OBSERVED_AT,
        request_id=request_id,
    )


def _learned(p: pb.Pattern) -> tuple[int, int, float, float, float]:
    return (p.version, p.usage_count, p.alpha, p.beta, p.confidence)


def test_retry_after_kill9_answers_the_first_reply_and_applies_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data)
    try:
        with PatternStoreClient(server.target, retry=NO_RETRY) as c:
            for pid in ("p", "q"):
                c.store_pattern(Pattern(id=pid, type="idem"))
            single = c.update_confidence("p", "success", observed_at=OBSERVED_AT, request_id="one")
            batch = c.update_confidence_batch(
                [_outcome("p", "b1", False), _outcome("q", "b2"), _outcome("q", "b3", False)]
            )
            queued = c.update_confidence(
                "q",
                "failure",
                observed_at=OBSERVED_AT,
                request_id="queued",
                durability=DURABILITY_QUEUED,
            )
            c.flush()
            streamed = c.record_outcomes([_outcome("p", "s1"), _outcome("q", "s2")])
            assert (streamed.accepted, streamed.duplicates) == (2, 0)
            before = {pid: _learned(c.get_pattern(pid)) for pid in ("p", "q")}
        server.kill9()
    finally:
        server.close()

    server = ServerProcess(data)
    try:
        with PatternStoreClient(server.target, retry=NO_RETRY) as c:
            again = c.update_confidence("p", "success", observed_at=OBSERVED_AT, request_id="one")
            assert again.duplicate
            assert (again.confidence, again.sequence) == (single.confidence, single.sequence)

            again_batch = c.update_confidence_batch(
                [_outcome("p", "b1", False), _outcome("q", "b2"), _outcome("q", "b3", False)]
            )
            for first, second in zip(batch.results, again_batch.results, strict=True):
                assert second.code == 0 and second.duplicate
                assert (second.confidence, second.sequence) == (first.confidence, first.sequence)

            again_queued = c.update_confidence(
                "q", "failure", observed_at=OBSERVED_AT, request_id="queued"
            )
            assert again_queued.duplicate
            assert again_queued.confidence == queued.confidence

            # A fresh write first: without it the all-duplicate stream hits the restart hang
            # of test_flush_right_after_a_restart_returns (its reply waits for durability).
            c.store_pattern(Pattern(id="other", type="idem"))
            again_streamed = c.record_outcomes([_outcome("p", "s1"), _outcome("q", "s2")])
            assert (again_streamed.accepted, again_streamed.duplicates) == (0, 2)

            after = {pid: _learned(c.get_pattern(pid)) for pid in ("p", "q")}
            assert after == before, "a retried outcome was applied a second time"

            # A request id names one outcome of one pattern: reusing it elsewhere is an error.
            with pytest.raises(grpc.RpcError) as err:
                c.update_confidence("q", "success", request_id="one")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.close()


def test_flush_right_after_a_restart_returns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data)
    try:
        with PatternStoreClient(server.target) as c:
            c.store_pattern(Pattern(id="p", type="idem"))
            c.update_confidence("p", "success", request_id="r1")
        assert server.terminate() == 0  # a clean stop: this is no crash artefact
    finally:
        server.close()
    server = ServerProcess(data)
    try:
        with PatternStoreClient(server.target, timeout=2, retry=NO_RETRY) as c:
            c.flush()
            c.query_patterns(consistency=pb.CONSISTENCY_STRONG)
            retried = c.record_outcomes([_outcome("p", "r1")])
            assert retried.duplicates == 1
    finally:
        server.close()


def _send_until_killed(
    target: str, pid: str, sent: list[str], acked: set[str], stop: threading.Event
) -> None:
    with PatternStoreClient(target, timeout=5, retry=NO_RETRY) as c:
        while not stop.is_set():
            rid = f"{pid}-r{len(sent)}"  # unique across rounds
            sent.append(rid)  # before the call: it may land without a reply
            try:
                c.update_confidence(pid, "success", observed_at=OBSERVED_AT, request_id=rid)
            except grpc.RpcError:
                return
            acked.add(rid)


def test_outcomes_in_flight_at_a_kill_are_applied_exactly_once_after_retry(
    tmp_path: Path,
) -> None:
    """Kill mid-stream, then retry every request id sent: each lands exactly once."""
    seed = chaos_seed()
    print(f"\nchaos seed {seed}")
    rng = random.Random(seed)
    data = tmp_path / "data"
    pids = [f"p{n}" for n in range(4)]
    sent: dict[str, list[str]] = {pid: [] for pid in pids}
    for rnd in range(3):
        server = ServerProcess(data)
        try:
            if rnd == 0:
                with PatternStoreClient(server.target) as c:
                    c.store_patterns([Pattern(id=pid, type="idem") for pid in pids])
            acked: dict[str, set[str]] = {pid: set() for pid in pids}
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=_send_until_killed,
                    args=(server.target, pid, sent[pid], acked[pid], stop),
                )
                for pid in pids
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.1, 0.6))
            server.kill9()
            stop.set()
            for t in threads:
                t.join(10)
        finally:
            server.close()

        server = ServerProcess(data)
        try:
            with PatternStoreClient(server.target, retry=NO_RETRY) as c:
                for pid in pids:
                    # The client retries the newest ids first, as a worker resuming would.
                    for rid in reversed(sent[pid]):
                        r = c.update_confidence(
                            pid, "success", observed_at=OBSERVED_AT, request_id=rid
                        )
                        if rid in acked[pid]:
                            assert r.duplicate, f"acknowledged {rid} was forgotten by the restart"
                    p = c.get_pattern(pid)
                    assert p.usage_count == len(sent[pid]), (
                        f"{pid}: {len(sent[pid])} distinct request ids, applied {p.usage_count}"
                    )
        finally:
            server.close()
    print(f"request ids sent and retried: {sum(len(s) for s in sent.values())}")


def test_dedup_window_is_bounded_and_survives_a_kill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    window = 4
    server = ServerProcess(data, "--dedup-window", str(window))
    try:
        with PatternStoreClient(server.target, retry=NO_RETRY) as c:
            c.store_pattern(Pattern(id="p", type="idem"))
            first = {
                f"r{i}": c.update_confidence(
                    "p", "success", observed_at=OBSERVED_AT, request_id=f"r{i}"
                )
                for i in range(10)
            }
            # The newest `window` ids are remembered; asking again changes nothing.
            for i in range(10 - window, 10):
                r = c.update_confidence("p", "success", request_id=f"r{i}")
                assert r.duplicate and r.sequence == first[f"r{i}"].sequence
            assert c.get_pattern("p").usage_count == 10
        server.kill9()
    finally:
        server.close()

    server = ServerProcess(data, "--dedup-window", str(window))
    try:
        with PatternStoreClient(server.target, retry=NO_RETRY) as c:
            for i in range(10 - window, 10):
                r = c.update_confidence("p", "success", request_id=f"r{i}")
                assert r.duplicate, f"r{i} is inside the window but was forgotten by the restart"
                assert (r.sequence, r.confidence) == (
                    first[f"r{i}"].sequence,
                    first[f"r{i}"].confidence,
                )
            assert c.get_pattern("p").usage_count == 10
            # Older ids fell out of the window: a repeat is a new outcome (the bound).
            older = c.update_confidence("p", "success", request_id=f"r{9 - window}")
            assert not older.duplicate
            assert c.get_pattern("p").usage_count == 11
    finally:
        server.close()
