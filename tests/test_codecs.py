"""Codec contracts: round trips, format bytes, and rows written by older formats.

One contract suite (``TestContract``) runs against every codec; codec-specific
properties follow. Golden blobs are hex literals produced by the first version
of each format: they must decode forever, whatever the encoders write today.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from patternstore_server.codecs import (
    EMBEDDING_STORAGES,
    CodecError,
    PayloadDictionary,
    PayloadEncoder,
    RatioTracker,
    content_key,
    embedding,
    payload,
    train_dictionary,
    trajectory,
)
from patternstore_server.codecs._int8_tables import int8_dictionary

from tests import corpus

# --- shared fixtures -------------------------------------------------------------

_SAMPLE_PAYLOADS = corpus.payloads(count=700, seed=11)
# Raw-content dictionaries (not trained) are legal zstd dictionaries and keep the
# golden blobs below small enough to write down.
_GOLDEN_DICT = b'{"type":"workflow","name":"","actions":[{"tool":"http.get","parameters":{}}]}'
_GOLDEN_MESSAGE = (
    b'{"type":"workflow","name":"retry-failed-orders",'
    b'"actions":[{"tool":"http.get"},{"tool":"http.get"}]}'
)


@pytest.fixture(scope="module")
def trained() -> tuple[bytes, bytes]:
    """Two dictionaries trained on disjoint samples, as a retrain would produce."""
    first = train_dictionary(_SAMPLE_PAYLOADS[:300], dict_size=8192)
    second = train_dictionary(_SAMPLE_PAYLOADS[300:600], dict_size=8192)
    return first, second


def _bits(values: npt.NDArray[np.float64]) -> list[int]:
    return [int(word) for word in np.asarray(values, dtype="<f8").reshape(-1).view("<u8")]


# --- one contract, every codec ---------------------------------------------------


@dataclass
class CodecCase:
    """How the contract suite drives one codec."""

    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    same: Callable[[Any, Any], bool]
    samples: list[Any]
    format_bytes: frozenset[int]
    # (hex blob written by format version 1, the value it holds)
    golden: list[tuple[str, Any]] = field(default_factory=list)
    # Compressed formats know their length; raw ones (and int8 codes) cannot tell a
    # truncated row from a shorter value.
    detects_truncation: bool = False


def _payload_case(
    name: str, encoder: PayloadEncoder, dictionaries: Mapping[int, bytes]
) -> CodecCase:
    return CodecCase(
        name=name,
        encode=encoder.encode,
        decode=lambda blob: payload.decode(blob, dictionaries),
        same=lambda a, b: bool(a == b),
        samples=[b"", b"x", bytes(range(256)), *_SAMPLE_PAYLOADS[600:620]],
        format_bytes=frozenset({payload.FORMAT_RAW, payload.FORMAT_ZSTD, payload.FORMAT_ZSTD_DICT}),
        detects_truncation=True,
        golden=[
            ("006869", b"hi"),
            (
                "0120646d020012051116a05707eca05232a5ff8bcc52be9b000cc25b1e5571085120f1ad04c0ba8b"
                "e7d56e1f06f9b636f5604ede580f6f39aa9241e5712b3faf87592777ab90c1eb9e57f6fa300100"
                "cf25330a",
                _GOLDEN_MESSAGE,
            ),
            (
                "02ac0220641d0100c072657472792d6661696c65642d6f72646572737d2c7d5d7d031006b7878f"
                "4d40a115",
                _GOLDEN_MESSAGE,
            ),
        ],
    )


def _embedding_case(storage: str) -> CodecCase:
    rng = np.random.default_rng(7)
    vectors = [v for v in corpus.embeddings(count=5, dims=384, seed=8)]
    vectors += [np.zeros(3, dtype=np.float32), np.full(5, 2.5, dtype=np.float32)]
    vectors.append(rng.uniform(-3, 3, size=17).astype(np.float32))

    def same(original: Any, decoded: Any) -> bool:
        err = float(np.max(np.abs(decoded - original), initial=0.0))
        return decoded.dtype == np.float32 and err <= embedding.max_abs_error_bound(
            original, storage
        )

    golden_hex = {
        "float32": "01000000003f000080be0000803f00000000",
        "float16": "0101003800b4003c0000",
        "int16": "0102000080bea100a03799990000ffff3333",
        "int8": "0103000080bea1a0a03b9900ff33",
    }
    expected = np.array([0.5, -0.25, 1.0, 0.0], dtype=np.float32)
    golden = [(golden_hex[storage], expected)]
    if storage == "int8":
        # Kind 0x04: the same codes entropy-coded with the shipped table.
        peaked = np.zeros(32, dtype=np.float32)
        peaked[:3] = [1.0, -1.0, 0.5]
        golden.append(("0104000080bf8180003c000055000020ff00bf7f01000c2002", peaked))
    return CodecCase(
        name=f"embedding-{storage}",
        encode=lambda vec: embedding.encode(vec, storage),
        decode=embedding.decode,
        same=same,
        samples=vectors,
        format_bytes=frozenset({embedding.VERSION}),
        golden=golden,
    )


_SPECIALS = np.array(
    [1.0, -0.0, 2.5, math.inf, 1.0009765625, math.nan, 1.5, -2.0], dtype=np.float64
)


def _trajectory_case() -> CodecCase:
    samples: list[Any] = [
        (corpus.trajectory_smooth(steps=50, dims=4), 4),
        (corpus.trajectory_float32_walk(steps=30, dims=3), 3),
        (corpus.trajectory_white_noise(steps=40, dims=2), 2),
        (_SPECIALS, 2),
        (np.zeros(0), 5),
    ]
    raw_golden = (bytes([0, 2]) + _SPECIALS.astype("<f8").tobytes()).hex()
    return CodecCase(
        name="trajectory",
        encode=lambda value: trajectory.encode(value[0], value[1]),
        decode=trajectory.decode,
        same=lambda a, b: a[1] == b[1] and _bits(a[0]) == _bits(b[0]),
        samples=samples,
        format_bytes=frozenset({0, 1, 2, 3}),
        detects_truncation=True,
        golden=[
            (raw_golden, (_SPECIALS, 2)),
            (
                "01022040250100b00000f03f002800fff72700f80f0080ff1f0010001080081000030fbe38478f"
                "35640458",
                (_SPECIALS, 2),
            ),
            (
                "02022040150100d00000ff0000ff0000f7f8f028270f001f10103f00000080000080020020c073"
                "0a17",
                (_SPECIALS, 2),
            ),
            (
                "03022040f50000c00000040400000000f0f4f40800f008f83f7f7f0080ff00bf01004b8005",
                (_SPECIALS, 2),
            ),
        ],
    )


def _cases() -> list[CodecCase]:
    golden_dicts = {300: _GOLDEN_DICT}
    return [
        _payload_case("payload-zstd", PayloadEncoder(), golden_dicts),
        _payload_case(
            "payload-dict",
            PayloadEncoder(level=3, dictionary=PayloadDictionary(300, _GOLDEN_DICT)),
            golden_dicts,
        ),
        *(_embedding_case(storage) for storage in EMBEDDING_STORAGES),
        _trajectory_case(),
    ]


@pytest.fixture(params=_cases(), ids=lambda case: case.name)
def case(request: pytest.FixtureRequest) -> CodecCase:
    result: CodecCase = request.param
    return result


class TestContract:
    def test_round_trip(self, case: CodecCase) -> None:
        for value in case.samples:
            assert case.same(value, case.decode(case.encode(value)))

    def test_first_byte_is_a_known_format(self, case: CodecCase) -> None:
        for value in case.samples:
            assert case.encode(value)[0] in case.format_bytes

    def test_every_past_format_still_decodes(self, case: CodecCase) -> None:
        for blob_hex, value in case.golden:
            assert case.same(value, case.decode(bytes.fromhex(blob_hex)))

    def test_unknown_format_byte_is_a_codec_error(self, case: CodecCase) -> None:
        with pytest.raises(CodecError):
            case.decode(bytes([0x7F, 0x01, 0x02, 0x03]))

    def test_empty_blob_is_a_codec_error(self, case: CodecCase) -> None:
        with pytest.raises(CodecError):
            case.decode(b"")

    def test_corrupt_blobs_raise_only_codec_error(self, case: CodecCase) -> None:
        for value in case.samples:
            blob = case.encode(value)
            for cut in range(1, len(blob), max(1, len(blob) // 7)):
                try:
                    case.decode(blob[:cut])
                except CodecError:
                    continue
                # Only formats that cannot know their length may decode a prefix.
                assert not (case.detects_truncation and blob[0] != 0), (cut, blob[:cut])

    def test_encoders_are_shared_safely_between_threads(self, case: CodecCase) -> None:
        expected = [case.encode(value) for value in case.samples]
        failures: list[str] = []

        def worker() -> None:
            for _ in range(20):
                for value, blob in zip(case.samples, expected, strict=True):
                    if case.encode(value) != blob or not case.same(value, case.decode(blob)):
                        failures.append(case.name)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []


# --- payload ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=6000), level=st.sampled_from([1, 3, 9]))
def test_payload_round_trips_arbitrary_bytes(data: bytes, level: int) -> None:
    blob = PayloadEncoder(level=level).encode(data)
    assert payload.decode(blob, {}) == data
    assert len(blob) <= len(data) + 1  # never worse than raw plus its flag byte


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=6000) | st.sampled_from(_SAMPLE_PAYLOADS[600:]))
def test_payload_round_trips_with_a_trained_dictionary(
    trained: tuple[bytes, bytes], data: bytes
) -> None:
    encoder = PayloadEncoder(dictionary=PayloadDictionary(5, trained[0]))
    blob = encoder.encode(data)
    assert payload.decode(blob, {5: trained[0]}) == data
    assert len(blob) <= len(data) + 1


def test_incompressible_payload_is_stored_raw() -> None:
    data = np.random.default_rng(1).bytes(2000)
    blob = PayloadEncoder().encode(data)
    assert blob[0] == payload.FORMAT_RAW
    assert len(blob) == len(data) + 1


def test_rows_from_an_old_dictionary_decode_after_a_retrain(trained: tuple[bytes, bytes]) -> None:
    first, second = trained
    old = PayloadEncoder(dictionary=PayloadDictionary(1, first))
    new = PayloadEncoder(dictionary=PayloadDictionary(2, second))
    rows = _SAMPLE_PAYLOADS[600:700]
    old_blobs = [old.encode(row) for row in rows]
    plain_blobs = [PayloadEncoder().encode(row) for row in rows]
    new_blobs = [new.encode(row) for row in rows]
    assert {payload.dictionary_id(blob) for blob in old_blobs} == {1}
    assert {payload.dictionary_id(blob) for blob in new_blobs} == {2}
    store = {1: first, 2: second}
    for row, old_blob, plain_blob, new_blob in zip(
        rows, old_blobs, plain_blobs, new_blobs, strict=True
    ):
        assert payload.decode(old_blob, store) == row
        assert payload.decode(plain_blob, store) == row
        assert payload.decode(new_blob, store) == row
    with pytest.raises(CodecError, match="dictionary 1"):
        payload.decode(old_blobs[0], {2: second})


def test_dictionary_beats_plain_zstd_on_held_out_payloads(trained: tuple[bytes, bytes]) -> None:
    held_out = _SAMPLE_PAYLOADS[600:700]
    with_dict = payload.saved_fraction(
        PayloadEncoder(dictionary=PayloadDictionary(1, trained[0])), held_out
    )
    without = payload.saved_fraction(PayloadEncoder(), held_out)
    assert with_dict > without + 0.15


def test_training_on_too_little_data_says_so() -> None:
    with pytest.raises(ValueError, match="store more payloads"):
        train_dictionary([b"ab", b"cd"], dict_size=4096)


def test_ratio_tracker_drifts_only_on_a_full_window_below_baseline() -> None:
    tracker = RatioTracker(window=10, tolerance=0.05)
    for _ in range(10):
        tracker.record(100, 10)
    assert not tracker.drifted()  # no baseline: first training goes by sample count
    tracker.reset(baseline=0.90)
    for _ in range(9):
        tracker.record(100, 20)
    assert not tracker.drifted()  # window not full yet
    tracker.record(100, 20)
    assert tracker.saved == pytest.approx(0.80)
    assert tracker.drifted()
    for _ in range(10):
        tracker.record(100, 12)  # the old entries slide out of the window
    assert tracker.saved == pytest.approx(0.88)
    assert not tracker.drifted()


def test_payload_dictionary_ids_are_not_negative() -> None:
    with pytest.raises(ValueError):
        PayloadDictionary(-1, b"x")


# --- embedding -------------------------------------------------------------------

# Worst case for vectors with every component in [-1, 1] (unit vectors included):
# float16 half an ulp below 1.0; int16/int8 half a step over a span of at most 2, plus
# half a float32 ulp for the final rounding.
MAX_ABS_ERROR_UNIT_RANGE = {
    "float32": 0.0,
    "float16": 2.0**-12,
    "int16": 1.0 / 65535 * (1 + 2.0**-22) + 2.0**-24 + 2.0**-49,
    "int8": 1.0 / 255 * (1 + 2.0**-22) + 2.0**-24 + 2.0**-49,
}


def test_stated_max_abs_errors_per_setting() -> None:
    """The figures codecs/DESIGN.md quotes for vectors in [-1, 1] are these, and the
    codec's own bound for a vector spanning that whole range."""
    design = (Path(embedding.__file__).parent / "DESIGN.md").read_text()
    for storage in ("float16", "int16", "int8"):
        row = next(line for line in design.splitlines() if line.startswith(f"| `{storage}` |"))
        quoted = float(row.rsplit("≈", 1)[1].strip(" |"))
        assert quoted == pytest.approx(MAX_ABS_ERROR_UNIT_RANGE[storage], rel=1e-2), storage
    full_span = np.array([1.0, -1.0, 0.3], dtype=np.float32)
    for storage in ("int16", "int8"):  # quantised: the bound is half a step of the span
        bound = embedding.max_abs_error_bound(full_span, storage)
        assert bound == pytest.approx(MAX_ABS_ERROR_UNIT_RANGE[storage], rel=1e-3)
    # float16's bound is per vector (an ulp at its largest component), never below the
    # half ulp below 1.0 quoted above.
    assert (
        embedding.max_abs_error_bound(full_span, "float16") >= MAX_ABS_ERROR_UNIT_RANGE["float16"]
    )
    assert embedding.max_abs_error_bound(full_span, "float32") == 0.0


