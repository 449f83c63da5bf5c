"""Fake Spaaza.

Three ways in: a privileged static `Authorization: Bearer <token_id>:<token_secret>`; an admin
session from `POST /auth/login` (form `username`, `password`), where every login deletes that
user's earlier sessions; and an app user's own session, whose headers a proxy passes through.
An invalid or expired session answers 401 with `error.code` 6 (`no_valid_session`). The admin
login itself must not carry `X-Spaaza-MyPrice-App-Hostname`.

The error codes other than 6 are this sandbox's own: Spaaza's are not public.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from aiohttp import web

from proxy.sandbox.base import Clock, FakeProvider, json_error, mask, same
from proxy.sandbox.credentials import (
    SPAAZA_PASSWORD,
    SPAAZA_TOKEN_ID,
    SPAAZA_TOKEN_SECRET,
    SPAAZA_USERNAME,
)

HOSTNAME_HEADER: Final = "X-Spaaza-MyPrice-App-Hostname"
ADMIN_USER_ID: Final = 1001
NO_VALID_SESSION: Final = 6
LOGIN_FAILED: Final = 7
OTP_REQUIRED: Final = 8
HOSTNAME_NOT_ALLOWED: Final = 9


def spaaza_error(status: int, code: int, name: str, description: str) -> web.Response:
    return json_error(status, {"error": {"code": code, "name": name, "description": description}})


@dataclass
class _Session:
    user_id: int
    kind: str  # "admin" | "user"
    expires: float


class FakeSpaaza(FakeProvider):
    """Spaaza's login, its session rules, and resources accepting all three kinds of auth."""

    name: ClassVar[str] = "spaaza"
    counter_names: ClassVar[tuple[str, ...]] = (
        *FakeProvider.counter_names,
        "logins",
        "live_sessions",
        "sessions_created",
    )

    def __init__(
        self,
        username: str = SPAAZA_USERNAME,
        password: str = SPAAZA_PASSWORD,
        token_id: str = SPAAZA_TOKEN_ID,
        token_secret: str = SPAAZA_TOKEN_SECRET,
        session_hours: int = 24,
        *,
        require_otp: bool = False,
        clock: Clock = time.time,
    ) -> None:
        self.username = username
        self.password = password
        self.token_id = token_id
        self.token_secret = token_secret
        self.session_hours = session_hours
        self.require_otp = require_otp
        self.sessions_created = 0
        #: `X-Spaaza-MyPrice-App-Hostname` of the last resource request (None when absent)
        self.last_hostname_header: str | None = None
        self._sessions: dict[str, _Session] = {}  # session key -> session
        self._next_user_id = 2001
        super().__init__(clock=clock)

    @property
    def logins(self) -> int:
        """Login requests, rejected ones included (the same count as `token_requests`)."""
        return self.token_requests

    @logins.setter
    def logins(self, value: int) -> None:
        self.token_requests = value

    @property
    def live_sessions(self) -> int:
        now = self.clock()
        return sum(1 for s in self._sessions.values() if s.expires > now)

    def setup_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/auth/login", self._login)
        router.add_post("/-/sandbox/user-session", self._control_user_session)
        router.add_route("*", "/{tail:.*}", self.handle_resource)

    # --- knobs -------------------------------------------------------------------------------

    def expire_all(self) -> None:
        """Kill every session, admin and user alike."""
        self._sessions.clear()

    def _new_session(self, user_id: int, kind: str) -> tuple[str, _Session]:
        # a login deletes that user's other sessions: this is why a proxy must share one
        for key in [k for k, s in self._sessions.items() if s.user_id == user_id]:
            del self._sessions[key]
        key = secrets.token_hex(20)
        session = _Session(user_id, kind, self.clock() + self.session_hours * 3600)
        self._sessions[key] = session
        self.sessions_created += 1
        return key, session

    def create_user_session(self, user_id: int | None = None) -> tuple[int, str]:
        """An app user's own session (for the pass-through case): (user id, session key)."""
        if user_id is None:
            user_id, self._next_user_id = self._next_user_id, self._next_user_id + 1
        key, _ = self._new_session(user_id, "user")
        return user_id, key

    # --- login -------------------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.StreamResponse:
        early = await self.token_gate()
        if early is not None:
            return early
        if HOSTNAME_HEADER in request.headers:
            return spaaza_error(
                400,
                HOSTNAME_NOT_ALLOWED,
                "hostname_not_allowed",
                f"{HOSTNAME_HEADER} must not be sent on an admin login",
            )
        form = await request.post()
        username, password = form.get("username"), form.get("password")
        if not (
            isinstance(username, str)
            and isinstance(password, str)
            and same(username, self.username)
            and same(password, self.password)
        ):
            return spaaza_error(401, LOGIN_FAILED, "login_failed", "Wrong username or password")
        if self.require_otp:
            return spaaza_error(
                401, OTP_REQUIRED, "otp_required", "This account needs a one-time passcode"
            )
        key, session = self._new_session(ADMIN_USER_ID, "admin")
        expires = datetime.fromtimestamp(session.expires, UTC).strftime("%Y-%m-%d %H:%M:%S")
        return web.json_response(
            {
                "results": {
                    "session_info": {
                        "session_user_id": session.user_id,
                        "session_key": key,
                        "session_key_validity": self.session_hours,
                        "session_expires_date": expires,
                    }
                }
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _control_user_session(self, request: web.Request) -> web.Response:
        user_id, key = self.create_user_session()
        return web.json_response({"session_user_id": user_id, "session_key": key})

    # --- resources ---------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        hostname = request.headers.get(HOSTNAME_HEADER)
        self.last_hostname_header = hostname
        extra = {"hostname": hostname} if hostname is not None else {}
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value:
            if same(value.strip(), f"{self.token_id}:{self.token_secret}"):
                return {"kind": "privileged", "bearer": mask(value.strip()), **extra}
        else:
            user_id = request.headers.get("X-Spaaza-Session-User-Id", "")
            key = request.headers.get("X-Spaaza-Session-Key", "")
            session = self._sessions.get(key) if key else None
            if (
                session is not None
                and session.expires > self.clock()
                and user_id == str(session.user_id)
            ):
                return {
                    "kind": session.kind,
                    "session_user_id": session.user_id,
                    "session_key": mask(key),
                    **extra,
                }
        return spaaza_error(
            401, NO_VALID_SESSION, "no_valid_session", "No valid session; log in again"
        )
