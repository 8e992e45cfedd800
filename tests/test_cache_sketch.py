"""The frequency sketch's buffered increments and its admission duel: cheaper, and
deciding as the plain count-min estimates would."""

from __future__ import annotations

import random

from patternstore_server.cache import FrequencySketch


def _counted(sketch: FrequencySketch, keys: list[str]) -> FrequencySketch:
    for key in keys:
        sketch.increment(key)
    return sketch


def test_pending_counts_are_part_of_every_estimate() -> None:
    sketch = FrequencySketch(1000)
    for _ in range(3):
        sketch.increment("a")
    assert sketch.frequency("a") == 3  # still pending: not yet in the table
    sketch.flush()
    assert sketch.frequency("a") == 3
    for _ in range(20):
        sketch.increment("a")
    assert sketch.frequency("a") == 15  # saturates, pending or not
    sketch.flush()
    assert sketch.frequency("a") == 15


def test_batched_increments_equal_one_by_one_exactly() -> None:
    # Batches of hits go to the table in one numpy update; keys sharing a counter
    # must all count (ufunc.at), so the table is the one a loop would build.
    rng = random.Random(7)
    keys = [f"k{rng.randrange(3000)}" for _ in range(8000)]
    batched = FrequencySketch(1000)  # a sample of 10,000: no halving in between
    for start in range(0, len(keys), 100):
        batched.increment_many(keys[start : start + 100])
    single = _counted(FrequencySketch(1000), keys)
    batched.flush()
    single.flush()
    assert batched._table == single._table


def test_halving_ages_the_pending_counts_too() -> None:
    sketch = FrequencySketch(100)  # halved every 1,000 increments
    for _ in range(8):
        sketch.increment("hot")  # pending
    sketch.increment_many(["cold"] * 1000)  # straight to the table; the sample is full
    assert (sketch.frequency("hot"), sketch.frequency("cold")) == (4, 7)


def test_duel_decides_as_the_full_estimates() -> None:
    rng = random.Random(3)
    sketch = FrequencySketch(50)
    universe = [f"k{i}" for i in range(400)]
    for step in range(20_000):
        key = universe[min(int(rng.paretovariate(1.0)) - 1, len(universe) - 1)]
        if rng.random() < 0.5:
            sketch.increment(key)
        else:
            sketch.increment_many([key] * rng.randrange(1, 30))
        candidate, victim = rng.choice(universe), rng.choice(universe[:40])
        give_up = rng.choice([0, 2, 5, 15])
        want_c, want_v = sketch.frequency(candidate), sketch.frequency(victim)
        got_c, got_v = sketch.duel(candidate, victim, give_up)
        assert got_v == want_v, step
        # The candidate's figure may be a bound, but one that decides the rule
        # "admit if candidate > victim, or if candidate > give_up and ..." the same.
        assert (got_c > got_v) == (want_c > want_v), step
        if want_c <= want_v:
            assert (got_c > give_up) == (want_c > give_up), step


def test_the_cached_victim_count_follows_the_table() -> None:
    sketch = FrequencySketch(1000)
    sketch.increment("victim")
    sketch.flush()
    assert sketch.duel("new", "victim", 5)[1] == 1
    sketch.increment("victim")  # pending
    assert sketch.duel("new", "victim", 5)[1] == 2
    sketch.flush()  # now in the table: the cached count must not be reused
    assert sketch.duel("new", "victim", 5)[1] == 2
    sketch.increment_many(["victim"] * 30)  # a large batch, straight to the table
    assert sketch.duel("new", "victim", 5)[1] == 15
    sketch.clear()
    assert sketch.duel("new", "victim", 5) == (0, 0)


def test_a_saturated_victim_is_never_beaten() -> None:
    sketch = FrequencySketch(1000)
    sketch.increment_many(["victim"] * 30)
    for _ in range(40):
        sketch.increment("candidate")  # a pending count above 15
    candidate_freq, victim_freq = sketch.duel("candidate", "victim", 5)
    assert victim_freq == 15 and not candidate_freq > victim_freq