_unit_range = st.floats(min_value=-1.0, max_value=1.0, width=32)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(_unit_range, min_size=1, max_size=64),
    storage=st.sampled_from(EMBEDDING_STORAGES),
)
def test_embedding_error_in_unit_range_is_within_the_stated_maximum(
    values: list[float], storage: str
) -> None:
    original = np.array(values, dtype=np.float32)
    decoded = embedding.decode(embedding.encode(original, storage))
    assert decoded.dtype == np.float32 and decoded.shape == original.shape
    error = float(np.max(np.abs(decoded.astype(np.float64) - original)))
    assert error <= MAX_ABS_ERROR_UNIT_RANGE[storage]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=64
    ),
    storage=st.sampled_from(EMBEDDING_STORAGES),
)
def test_embedding_error_is_within_its_bound_for_any_float32(
    values: list[float], storage: str
) -> None:
    original = np.array(values, dtype=np.float32)
    decoded = embedding.decode(embedding.encode(original, storage))
    assert decoded.shape == original.shape
    if not np.isfinite(original).all():
        # Lossy kinds cannot hold NaN or infinity; such vectors are kept exact.
        assert embedding.stored_kind(embedding.encode(original, storage)) == "float32"
        assert original.tobytes() == decoded.tobytes()
        return
    error = float(np.max(np.abs(decoded.astype(np.float64) - original), initial=0.0))
    assert error <= embedding.max_abs_error_bound(original, storage)


