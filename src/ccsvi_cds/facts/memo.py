"""Bounded memos of what is derived from input values (a batch repeats a few hundred codes millions of times).

A client or an export decides how many distinct values there are, so a memo forgets everything once full and
keys that are too long (or cannot be encoded) are not kept at all: memory stays bounded whatever comes in.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import orjson

MAX_KEY_BYTES = 1024

K = TypeVar("K")
V = TypeVar("V")


class Memo(dict[K, V], Generic[K, V]):
    """A dict (look up with `get`, C-fast) whose `put` empties it first once it holds `size` entries."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K | None, value: V) -> V:
        """Keep `value` under `key` (None: not kept); returns `value`."""
        if key is not None:
            if len(self) >= self.size:
                self.clear()
            self[key] = value
        return value


def memo_key(value: Any) -> bytes | None:
    """`value` as bytes to memoise on, or None (judge it without the memo): too long to keep, or not encodable
    (e.g. nested deeper than orjson encodes)."""
    try:
        key = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None
    return key if len(key) <= MAX_KEY_BYTES else None
