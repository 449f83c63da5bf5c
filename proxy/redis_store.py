"""Redis engine for the store and the rate limiter (replicas)."""

from __future__ import annotations


class RedisStore:
    def __init__(self, url: str) -> None:
        raise ValueError("the redis store is not available in this build")
