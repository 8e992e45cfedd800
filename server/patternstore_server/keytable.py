"""Pattern id -> dense slot, without a Python object per id.

The server keeps a row per pattern in numpy arrays in two places (the posteriors for
Thompson ranking and pruning, the vector index); both map ids to rows with this
table. A ``dict[str, int]`` costs about 150 bytes an id (the str object and the dict
entry), which at 1,000,000 patterns was most of the server's memory; this costs
``len(id) + 6`` bytes plus 6-16 bytes of table.

Not thread-safe: one thread mutates and reads it (the event loop for the posteriors,
the event loop thread too for the vector index, under its write lock for changes).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Final

__all__ = ["MAX_KEY_BYTES", "KeyTable"]

MAX_KEY_BYTES: Final = 65_535  # stored as uint16 lengths

# Table cells hold a slot number, or one of these.
_EMPTY: Final = -1
_DELETED: Final = -2
_MAX_LOAD: Final = 0.7  # linear probing stays short below this
_MIN_TABLE: Final = 16
_MIN_ARENA_GARBAGE: Final = 1 << 16


class KeyTable:
    """Pattern id -> dense slot, without a Python object per id.

    Open addressing (linear probing) over an int32 table; ids are kept as UTF-8 in one
    bytearray arena, addressed per slot by (start, length). A dict of str would cost
    about 150 bytes an id, a third of a 384-dim int8 vector; this costs
    ``len(id) + 6`` plus 6-16 bytes of table. ``array.array`` rather than numpy:
    probing reads single cells, and indexing an array.array is several times cheaper
    than a numpy scalar read.

    Slots stay dense (0..n-1) like the index rows: ``pop`` moves the last slot's id into
    the freed slot, mirroring the index's swap-remove.
    """

    def __init__(self) -> None:
        self._table = array("i", [_EMPTY]) * _MIN_TABLE
        self._occupied = 0  # live cells + deleted markers: what probing walks over
        self._live = 0
        self._arena = bytearray()
        self._garbage = 0  # arena bytes of removed ids, reclaimed by _compact
        # Arena offsets as uint32 (4 GiB of ids, some 250M patterns): 4 bytes a slot less
        # than int64; past that, appending raises OverflowError rather than wrapping.
        self._start = array("I")
        self._length = array("H")

    def __len__(self) -> int:
        return self._live

    def resize_slots(self, capacity: int) -> None:
        for column in (self._start, self._length):
            if len(column) > capacity:
                del column[capacity:]
            else:
                column.frombytes(bytes((capacity - len(column)) * column.itemsize))

    def get(self, key: bytes) -> int:
        cell, _ = self._probe(key)
        return -1 if cell < 0 else self._table[cell]

    def get_or_add(self, key: bytes) -> tuple[int, bool]:
        """(slot of key, whether it was added); a new id takes slot ``len(self)``."""
        if len(key) > MAX_KEY_BYTES:
            raise ValueError(f"pattern id of {len(key)} bytes exceeds {MAX_KEY_BYTES}")
        cell, free = self._probe(key)
        if cell >= 0:
            return self._table[cell], False
        if self._occupied + 1 > _MAX_LOAD * len(self._table):
            self._rehash(self._live + 1)
            cell, free = self._probe(key)
        slot = self._live
        if self._table[free] == _EMPTY:
            self._occupied += 1
        self._table[free] = slot
        self._start[slot] = len(self._arena)
        self._length[slot] = len(key)
        self._arena += key
        self._live += 1
        return slot, True

    def pop(self, key: bytes) -> tuple[int, int]:
        """Remove an id; returns (its slot, the slot whose id moved into it, or -1)."""
        cell, _ = self._probe(key)
        if cell < 0:
            raise KeyError(key)
        slot = self._table[cell]
        self._table[cell] = _DELETED
        self._garbage += self._length[slot]
        self._live -= 1
        last = self._live
        moved = -1
        if slot != last:
            last_cell, _ = self._probe(self._key_bytes(last))
            self._table[last_cell] = slot
            self._start[slot] = self._start[last]
            self._length[slot] = self._length[last]
            moved = last
        if self._garbage > max(_MIN_ARENA_GARBAGE, len(self._arena) // 2):
            self._compact()
        return slot, moved

    def keys_at(self, slots: Sequence[int]) -> list[str]:
        return [self._key_bytes(slot).decode() for slot in slots]

    def nbytes(self) -> int:
        parts = (self._table, self._arena, self._start, self._length)
        return sum(sys.getsizeof(part) for part in parts)

    def _key_bytes(self, slot: int) -> bytes:
        start = self._start[slot]
        return bytes(self._arena[start : start + self._length[slot]])

    def _probe(self, key: bytes) -> tuple[int, int]:
        """(cell holding key or -1, the cell an insert of key should use)."""
        table, arena, starts, lengths = self._table, self._arena, self._start, self._length
        mask = len(table) - 1
        cell = hash(key) & mask
        size = len(key)
        free = -1
        while True:
            slot = table[cell]
            if slot == _EMPTY:
                return -1, (cell if free < 0 else free)
            if slot == _DELETED:
                if free < 0:
                    free = cell
            elif lengths[slot] == size and arena[starts[slot] : starts[slot] + size] == key:
                return cell, free
            cell = (cell + 1) & mask

    def _rehash(self, live: int) -> None:
        # Rebuilt at load <= 0.5, so the next rebuild is at least 0.2 x size inserts away.
        size = _MIN_TABLE
        while size < 2 * live:
            size *= 2
        table = array("i", [_EMPTY]) * size
        mask = size - 1
        for slot in range(self._live):
            cell = hash(self._key_bytes(slot)) & mask
            while table[cell] != _EMPTY:
                cell = (cell + 1) & mask
            table[cell] = slot
        self._table = table
        self._occupied = self._live

    def _compact(self) -> None:
        arena = bytearray()
        for slot in range(self._live):
            key = self._key_bytes(slot)
            self._start[slot] = len(arena)
            arena += key
        self._arena = arena
        self._garbage = 0
