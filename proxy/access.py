"""The access log (SPEC 4.7): one JSON object per request, no query values, no secret."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from proxy.runtime import Keyhop


@dataclass(slots=True)
class AccessInfo:
    """One access-log line, filled in as the request goes (SPEC 4.7), and the task serving
    the request (for the read-timeout watchdog; None on the express lane, which has no task
    and keeps its own timer)."""

    task: asyncio.Task[Any] | None

    route: str | None = None
    provider: str | None = None
    tenant: str | None = None
    upstream_ms: float | None = None
    credential: str | None = None
    error: str | None = None
    aborted: bool = False
    #: perf_counter() when the request arrived, when that was before the pipeline had it
    #: (the express lane took it first and gave it back)
    began: float | None = None


_str = json.encoder.encode_basestring_ascii

#: keyhop's own words (routes, providers, credential sources, error codes: a set the config
#: bounds) as JSON, encoded once
_WORDS: dict[str | None, str] = {None: "null"}


def _json_or_null(value: str | None) -> str:
    word = _WORDS.get(value)
    if word is None:
        word = _str(value)  # type: ignore[arg-type]  # (None is in _WORDS)
        if len(_WORDS) < 4096:
            _WORDS[value] = word
    return word


#: for each (route, provider, credential source) seen, the line's fields from "route" to
#: "provider" and its "credential" field: keyhop's own words (a set the config bounds),
#: encoded once
_FIXED: dict[tuple[str | None, str | None, str | None], tuple[str, str]] = {}


def _fixed(route: str | None, provider: str | None, credential: str | None) -> tuple[str, str]:
    key = (route, provider, credential)
    fixed = _FIXED.get(key)
    if fixed is None:
        fixed = (
            f'"route":{_json_or_null(route)},"provider":{_json_or_null(provider)},',
            f'"credential":{_json_or_null(credential)}',
        )
        if len(_FIXED) < 4096:
            _FIXED[key] = fixed
    return fixed


def log_access(
    method: str, target: str, info: AccessInfo, status: int, started: float, kh: Keyhop
) -> None:
    """One JSON object per request, built by hand: this runs on every request. Only what the
    client sent (method, path, query names, tenant) can hold a configured secret, so only
    that is redacted (route, provider, credential and error are keyhop's own words)."""
    redact = kh.runtime.redact
    path, _, query = target.partition("?")
    head, credential = _fixed(info.route, info.provider, info.credential)
    tenant = info.tenant
    upstream_ms = info.upstream_ms
    line = (
        f'{{"ts":{time.time():.3f},{head}'
        f'"tenant":{"null" if tenant is None else redact.json(tenant)},'
        f'"method":{redact.json(method)},"path":{redact.json(path)},"status":{status},'
        f'"duration_ms":{(time.perf_counter() - (info.began or started)) * 1000:.3f},'
        f'"upstream_ms":{"null" if upstream_ms is None else upstream_ms},{credential}'
    )
    if query:  # names only: a query can carry codes and keys
        keys = sorted({redact(p.partition("=")[0]) for p in query.split("&") if p})
        line += ',"query_keys":[' + ",".join(map(_str, keys)) + "]"
    if info.error:
        line += f',"error":{_json_or_null(info.error)}'
    if info.aborted:
        line += ',"aborted":true'
    kh.access_log(line + "}")
    kh.metrics.request(info.route or "", info.provider or "", status)
