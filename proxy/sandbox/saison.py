"""Fake Saison Connect API.

A person logs in once at `/auth/screen/<member>/authorize` (a small HTML form here), which
yields a one-time code; `/auth/token` (with `X-API-VERSION: 1` and the client credentials in
a form body) trades it for an access token and a refresh token, and the refresh token for new
ones, rotating it on every use. Resources need `X-API-VERSION: 1` and a MAC signature
(SPEC 4.2) that this fake recomputes from the request exactly as it arrived: the method, the
raw path and query, the `Host` header's host and port (443/80 by scheme when absent).
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from aiohttp import web
from yarl import URL

from proxy.sandbox.base import (
    NO_STORE,
    Clock,
    FakeProvider,
    json_error,
    mask,
    new_token,
    same,
)
from proxy.sandbox.credentials import SAISON_CLIENT_ID, SAISON_CLIENT_SECRET
from proxy.signing import mac_normalized_string, mac_signature, parse_mac_authorization

NONCE: Final = re.compile(r"[0-9A-Za-z]{10}")
FORM: Final = "application/x-www-form-urlencoded"
CODE_TTL: Final = 600


@dataclass
class _Code:
    member: str
    expires: float
    redirect_uri: str | None
    scope: str | None


@dataclass
class _Access:
    member: str
    expires: float
    scope: str | None


def host_and_port(host_header: str, secure: bool) -> tuple[str, int]:
    """Host (lower-case, IPv6 without brackets) and port of a Host header, the port defaulting
    to the scheme's (443 for https, 80 for http)."""
    default = 443 if secure else 80
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[1:end], value[end + 1 :]
    else:
        host, sep, port = value.rpartition(":")
        host, rest = (host, ":" + port) if sep else (value, "")
    if rest.startswith(":") and rest[1:].isdigit():
        return host, int(rest[1:])
    return host, default


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        content_type="text/html",
        text=(
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:36em;margin:3em auto}"
            "code{font-size:1.3em;background:#eee;padding:.2em .4em}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
        ),
    )


