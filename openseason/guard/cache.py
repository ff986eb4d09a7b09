"""A least-recently-used cache bounded in bytes, for the rails' per-text caches.

The rails remember verdicts and embeddings of texts they have already judged (earlier turns of a
conversation come back with every request). Users choose those texts, so a bound on entries alone is
no bound: 4096 entries of a megabyte each is 4 GB. Entries here are charged their key and value
sizes, long texts are keyed by their SHA-256 (32 bytes) instead of the text itself, and the least
recently used entries go first once the budget is spent.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Hashable

# Texts longer than this are keyed by their digest; shorter ones by themselves (cheaper than hashing).
HASH_ABOVE_CHARS = 256
# What an entry costs beyond its key and value (dict slot, OrderedDict links, tuple, small objects).
ENTRY_OVERHEAD = 200


def text_key(text: str) -> str | bytes:
    """The key a text is cached under: itself when short, else its SHA-256 digest (bytes, so it can
    never equal a short text's str key)."""
    if len(text) <= HASH_ABOVE_CHARS:
        return text
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _key_bytes(key: Hashable) -> int:
    if isinstance(key, (str, bytes)):
        return len(key) * (4 if isinstance(key, str) and not key.isascii() else 1)
    if isinstance(key, tuple):
        return sum(_key_bytes(k) for k in key)
    return 16


class ByteLRU:
    """key -> value, at most `max_bytes` of keys and values (as charged by `put`) plus overhead."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()  # the server calls the rails from worker threads

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return default
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any, value_bytes: int) -> None:
        """Store `value`, charged `value_bytes`; an entry larger than the whole budget is not kept."""
        cost = _key_bytes(key) + int(value_bytes) + ENTRY_OVERHEAD
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            if cost > self.max_bytes:
                return
            self._items[key] = (value, cost)
            self.nbytes += cost
            while self.nbytes > self.max_bytes:
                _, (_, freed) = self._items.popitem(last=False)
                self.nbytes -= freed

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0
