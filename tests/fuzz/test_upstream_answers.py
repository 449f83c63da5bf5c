"""Fuzz: malformed upstream answers against proxy/upstream.py and the relay (issue 12).

A raw-socket upstream sends generated answers (tests/fuzz/answers.py says what RFC 9112
makes of each); a real keyhop app relays them to a raw client that reads with h11 and a
strict head check. Whatever the upstream sends, keyhop answers 502/504 or relays a valid
answer, never 500, never hangs, never relays invalid framing, and the next request on the
route still works.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Iterator

import pytest
from hypothesis import given, settings

from proxy.runtime import KEYHOP
from tests.fuzz.answers import EITHER, INVALID, VALID, Built, answers
from tests.fuzz.harness import (
    Answer,
    Errors,
    Keyhop,
    Loop,
    Script,
    Upstream,
    examples,
    exchange,
    request_bytes,
)

READ_TIMEOUT = 0.4
BOUND = 5.0  # no answer may take longer: 0.4 s of silence at most, a few 10 ms pauses
OWN_ERRORS = {502: "upstream_unreachable", 504: "upstream_timeout"}


class Rig:
    def __init__(self) -> None:
        self.loop = Loop()
        self.upstream = Upstream()
        self.loop.run(self.upstream.start())
        config = {
            "providers": {
                "p": {
                    "auth": {"type": "none"},
                    "timeouts": {"connect": 2, "read": READ_TIMEOUT},
                }
            },
            "routes": [{"prefix": "/r", "upstream": self.upstream.base, "provider": "p"}],
        }
        self.keyhop = self.loop.run(Keyhop(config).start())
        self.ids = itertools.count()
        self.history: deque[tuple[list[str], tuple[bytes, ...], str]] = deque(maxlen=4)

    def close(self) -> None:
        self.loop.run(self.keyhop.close())
        self.loop.run(self.upstream.close())
        self.loop.close()

    def send(self, built: Built) -> tuple[Answer, Answer]:
        """The answer to a request the upstream answers with `built`, then the answer to
        the next request on the same route."""
        key = f"c{next(self.ids)}"
        self.upstream.scripts[key] = Script(built.parts, built.ending, built.pause)
        self.history.append((built.notes, built.parts, built.ending))
        got = self.exchange(f"/r/{key}".encode(), "the fuzzed request")
        after = self.exchange(b"/r/ok", "the next request")
        return got, after

    def exchange(self, target: bytes, what: str) -> Answer:
        try:
            return self.loop.run(exchange(self.keyhop.port, request_bytes(target), BOUND), BOUND)
        except TimeoutError:
            kh = self.keyhop.app[KEYHOP]
            pool = [
                f"busy {o.busy}, idle {len(o.idle)}, waiters {len(o.waiters)}"
                for o in kh.upstreams._origins.values()
            ]
            raise AssertionError(
                f"{what} got no whole answer within {BOUND:g} s; keyhop's pool: {pool}, "
                f"in flight: {len(kh.metrics.in_flight)}; the last examples: {list(self.history)}"
            ) from None


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.close()


def own_error(answer: Answer) -> str | None:
    """keyhop's own JSON error code, when the answer is one."""
    if answer.status not in OWN_ERRORS or not answer.complete:
        return None
    try:
        body = json.loads(answer.body)
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


def judge(built: Built, got: Answer) -> list[str]:
    """What is wrong with `got` as keyhop's answer to an upstream that sent `built`."""
    problems = []
    if got.invalid:
        return [f"the client got an answer that is not valid HTTP/1.1: {got.invalid}"]
    own = own_error(got)
    if own is not None and own != OWN_ERRORS[got.status or 0]:
        problems.append(f"keyhop answered {got.status} {own}")
    relayed = got.complete and own is None
    if relayed and built.status != 500 and got.status == 500:
        return [f"keyhop answered 500 itself: {got.body[:200]!r}"]
    head_bad = built.head == INVALID or not built.head_whole
    body_bad = built.body_verdict == INVALID or not built.complete
    if head_bad:
        if relayed:
            problems.append(f"relayed {got.status} for an answer with a bad or cut head")
        elif own is None:
            problems.append("the client got no answer (a bad or cut head must be a 502/504)")
    elif body_bad:
        if relayed:
            problems.append(f"relayed a whole {got.status} for a broken or cut body")
        elif own is None and got.status is None and built.head == VALID:
            problems.append("the client got nothing, not even the head")
    elif relayed:
        if got.status != built.status:
            problems.append(f"relayed status {got.status}, upstream said {built.status}")
        if built.body is not None and got.body != built.body:
            problems.append(f"relayed {len(got.body)} body bytes, not the {len(built.body)} sent")
    elif built.head == VALID and built.body_verdict == VALID:
        what = f"answered {own}" if own else "cut the answer"
        problems.append(f"keyhop {what} for a valid answer")
    elif own is None and (built.body_verdict == VALID or got.status is None):
        problems.append("the client got a cut for an answer whose body was fine")
    return problems


def check(rig: Rig, built: Built) -> None:
    with Errors() as errors:
        got, after = rig.send(built)
        logged = errors.take()
    problems = judge(built, got)
    internal = [line for line in rig.keyhop.lines if '"internal_error"' in line]
    rig.keyhop.lines.clear()
    if internal or logged:
        problems.append(f"keyhop logged an internal error: {logged or internal}")
    if not (after.complete and after.status == 200 and after.body == b"ok"):
        problems.append(f"the next request got {after.status} {after.body[:120]!r}")
    assert not problems, (problems, built.notes, built.wire[:300])


@settings(max_examples=examples(400))
@given(built=answers())
def test_whatever_an_upstream_answers_keyhop_relays_it_validly_or_says_502_or_504(
    rig: Rig, built: Built
) -> None:
    check(rig, built)


def fixed(wire: bytes | tuple[bytes, ...], ending: str = "close", **kw: object) -> Built:
    built = Built(wire if isinstance(wire, tuple) else (wire,), ending, **kw)  # type: ignore[arg-type]
    built.notes.append("a fixed case")
    return built


REGRESSIONS = [
    pytest.param(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", body=b"hi"), id="plain"),
    pytest.param(
        fixed(b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 2\r\n\r\nhi", head=INVALID),
        id="space-before-colon",
    ),
    pytest.param(
        fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi", head=INVALID),
        id="conflicting-lengths",
    ),
    pytest.param(
        fixed(
            b"HTTP/1.1 200 OK\r\nX-A: \xe9\r\nContent-Length: 2\r\n\r\nhi", head=EITHER, body=b"hi"
        ),
        id="obs-text-value",
    ),
    pytest.param(
        fixed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
            body_verdict=INVALID,
        ),
        id="bad-chunk-size",
    ),
    pytest.param(
        fixed(b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nhi", head=INVALID),
        id="ctl-reason",
    ),
    pytest.param(
        fixed(b"HTTP/1.1 200 OK\r\nX-0:\r\r\nContent-Length: 2\r\n\r\nhi", head=EITHER, body=b"hi"),
        id="bare-cr",
    ),
    pytest.param(
        fixed(
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nConten",
                b"t-Length: 5\r\n\r\nextra",
            ),
            "keep",
            pause=1.0,
            body_verdict=EITHER,
            body=b"hi",
        ),
        id="stray-bytes",
    ),
]


@pytest.mark.parametrize("built", REGRESSIONS)
def test_found_answers(rig: Rig, built: Built) -> None:
    check(rig, built)