def test_int8_codes_of_unit_vectors_are_entropy_coded_below_a_quarter() -> None:
    vectors = corpus.embeddings(count=1000)
    sizes = [len(embedding.encode(vector, "int8")) for vector in vectors]
    assert len(embedding.encode(vectors[0], "float32")) == 2 + 384 * 4
    # Header and offset/scale included: at least 75 % saved on average.
    assert sum(sizes) / len(sizes) <= 384
    assert max(sizes) <= 2 + 8 + 384


def test_int8_codes_that_do_not_shrink_are_stored_plain() -> None:
    # Uniform values give uniform codes: 8 bits of entropy, nothing for zstd to take.
    vector = np.random.default_rng(3).uniform(-1, 1, size=384).astype(np.float32)
    blob = embedding.encode(vector, "int8")
    assert blob[:2] == bytes([embedding.VERSION, 0x03]) and len(blob) == 2 + 8 + 384
    assert embedding.stored_kind(blob) == "int8"


def test_a_corrupt_int8_frame_is_a_codec_error() -> None:
    blob = bytearray(embedding.encode(corpus.embeddings(count=1)[0], "int8"))
    assert blob[1] == 0x04
    blob[12:20] = b"\xff" * 8
    with pytest.raises(CodecError):
        embedding.decode(bytes(blob))