class FakeSaison(FakeProvider):
    """Saison's login screen, token endpoint with refresh rotation, and MAC-verified resources."""

    name: ClassVar[str] = "saison"
    counter_names: ClassVar[tuple[str, ...]] = (
        *FakeProvider.counter_names,
        "refresh_requests",
        "codes_issued",
        "tokens_issued",
    )

    def __init__(
        self,
        client_id: str = SAISON_CLIENT_ID,
        client_secret: str = SAISON_CLIENT_SECRET,
        token_ttl: int = 3600,
        rotate_refresh: bool = True,
        max_skew: int = 300,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.rotate_refresh = rotate_refresh
        self.max_skew = max_skew
        self.refresh_requests = 0
        self.codes_issued = 0
        self.tokens_issued = 0
        #: the member of the most recently issued access token
        self.last_member_for_token: str | None = None
        #: the member of the most recently accepted resource request
        self.last_member: str | None = None
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, str] = {}  # refresh token -> member
        self._nonces: dict[str, float] = {}  # nonce -> when it was seen (insertion-ordered)
        super().__init__(clock=clock)

    def setup_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/auth/screen/{member}/authorize", self._authorize_page)
        router.add_post("/auth/screen/{member}/authorize", self._authorize_submit)
        router.add_post("/auth/token", self._token)
        router.add_post("/-/sandbox/revoke-refresh", self._control_revoke_refresh)
        router.add_route("*", "/auth/{tail:.*}", self.handle_resource)
        router.add_route("*", "/api/{tail:.*}", self.handle_resource)

    # --- knobs -------------------------------------------------------------------------------

    def expire_all(self) -> None:
        """Expire every access token; refresh tokens stay valid."""
        self._access.clear()

    def revoke_refresh_tokens(self) -> None:
        """Invalidate every refresh token: the member must log in again in a browser."""
        self._refresh.clear()

    def issue_code(
        self, member: str, redirect_uri: str | None = None, scope: str | None = None
    ) -> str:
        """A one-time authorization code for `member`, as if they had logged in."""
        code = new_token()
        self._codes[code] = _Code(member, self.clock() + CODE_TTL, redirect_uri, scope)
        self.codes_issued += 1
        return code

    def member_for_token(self, access_token: str) -> str | None:
        access = self._access.get(access_token)
        return access.member if access else None

    def refresh_token_valid(self, refresh_token: str) -> bool:
        return refresh_token in self._refresh

    # --- login screen ------------------------------------------------------------------------

    def _authorize_problem(self, request: web.Request) -> str | None:
        query = request.query
        client_id = query.get("client_id", "")
        if not client_id or not same(client_id, self.client_id):
            return "unknown client_id"
        if query.get("response_type") != "code":
            return "response_type must be code"
        redirect_uri = query.get("redirect_uri")
        if redirect_uri is not None:
            try:
                scheme = URL(redirect_uri).scheme
            except ValueError:
                scheme = ""
            if scheme not in ("http", "https"):
                return "redirect_uri must be an http(s) URL"
        return None

    async def _authorize_page(self, request: web.Request) -> web.Response:
        member = request.match_info["member"]
        problem = self._authorize_problem(request)
        if problem is not None:
            return _page("Saison sandbox: bad request", f"<p>{html.escape(problem)}</p>", 400)
        scope = request.query.get("scope")
        scope_line = f"<p>Scope: <code>{html.escape(scope)}</code></p>" if scope else ""
        return _page(
            "Saison sandbox login",
            f"<p>Log in as member <b>{html.escape(member)}</b> and allow this app to act for"
            " them. This is the sandbox: there is no password.</p>"
            f"{scope_line}"
            '<form method="post">'
            '<button type="submit" name="decision" value="allow">Log in and allow</button> '
            '<button type="submit" name="decision" value="deny">Deny</button>'
            "</form>",
        )

    async def _authorize_submit(self, request: web.Request) -> web.StreamResponse:
        member = request.match_info["member"]
        problem = self._authorize_problem(request)
        if problem is not None:
            return _page("Saison sandbox: bad request", f"<p>{html.escape(problem)}</p>", 400)
        form = await request.post()
        query = request.query
        redirect_uri, state = query.get("redirect_uri"), query.get("state")
        extra = {"state": state} if state is not None else {}
        if form.get("decision") == "deny":
            if redirect_uri:
                location = URL(redirect_uri).update_query({"error": "access_denied", **extra})
                raise web.HTTPFound(location)
            return _page("Saison sandbox: access denied", "<p>You denied access.</p>", 403)
        code = self.issue_code(member, redirect_uri, query.get("scope"))
        if redirect_uri:
            raise web.HTTPFound(URL(redirect_uri).update_query({"code": code, **extra}))
        return _page(
            "Saison sandbox: logged in",
            f"<p>Member <b>{html.escape(member)}</b> is logged in. Your one-time code:</p>"
            f'<p><code id="code">{html.escape(code)}</code></p>'
            "<p>Paste it where keyhop asks for it (<code>keyhop login saison --tenant "
            f"{html.escape(member)}</code>).</p>",
        )

    # --- token endpoint ----------------------------------------------------------------------

    def _issue(self, member: str, scope: str | None, refresh: str | None) -> dict[str, Any]:
        now = self.clock()
        for stale in [t for t, a in self._access.items() if a.expires <= now]:
            del self._access[stale]
        access = new_token()
        self._access[access] = _Access(member, now + self.token_ttl, scope)
        if refresh is None:
            refresh = new_token()
            self._refresh[refresh] = member
        self.tokens_issued += 1
        self.last_member_for_token = member
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
            "refresh_token": refresh,
        }
        if scope:
            answer["scope"] = scope
        return answer

    async def _token(self, request: web.Request) -> web.StreamResponse:
        early = await self.token_gate()
        if early is not None:
            return early
        if request.headers.get("X-API-VERSION") != "1":
            return json_error(
                400, {"error": "invalid_request", "error_description": "X-API-VERSION: 1 required"}
            )
        if request.content_type != FORM:
            return json_error(
                400, {"error": "invalid_request", "error_description": "form-urlencoded body"}
            )
        form = await request.post()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if not (
            isinstance(client_id, str)
            and isinstance(client_secret, str)
            and same(client_id, self.client_id)
            and same(client_secret, self.client_secret)
        ):
            return json_error(401, {"error": "invalid_client"})
        grant = form.get("grant_type")
        if grant == "authorization_code":
            code = self._codes.pop(str(form.get("code", "")), None)
            given_redirect = form.get("redirect_uri")
            # RFC 6749 4.1.3: a redirect_uri sent with the exchange must match the login's
            mismatch = (
                given_redirect is not None
                and code is not None
                and (code.redirect_uri is not None and given_redirect != code.redirect_uri)
            )
            if code is None or code.expires <= self.clock() or mismatch:
                return json_error(400, {"error": "invalid_grant"})
            answer = self._issue(code.member, code.scope, None)
        elif grant == "refresh_token":
            self.refresh_requests += 1
            old = str(form.get("refresh_token", ""))
            member = self._refresh.get(old)
            if member is None:
                return json_error(400, {"error": "invalid_grant"})
            if self.rotate_refresh:
                del self._refresh[old]
            answer = self._issue(member, None, None if self.rotate_refresh else old)
        elif grant is None:
            return json_error(400, {"error": "invalid_request"})
        else:
            return json_error(400, {"error": "unsupported_grant_type"})
        return web.json_response(answer, headers=NO_STORE)

    async def _control_revoke_refresh(self, request: web.Request) -> web.Response:
        self.revoke_refresh_tokens()
        return web.json_response({"ok": True})

    # --- resources ---------------------------------------------------------------------------

    def _reject(self, reason: str) -> web.Response:
        return json_error(
            401,
            {"error": "invalid_token", "reason": reason},
            {"WWW-Authenticate": f'MAC error="{reason}"'},
        )

    def _nonce_seen(self, nonce: str, now: float) -> bool:
        cutoff = now - 2 * self.max_skew
        while self._nonces:
            oldest, seen = next(iter(self._nonces.items()))
            if seen >= cutoff:
                break
            del self._nonces[oldest]
        return nonce in self._nonces

    def authenticate(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        if request.headers.get("X-API-VERSION") != "1":
            return json_error(
                400, {"error": "invalid_request", "error_description": "X-API-VERSION: 1 required"}
            )
        fields = parse_mac_authorization(request.headers.get("Authorization", ""))
        if fields is None:
            return self._reject("missing_or_malformed_mac")
        now = self.clock()
        access = self._access.get(fields["id"])
        if access is None:
            return self._reject("unknown_token")
        if access.expires <= now:
            return self._reject("token_expired")
        nonce, ts = fields["nonce"], fields["ts"]
        if not NONCE.fullmatch(nonce):
            return self._reject("bad_nonce")
        if not (ts.isascii() and ts.isdigit()) or abs(now - int(ts)) > self.max_skew:
            return self._reject("stale_timestamp")
        host, port = host_and_port(request.headers.get("Host", ""), request.secure)
        normalized = mac_normalized_string(ts, nonce, request.method, request.raw_path, host, port)
        if not same(fields["mac"], mac_signature(self.client_secret.encode(), normalized)):
            return self._reject("mac_mismatch")
        if self._nonce_seen(nonce, now):
            return self._reject("nonce_reused")
        self._nonces[nonce] = now
        self.last_member = access.member
        return {
            "member": access.member,
            "access_token": mask(fields["id"]),
            "ts": ts,
            "nonce": nonce,
            "mac": mask(fields["mac"]),
            "signed_over": {
                "method": request.method,
                "path_and_query": request.raw_path,
                "host": host,
                "port": port,
            },
        }
