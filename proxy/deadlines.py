"""Read timeouts for every in-flight upstream call, kept by one watchdog.

A timer per request (aiohttp's sock_read, or asyncio.timeout) costs a timer handle and a
state machine on every request and every read; here a request only writes a deadline into
a dict, and one task ticking every TICK seconds cancels whatever has gone silent too long.
Deadlines are therefore honoured to within TICK.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

TICK: Final = 0.1


@dataclass(eq=False, slots=True)
class Deadline:
    task: asyncio.Task[object]
    at: float
    seconds: float
    fired: bool = field(default=False)

    def extend(self, loop_time: float) -> None:
        """The upstream spoke: the silence starts again."""
        self.at = loop_time + self.seconds


class Deadlines:
    def __init__(self) -> None:
        self._armed: dict[Deadline, None] = {}
        self._watchdog: asyncio.Task[None] | None = None
        #: the serving loop, kept for the request path: asyncio.get_running_loop() costs a
        #: getpid() system call per call in Python 3.11
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._watchdog = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)

    def arm(self, seconds: float, task: asyncio.Task[object]) -> Deadline:
        """`task` is the caller's (passed in: asyncio.current_task() is not cheap in 3.11)."""
        loop = self.loop or asyncio.get_running_loop()
        deadline = Deadline(task, loop.time() + seconds, seconds)
        self._armed[deadline] = None
        return deadline

    def disarm(self, deadline: Deadline) -> None:
        self._armed.pop(deadline, None)

    def expired(self, deadline: Deadline) -> bool:
        """True when the watchdog cancelled this call; the cancellation is then taken back,
        so the caller can answer `upstream_timeout` instead of dying."""
        if deadline.fired:
            deadline.task.uncancel()
            return True
        return False

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            now = loop.time()
            for deadline in [d for d in self._armed if d.at <= now and not d.fired]:
                deadline.fired = True
                deadline.task.cancel()