def test_the_shipped_int8_table_never_changes() -> None:
    """Kind 0x04 rows name the table by their kind byte alone: its bytes are fixed."""
    data = int8_dictionary().as_bytes()
    assert hashlib.blake2b(data, digest_size=16).hexdigest() == "0f5fee1efbd57045f8f97a1c51229841"


def test_float16_overflow_falls_back_to_exact() -> None:
    vector = np.array([1.0, 70000.0], dtype=np.float32)
    blob = embedding.encode(vector, "float16")
    assert embedding.stored_kind(blob) == "float32"
    assert embedding.decode(blob).tolist() == [1.0, 70000.0]


def test_unknown_embedding_storage_is_rejected() -> None:
    with pytest.raises(ValueError, match="int4"):
        embedding.encode([1.0], "int4")
    with pytest.raises(ValueError, match="1-d"):
        embedding.encode(np.zeros((2, 2)), "int8")


# --- trajectory ------------------------------------------------------------------

_special_bits = st.sampled_from(
    [
        0x7FF8000000000000,  # quiet NaN
        0x7FF0000000000001,  # signalling NaN, smallest payload
        0xFFFFFFFFFFFFFFFF,  # negative NaN, full payload
        0x7FF0000000000000,  # +inf
        0xFFF0000000000000,  # -inf
        0x8000000000000000,  # -0.0
        0x0000000000000001,  # smallest subnormal
    ]
)
_any_bits = st.integers(min_value=0, max_value=2**64 - 1)
_float_bits = st.floats(allow_nan=False).map(
    lambda x: int(np.array([x], dtype="<f8").view("<u8")[0])
)


