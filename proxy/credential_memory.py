"""The credential cache's memory tier (token_cache.py): a TLRUCache whose entries vanish at
their real expiry, with a plain dict of hot entries in front of it.

A hot entry is a credential read once since its key last changed, with the time until
which it may be answered without another look: before its renewal is due and before its
next check against the store. A TLRUCache lookup with its timer was a tenth of an express
lane request; a dict lookup is not. Any change to a key (set, delete, clear) drops its hot
entry, so the memo never answers what the cache no longer holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cachetools import TLRUCache

from proxy.tokens import Credential

Key = tuple[str, str]  # provider, tenant ("" for none)


def _ttu(_key: Key, credential: Credential, _now: float) -> float:
    return math.inf if credential.expires_at is None else credential.expires_at


class MemoryTier(TLRUCache[Key, Credential]):
    def __init__(self, maxsize: int, clock: Callable[[], float]) -> None:
        super().__init__(maxsize, ttu=_ttu, timer=clock)
        self._hot: dict[Key, tuple[Credential, float]] = {}

    def hot(self, key: Key, now: float) -> Credential | None:
        """The key's hot credential, if it may still be answered at `now`."""
        entry = self._hot.get(key)
        return entry[0] if entry is not None and now < entry[1] else None

    def keep_hot(self, key: Key, credential: Credential, until: float) -> None:
        """`credential` (what the cache holds for `key`) may be answered until `until`,
        which must not be past its expiry (the cache would no longer hold it)."""
        if len(self._hot) >= self.maxsize:
            self._hot.clear()
        self._hot[key] = (credential, until)

    def __setitem__(self, key: Key, value: Credential, *args: Any) -> None:
        self._hot.pop(key, None)
        super().__setitem__(key, value, *args)

    def __delitem__(self, key: Key, *args: Any) -> None:
        self._hot.pop(key, None)
        super().__delitem__(key, *args)

    def clear(self) -> None:
        self._hot.clear()
        super().clear()
