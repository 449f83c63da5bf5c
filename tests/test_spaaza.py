"""Spaaza end to end (issue 6, SPEC 1 Spaaza row, 3.2, 4.4): the admin `session_login`
shared by every request, re-login once on error code 6, the hostname header kept off the
login, backoff on a refused login, sessions surviving a restart, and the privileged
(`static`) and user (`none`) presets.

The fake (proxy/sandbox/spaaza.py) runs on a real TLS socket; keyhop reaches it through the
presets with only the route's upstream pointed at it. Where the fake cannot misbehave in the
way a test needs (a resource that refuses every session, a login answering chosen expiry
fields), a tiny scripted Spaaza below does it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.config import load_config
from proxy.runtime import KEYHOP
from proxy.sandbox.spaaza import ADMIN_USER_ID, HOSTNAME_HEADER, FakeSpaaza
from proxy.store import SqliteStore
from proxy.tokens import Credential
from tests.conftest import MakeProxy, StartUpstream
from tests.support import ROOT, Clock, KeyhopProcess, assert_no_secrets, wait_healthy, write_config

USERNAME = "pos-admin@shop.example.com"
PASSWORD = "spaaza-pw-7Hq2xLr9Vw"
WRONG_PASSWORD = "not-the-pw-3Kd8sZ1"
TOKEN_ID = "spz-token-id-41c2"
TOKEN_SECRET = "spz-token-secret-9e8d7c6b5a"
SHOP_HOST = "shop.example.com"
SESSION_HEADERS = ("X-Spaaza-Session-User-Id", "X-Spaaza-Session-Key")

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def spaaza_config(
    base: str,
    ca_file: str,
    *,
    store: str = "memory:",
    hostname: str | None = SHOP_HOST,
    password: str = PASSWORD,
) -> dict[str, Any]:
    """The three Spaaza providers side by side, all pointed at one fake."""
    admin: dict[str, Any] = {
        "preset": "spaaza_admin",
        "auth": {"credentials": {"username": USERNAME, "password": password}},
        "ca_file": ca_file,
    }
    privileged: dict[str, Any] = {
        "preset": "spaaza_privileged",
        "auth": {"token": f"{TOKEN_ID}:{TOKEN_SECRET}"},
        "ca_file": ca_file,
    }
    if hostname is not None:
        admin["headers"] = {HOSTNAME_HEADER: hostname}
        privileged["headers"] = {HOSTNAME_HEADER: hostname}
    return {
        "store": store,
        "providers": {
            "spaaza_admin": admin,
            "spaaza_privileged": privileged,
            "spaaza_user": {"preset": "spaaza_user", "ca_file": ca_file},
        },
        "routes": [
            {"prefix": "/spaaza-admin", "upstream": base, "provider": "spaaza_admin"},
            {"prefix": "/spaaza", "upstream": base, "provider": "spaaza_privileged"},
            {"prefix": "/spaaza-user", "upstream": base, "provider": "spaaza_user"},
        ],
    }


async def start_spaaza(upstream: StartUpstream, **kw: Any) -> tuple[FakeSpaaza, str]:
    fake = FakeSpaaza(USERNAME, PASSWORD, TOKEN_ID, TOKEN_SECRET, **kw)
    return fake, await upstream(fake.app)


async def stored_session(client: Client) -> Credential:
    credential = await client.app[KEYHOP].store.get("spaaza_admin", None)
    assert credential is not None, "no admin session in the store"
    return credential


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def no_valid_session() -> dict[str, Any]:
    return {"error": {"code": 6, "name": "no_valid_session", "description": "log in again"}}


class ScriptedSpaaza:
    """A login that answers chosen session fields, and a resource whose answer a test picks.

    The login refuses the hostname header like the real one; every login issues a new key.
    """

    def __init__(
        self,
        resource: Callable[[web.Request, int], web.Response] | None = None,
        session_info: dict[str, Any] | None = None,
    ) -> None:
        self.logins = 0
        self.attempts = 0
        self.keys_seen: list[str] = []
        self.bodies_seen: list[bytes] = []
        self._resource = resource
        self._session_info = session_info or {"session_key_validity": 24}
        self.app = web.Application()
        self.app.router.add_post("/auth/login", self._login)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _login(self, request: web.Request) -> web.Response:
        self.logins += 1
        if HOSTNAME_HEADER in request.headers:
            return web.json_response({"error": {"code": 9, "name": "hostname"}}, status=400)
        form = await request.post()
        if form.get("username") != USERNAME or form.get("password") != PASSWORD:
            return web.json_response({"error": {"code": 7, "name": "login_failed"}}, status=401)
        info = {
            "session_user_id": ADMIN_USER_ID,
            "session_key": f"scripted-key-{self.logins}",
            **self._session_info,
        }
        return web.json_response({"results": {"session_info": info}})

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.keys_seen.append(request.headers.get("X-Spaaza-Session-Key", ""))
        self.bodies_seen.append(await request.read())
        if self._resource is not None:
            return self._resource(request, self.attempts)
        return web.json_response({"ok": True, "attempt": self.attempts})


def admin_view(view: dict[str, Any]) -> dict[str, Any]:
    tenants = view["providers"]["spaaza_admin"]["tenants"]
    assert len(tenants) == 1, tenants
    entry: dict[str, Any] = tenants[0]
    return entry


# -- one shared session ------------------------------------------------------------------------


async def test_200_concurrent_cold_requests_cause_one_login_and_all_carry_the_session(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_spaaza(upstream)
    client = await proxy(spaaza_config(base, ca_file))
    responses = await asyncio.gather(
        *(client.get(f"/spaaza-admin/v1/user/{i}?x={i}") for i in range(200))
    )
    assert [r.status for r in responses] == [200] * 200
    bodies = [await r.json() for r in responses]
    assert {b["credentials"]["kind"] for b in bodies} == {"admin"}
    assert {b["credentials"]["session_user_id"] for b in bodies} == {ADMIN_USER_ID}
    assert fake.logins == 1
    assert fake.sessions_created == 1
    assert fake.live_sessions == 1
    assert fake.resource_requests == 200
    session = await stored_session(client)
    headers = fake.last_resource_headers
    assert headers["X-Spaaza-Session-User-Id"] == str(ADMIN_USER_ID)
    assert headers["X-Spaaza-Session-Key"] == session.fields["X-Spaaza-Session-Key"]


async def test_after_every_session_expires_a_burst_logs_in_once_and_every_request_is_replayed(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_spaaza(upstream)
    client = await proxy(spaaza_config(base, ca_file))
    assert (await client.get("/spaaza-admin/warm")).status == 200
    old_key = (await stored_session(client)).fields["X-Spaaza-Session-Key"]
    before = fake.resource_requests
    fake.expire_all()
    posts = [client.post(f"/spaaza-admin/v1/basket/{i}", data=b"b" * (i + 1)) for i in range(60)]
    gets = [client.get(f"/spaaza-admin/v1/user/{i}") for i in range(60)]
    responses = await asyncio.gather(*posts, *gets)
    assert [r.status for r in responses] == [200] * 120, [await r.text() for r in responses]
    bodies = [await r.json() for r in responses]
    # every POST body arrived whole, on the replay where the first try was refused
    assert [b["body_bytes"] for b in bodies[:60]] == [i + 1 for i in range(60)]
    assert [b["method"] for b in bodies[:60]] == ["POST"] * 60
    assert fake.logins == 2
    assert fake.live_sessions == 1
    sent = fake.resource_requests - before
    assert 120 < sent <= 240  # refused first tries were replayed, each at most once
    new_key = (await stored_session(client)).fields["X-Spaaza-Session-Key"]
    assert new_key != old_key
    assert fake.last_resource_headers["X-Spaaza-Session-Key"] == new_key


async def test_one_expired_request_is_refused_logged_in_again_and_replayed_with_its_body(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_spaaza(upstream)
    client = await proxy(spaaza_config(base, ca_file))
    assert (await client.get("/spaaza-admin/warm")).status == 200
    fake.expire_all()
    before = fake.resource_requests
    resp = await client.put("/spaaza-admin/v1/basket/7", data=b'{"items": [1, 2, 3]}')
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["method"] == "PUT"
    assert body["body_bytes"] == len(b'{"items": [1, 2, 3]}')
    assert fake.resource_requests - before == 2  # refused once, replayed once
    assert fake.logins == 2


async def test_a_second_code_6_after_the_relogin_is_returned_as_it_is_never_a_loop(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    def always_expired(request: web.Request, attempt: int) -> web.Response:
        return web.json_response(
            no_valid_session(), status=401, headers={"X-Attempt": str(attempt)}
        )

    fake = ScriptedSpaaza(always_expired)
    base = await upstream(fake.app)
    client = await proxy(spaaza_config(base, ca_file))
    for n in range(1, 4):
        resp = await asyncio.wait_for(
            client.post("/spaaza-admin/v1/thing", data=f"payload-{n}".encode()), 10
        )
        assert resp.status == 401
        assert await resp.json() == no_valid_session()
        assert resp.headers["X-Attempt"] == str(2 * n)  # the second answer, passed back
        assert fake.attempts == 2 * n  # exactly two upstream attempts per request
        assert fake.logins == 1 + n  # the first login, then one re-login per request
        # the replay carried the new session and the same body
        assert fake.keys_seen[-1] != fake.keys_seen[-2]
        assert fake.bodies_seen[-2:] == [f"payload-{n}".encode()] * 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(401, {"error": {"code": 5, "name": "forbidden_action"}}, id="401-code-5"),
        pytest.param(401, "Unauthorized", id="401-not-json"),
        pytest.param(401, {"error": "no_valid_session"}, id="401-no-code"),
        pytest.param(403, no_valid_session(), id="403-code-6"),
    ],
)
async def test_a_refusal_other_than_401_code_6_is_passed_back_without_a_login(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, status: int, body: Any
) -> None:
    def refuse(request: web.Request, attempt: int) -> web.Response:
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    fake = ScriptedSpaaza(refuse)
    base = await upstream(fake.app)
    client = await proxy(spaaza_config(base, ca_file))
    for _ in range(3):
        resp = await client.get("/spaaza-admin/v1/x")
        assert resp.status == status
        text = await resp.text()
        assert (text if isinstance(body, str) else json.loads(text)) == body
    assert fake.logins == 1  # the cold start's only
    assert fake.attempts == 3  # nothing replayed
    assert len(set(fake.keys_seen)) == 1


async def test_two_keyhops_sharing_a_store_share_one_session(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, tmp_path: Path
) -> None:
    fake, base = await start_spaaza(upstream)
    db = str(tmp_path / "shared.db")
    config = spaaza_config(base, ca_file, store=f"sqlite://{db}")
    a = await proxy(config, store=SqliteStore(db))
    b = await proxy(config, store=SqliteStore(db))
    responses = await asyncio.gather(
        *(c.get(f"/spaaza-admin/v1/{i}") for i in range(40) for c in (a, b))
    )
    assert [r.status for r in responses] == [200] * 80
    assert fake.logins == 1  # a second login would have deleted the first one's session
    fake.expire_all()
    responses = await asyncio.gather(
        *(c.get(f"/spaaza-admin/v1/{i}") for i in range(40) for c in (a, b))
    )
    assert [r.status for r in responses] == [200] * 80
    assert fake.logins == 2
    assert fake.live_sessions == 1


async def test_the_session_is_renewed_once_just_before_it_expires(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, clock: Clock
) -> None:
    fake, base = await start_spaaza(upstream, session_hours=24, clock=clock)
    client = await proxy(spaaza_config(base, ca_file), clock=clock)
    assert (await client.get("/spaaza-admin/a")).status == 200
    first = (await stored_session(client)).fields["X-Spaaza-Session-Key"]
    clock.advance(24 * 3600 - 61)  # just outside the 60 s margin
    assert (await client.get("/spaaza-admin/a")).status == 200
    assert fake.logins == 1
    clock.advance(2)  # inside the margin: one new login, requests keep succeeding
    assert (await client.get("/spaaza-admin/a")).status == 200
    await wait_for(lambda: fake.logins == 2)
    responses = await asyncio.gather(*(client.get("/spaaza-admin/b") for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert fake.logins == 2
    second = (await stored_session(client)).fields["X-Spaaza-Session-Key"]
    assert second != first
    assert fake.last_resource_headers["X-Spaaza-Session-Key"] == second
    clock.advance(120)  # past the first session's end: the renewed one serves
    assert (await client.get("/spaaza-admin/c")).status == 200
    assert fake.logins == 2


# -- the hostname header -------------------------------------------------------------------------


async def test_the_hostname_header_is_on_resource_calls_and_never_on_the_login(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_spaaza(upstream)
    client = await proxy(spaaza_config(base, ca_file, hostname=SHOP_HOST))
    # the fake answers a login carrying the header with 400: a working login proves it absent
    resp = await client.get("/spaaza-admin/v1/shop")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["credentials"]["hostname"] == SHOP_HOST
    assert fake.last_hostname_header == SHOP_HOST
    assert fake.logins == 1
    fake.expire_all()  # the re-login after code 6 keeps it off too
    resp = await client.post("/spaaza-admin/v1/shop", data=b"x")
    assert resp.status == 200, await resp.text()
    assert fake.logins == 2
    assert fake.last_hostname_header == SHOP_HOST
    privileged = await client.get("/spaaza/v1/shop")
    assert privileged.status == 200
    assert fake.last_hostname_header == SHOP_HOST


async def test_the_login_request_itself_carries_only_the_form(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    seen: list[tuple[dict[str, str], dict[str, str]]] = []
    fake = ScriptedSpaaza()
    login = fake._login

    async def spy(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append((dict(request.headers), {k: str(v) for k, v in form.items()}))
        return await login(request)

    app = web.Application()
    app.router.add_post("/auth/login", spy)
    app.router.add_route("*", "/{tail:.*}", fake._handle)
    base = await upstream(app)
    client = await proxy(spaaza_config(base, ca_file, hostname=SHOP_HOST))
    assert (await client.get("/spaaza-admin/x", headers={HOSTNAME_HEADER: "client"})).status == 200
    assert len(seen) == 1
    headers, form = seen[0]
    assert form == {"username": USERNAME, "password": PASSWORD}
    assert HOSTNAME_HEADER.lower() not in {h.lower() for h in headers}
    assert headers["Content-Type"].startswith("application/x-www-form-urlencoded")


@pytest.mark.parametrize("value", ["", "${KEYHOP_TEST_SPAAZA_APP_HOSTNAME:-}"])
async def test_an_empty_hostname_is_not_sent_at_all(
    upstream: StartUpstream,
    proxy: MakeProxy,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
) -> None:
    monkeypatch.delenv("KEYHOP_TEST_SPAAZA_APP_HOSTNAME", raising=False)
    fake, base = await start_spaaza(upstream)
    client = await proxy(spaaza_config(base, ca_file, hostname=value))
    for path in ("/spaaza-admin/v1/x", "/spaaza/v1/x"):
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()
        assert "hostname" not in (await resp.json())["credentials"]
        assert fake.last_hostname_header is None
        assert HOSTNAME_HEADER not in fake.last_resource_headers


# -- refused logins ------------------------------------------------------------------------------


async def test_a_wrong_password_is_a_credential_error_and_one_login_per_backoff_step(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, clock: Clock
) -> None:
    fake, base = await start_spaaza(upstream, clock=clock)
    client = await proxy(spaaza_config(base, ca_file, password=WRONG_PASSWORD), clock=clock)

    async def burst(n: int = 50) -> list[str]:
        responses = await asyncio.gather(*(client.get(f"/spaaza-admin/v1/{i}") for i in range(n)))
        assert {r.status for r in responses} == {502}
        texts = [await r.text() for r in responses]
        for text in texts:
            body = json.loads(text)
            assert body["error"] == "credential_error"
            assert body["provider"] == "spaaza_admin"
            assert "login_failed" in body["message"]  # the vendor's error name
        return texts

    texts = await burst()
    assert fake.logins == 1  # 50 concurrent requests, one login attempt
    for _ in range(10):  # still inside the first 1 s step
        texts += await burst(1)
    assert fake.logins == 1
    clock.advance(1.3)  # past the first step (1 s, jittered up to 1.25 s)
    texts += await burst()
    assert fake.logins == 2
    clock.advance(1.0)  # the second step is at least 2 s
    texts += await burst()
    assert fake.logins == 2
    clock.advance(1.6)  # ... and at most 2.5 s
    texts += await burst()
    assert fake.logins == 3
    assert fake.resource_requests == 0
    assert_no_secrets(texts, [WRONG_PASSWORD, PASSWORD])


async def test_an_account_requiring_a_one_time_passcode_is_a_credential_error_naming_it(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_spaaza(upstream, require_otp=True)
    client = await proxy(spaaza_config(base, ca_file))
    responses = await asyncio.gather(*(client.get("/spaaza-admin/v1/x") for _ in range(20)))
    assert {r.status for r in responses} == {502}
    for r in responses:
        body = await r.json()
        assert body["error"] == "credential_error"
        assert "otp_required" in body["message"]
        assert PASSWORD not in body["message"]
    assert fake.logins == 1
    assert fake.resource_requests == 0
    view = await (await client.get("/-/providers")).json()
    assert "otp_required" in admin_view(view)["last_error"]


# -- where the expiry comes from -----------------------------------------------------------------


async def test_the_expiry_is_session_expires_date_read_as_utc(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3, hours=5, minutes=7)
    fake = ScriptedSpaaza(
        session_info={
            "session_key_validity": 1,  # disagrees on purpose: the date wins
            "session_expires_date": when.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    base = await upstream(fake.app)
    saved_tz = os.environ.get("TZ")
    os.environ["TZ"] = "JST-9"  # a local zone 9 h off UTC: the date must still read as UTC
    time.tzset()
    try:
        client = await proxy(spaaza_config(base, ca_file))
        assert (await client.get("/spaaza-admin/x")).status == 200
        session = await stored_session(client)
        view = admin_view(await (await client.get("/-/providers")).json())
    finally:
        if saved_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved_tz
        time.tzset()
    assert session.kind == "session"
    assert session.expires_at == when.timestamp()
    assert view["state"] == "valid"
    assert view["kind"] == "session"
    assert datetime.fromisoformat(view["expires_at"]) == when


async def test_without_a_date_the_expiry_is_session_key_validity_hours(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, clock: Clock
) -> None:
    fake = ScriptedSpaaza(session_info={"session_key_validity": 2})
    base = await upstream(fake.app)
    client = await proxy(spaaza_config(base, ca_file), clock=clock)
    assert (await client.get("/spaaza-admin/x")).status == 200
    session = await stored_session(client)
    assert session.expires_at == pytest.approx(clock.now + 2 * 3600)


async def test_providers_shows_the_fakes_session_valid_until_its_expiry_date(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, clock: Clock
) -> None:
    clock.now = float(int(clock.now)) + 0.75  # the date has whole seconds; validity would not
    fake, base = await start_spaaza(upstream, session_hours=24, clock=clock)
    client = await proxy(spaaza_config(base, ca_file), clock=clock)
    assert (await client.get("/spaaza-admin/x")).status == 200
    expected = datetime.fromtimestamp(int(clock.now) + 24 * 3600, UTC)
    session = await stored_session(client)
    assert session.expires_at == expected.timestamp()
    view = admin_view(await (await client.get("/-/providers")).json())
    assert view["state"] == "valid"
    assert view["kind"] == "session"
    assert datetime.fromisoformat(view["expires_at"]) == expected
    assert view["fetches"] == 1
    assert view["last_error"] is None
    text = await (await client.get("/-/providers")).text()
    assert_no_secrets([text], [session.fields["X-Spaaza-Session-Key"], PASSWORD])


# -- the other two presets -----------------------------------------------------------------------


async def test_the_privileged_preset_sends_the_bearer_pair_and_never_logs_in(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_spaaza(upstream)
    client = await proxy(spaaza_config(base, ca_file))
    resp = await client.get("/spaaza/v1/admin/x", headers={"Authorization": "Bearer forged:pair"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["credentials"]["kind"] == "privileged"
    headers = fake.last_resource_headers
    assert headers.getall("Authorization") == [f"Bearer {TOKEN_ID}:{TOKEN_SECRET}"]
    assert not any(h in headers for h in SESSION_HEADERS)
    assert fake.logins == 0


async def test_the_user_preset_passes_the_apps_own_session_and_authorization_untouched(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_spaaza(upstream)
    client = await proxy(spaaza_config(base, ca_file))
    # an admin login first: it deletes only the admin user's sessions, not the app user's
    assert (await client.get("/spaaza-admin/warm")).status == 200
    user_id, key = fake.create_user_session()
    own = {
        "X-Spaaza-Session-User-Id": str(user_id),
        "X-Spaaza-Session-Key": key,
        "Authorization": "Session app-own-7781",
    }
    resp = await client.get("/spaaza-user/v1/user/me", headers=own)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["credentials"]["kind"] == "user"
    assert body["credentials"]["session_user_id"] == user_id
    for name, value in own.items():
        assert fake.last_resource_headers.getall(name) == [value]
    # the client's own bearer pair passes too (only `none` lets it through)
    pair = {"Authorization": f"Bearer {TOKEN_ID}:{TOKEN_SECRET}"}
    resp = await client.get("/spaaza-user/v1/x", headers=pair)
    assert resp.status == 200
    assert (await resp.json())["credentials"]["kind"] == "privileged"
    assert fake.logins == 1  # the admin route's only
    # an app session that expired is the app's business: passed back, no login
    fake.expire_all()
    resp = await client.get("/spaaza-user/v1/user/me", headers=own)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == 6
    assert fake.logins == 1


# -- secrets and restarts ------------------------------------------------------------------------


async def test_no_password_session_key_or_token_secret_in_logs_or_error_bodies(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake, base = await start_spaaza(upstream)
    client = await proxy(spaaza_config(base, ca_file))
    bodies: list[str] = []
    for path in ("/spaaza-admin/v1/a?key=abc", "/spaaza/v1/b", "/-/providers", "/-/metrics"):
        bodies.append(await (await client.get(path)).text())
    first_key = (await stored_session(client)).fields["X-Spaaza-Session-Key"]
    fake.expire_all()
    bodies.append(await (await client.post("/spaaza-admin/v1/c", data=b"x")).text())
    second_key = (await stored_session(client)).fields["X-Spaaza-Session-Key"]
    user_id, user_key = fake.create_user_session()
    user_headers = {"X-Spaaza-Session-User-Id": str(user_id), "X-Spaaza-Session-Key": user_key}
    bodies.append(await (await client.get("/spaaza-user/v1/d", headers=user_headers)).text())
    # a refused login: its error body and log lines
    wrong = await proxy(spaaza_config(base, ca_file, password=WRONG_PASSWORD))
    refused = await wrong.get("/spaaza-admin/v1/e")
    assert refused.status == 502
    bodies.append(await refused.text())
    bodies.append(await (await wrong.get("/-/providers")).text())
    logs = [r.getMessage() for r in caplog.records if r.name.startswith("keyhop")]
    assert any('"credential":"fetched"' in line for line in logs)  # the log was captured
    assert_no_secrets(
        logs + bodies,
        [PASSWORD, WRONG_PASSWORD, TOKEN_SECRET, first_key, second_key, user_key],
    )


def _start(config: Path, tmp_path: Path, env: dict[str, str], port: int = 0) -> KeyhopProcess:
    # not waiting here: the fake answers on this test's event loop, which must keep running
    return KeyhopProcess(config, tmp_path, env=env, port=port).start(wait=False)


async def test_a_restarted_keyhop_process_reuses_the_stored_session_without_logging_in(
    upstream: StartUpstream, ca_file: str, tmp_path: Path
) -> None:
    fake, base = await start_spaaza(upstream)
    db = tmp_path / "state" / "tokens.db"
    data = spaaza_config(base, ca_file, store=f"sqlite://{db}")
    data["providers"]["spaaza_admin"]["auth"]["credentials"] = {
        "username": "${SPAAZA_ADMIN_USERNAME}",
        "password": "${SPAAZA_ADMIN_PASSWORD}",
    }
    config = write_config(tmp_path / "keyhop.yaml", data)
    env = {"SPAAZA_ADMIN_USERNAME": USERNAME, "SPAAZA_ADMIN_PASSWORD": PASSWORD}
    proc = _start(config, tmp_path, env)
    logs: list[str] = []
    try:
        await wait_healthy(proc.url, timeout=15)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            statuses = await asyncio.gather(
                *(s.get(f"{proc.url}/spaaza-admin/v1/{i}") for i in range(20))
            )
            assert [r.status for r in statuses] == [200] * 20
            for r in statuses:
                r.release()
        assert fake.logins == 1
        key = fake.last_resource_headers["X-Spaaza-Session-Key"]
        assert proc.stop() == 0
        logs.append(proc.logs())

        proc = _start(config, tmp_path, env, port=proc.port)
        await wait_healthy(proc.url, timeout=15)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(f"{proc.url}/spaaza-admin/v1/again") as r:
                assert r.status == 200, await r.text()
            async with s.get(f"{proc.url}/-/providers") as r:
                view = admin_view(await r.json())
        assert fake.logins == 1  # no login after the restart
        assert fake.sessions_created == 1
        assert fake.last_resource_headers["X-Spaaza-Session-Key"] == key
        assert view["state"] == "valid"
        assert view["kind"] == "session"
        assert view["fetches"] == 0
        assert proc.stop() == 0
        logs.append(proc.logs())
    finally:
        proc.stop()
    assert any('"credential":"store"' in text for text in logs)
    assert_no_secrets(logs, [PASSWORD, key, TOKEN_SECRET])


# -- the shipped configuration -------------------------------------------------------------------


def test_the_shipped_config_shows_the_three_spaaza_routes_side_by_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = ROOT / "config" / "keyhop.yaml"
    text = path.read_text()
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)\}", text)):
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    monkeypatch.delenv("SPAAZA_APP_HOSTNAME", raising=False)
    config = load_config(str(path))
    kinds = {name: config.providers[name].kind for name in config.providers}
    assert kinds["spaaza_privileged"] == "static"
    assert kinds["spaaza_admin"] == "session_login"
    assert kinds["spaaza_user"] == "none"
    routed = {r.provider for r in config.routes}
    assert {"spaaza_privileged", "spaaza_admin", "spaaza_user"} <= routed