@settings(max_examples=200, deadline=None)
@given(
    dims=st.integers(min_value=1, max_value=6),
    words=st.lists(_any_bits | _special_bits | _float_bits, max_size=120),
)
def test_trajectory_is_bit_exact_for_any_float64(dims: int, words: list[int]) -> None:
    usable = len(words) - len(words) % dims
    values = np.array(words[:usable], dtype=np.uint64).view(np.float64)
    decoded, decoded_dims = trajectory.decode(trajectory.encode(values, dims))
    assert decoded_dims == dims
    assert decoded.dtype == np.float64
    assert _bits(decoded) == _bits(values)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    steps=st.integers(min_value=1, max_value=300),
    dims=st.integers(min_value=1, max_value=8),
)
def test_trajectory_walks_round_trip_and_never_grow(seed: int, steps: int, dims: int) -> None:
    for make in (corpus.trajectory_smooth, corpus.trajectory_white_noise):
        values = make(steps=steps, dims=dims, seed=seed)
        blob = trajectory.encode(values, dims)
        assert len(blob) <= values.nbytes + 2  # format byte + one-byte varint dims
        decoded, _ = trajectory.decode(blob)
        assert _bits(decoded) == _bits(values.reshape(-1))


def test_trajectory_accepts_steps_by_dims_arrays() -> None:
    values = corpus.trajectory_smooth(steps=10, dims=3)
    decoded, dims = trajectory.decode(trajectory.encode(values, 3))
    assert dims == 3
    assert _bits(decoded) == _bits(values.reshape(-1))


def test_trajectory_smooth_walk_saves_at_least_seventy_percent() -> None:
    values = corpus.trajectory_smooth(steps=200, dims=8)
    assert len(trajectory.encode(values, 8)) <= 0.30 * values.nbytes


def test_trajectory_rejects_ragged_values() -> None:
    with pytest.raises(ValueError, match="whole number of steps"):
        trajectory.encode(np.zeros(7), 2)
    with pytest.raises(ValueError, match="dims"):
        trajectory.encode(np.zeros(4), 0)


# --- dedup -----------------------------------------------------------------------


def test_content_key_is_a_stable_16_byte_blake2b() -> None:
    # Pinned: stored keys must keep matching new writes of the same payload.
    assert content_key(b"hello").hex() == "99baffa6dbb7994e97d58c0feb07daa2"
    assert len(content_key(b"")) == 16


@given(a=st.binary(max_size=200), b=st.binary(max_size=200))
def test_content_key_matches_exactly_equal_payloads(a: bytes, b: bytes) -> None:
    assert (content_key(a) == content_key(b)) == (a == b)
