"""`session_login`: log in with a form, carry the session in headers (Spaaza admin).

Spaaza deletes a user's other sessions at every login, so the session is shared by every
request (and replica, through the store) and a login happens only when none is usable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final
from urllib.parse import urlencode

from proxy.auth.base import CredentialFlow, SchemeContext
from proxy.auth.oauth2 import FORM, read_header_map, read_secret_map
from proxy.errors import CredentialError
from proxy.messages import HttpRequest, HttpResponse, dotted
from proxy.schema import Node, Secret
from proxy.tokens import Credential

DEFAULT_VALID_FOR: Final = 3600.0


def parse_expiry(value: Any) -> float | None:
    """An expiry as unix seconds: a number, `YYYY-MM-DD HH:MM:SS` (UTC) or ISO 8601."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # Spaaza's dates are UTC without a zone
        return parsed.timestamp()
    return None


def _hours(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        hours = float(value)
    except (TypeError, ValueError):
        return None
    return hours if hours > 0 else None


@dataclass(frozen=True)
class SessionLogin:
    """POST `credentials` to `login_url`; `session_headers` name header -> dotted JSON path."""

    kind: ClassVar[str] = "session_login"
    default_headers: ClassVar[Mapping[str, str]] = {}
    refetchable: ClassVar[bool] = True
    needs_credential: ClassVar[bool] = True
    passes_client_auth: ClassVar[bool] = False

    provider: str
    login_url: str
    credentials: Mapping[str, Secret] = field(repr=False)
    session_headers: Mapping[str, str]
    expires_at: str | None = None
    valid_for_hours: str | None = None
    valid_for: float | None = None
    error_path: str | None = None
    login_format: str = "form"
    login_headers: Mapping[str, Secret] = field(default_factory=dict, repr=False)

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> SessionLogin:
        headers_node = node.child("session_headers")
        session_headers = {
            str(k): headers_node.string(str(k), required=True) or "" for k in headers_node.raw
        }
        if not session_headers:
            node.error("session_headers", "required: which response fields become which headers")
        credentials = read_secret_map(node, "credentials")
        if not credentials:
            node.error("credentials", "required: the form fields the login sends")
        return cls(
            provider=ctx.provider,
            login_url=node.url("login_url", required=True, base=ctx.base_url) or "",
            credentials=credentials,
            session_headers=session_headers,
            expires_at=node.string("expires_at"),
            valid_for_hours=node.string("valid_for_hours"),
            valid_for=node.number("valid_for", 0.0, minimum=0.0) or None,
            error_path=node.string("error_path"),
            login_format=node.choice("login_format", ("form", "json"), "form"),
            login_headers=read_header_map(node, "login_headers"),
        )

    @property
    def client_id(self) -> str | None:
        return None

    @property
    def signing_key(self) -> Secret | None:
        return None

    def template_vars(self) -> Mapping[str, str | Secret]:
        return {}

    def login_request(self) -> HttpRequest:
        fields = {k: v.reveal() for k, v in self.credentials.items()}
        headers = {"Accept": "application/json"}
        headers.update({k: v.reveal() for k, v in self.login_headers.items()})
        if self.login_format == "json":
            headers["Content-Type"] = "application/json"
            return HttpRequest("POST", self.login_url, headers, json.dumps(fields).encode())
        headers["Content-Type"] = FORM
        return HttpRequest("POST", self.login_url, headers, urlencode(fields).encode())

    def credential_flow(
        self, previous: Credential | None, tenant: str | None, now: float
    ) -> CredentialFlow:
        response = yield self.login_request()
        return self.parse_login(response, now)

    def parse_login(self, response: HttpResponse, now: float) -> Credential:
        body = response.json()
        values = {name: dotted(body, path) for name, path in self.session_headers.items()}
        if response.status >= 300 or any(v is None or v == "" for v in values.values()):
            raise CredentialError(
                f"login to {self.provider} failed: {self._error_name(body, response.status)}",
                provider=self.provider,
            )
        fields = {name: str(value) for name, value in values.items()}
        expires = parse_expiry(dotted(body, self.expires_at)) if self.expires_at else None
        if expires is None and self.valid_for_hours:
            hours = _hours(dotted(body, self.valid_for_hours))
            expires = now + hours * 3600 if hours else None
        if expires is None:
            expires = now + (self.valid_for or DEFAULT_VALID_FOR)
        if expires <= now:
            raise CredentialError(
                f"login to {self.provider} returned a session that has already expired",
                provider=self.provider,
            )
        return Credential(
            token="|".join(fields.values()),
            expires_at=expires,
            obtained_at=now,
            fields=fields,
            kind="session",
        )

    def _error_name(self, body: Any, status: int) -> str:
        name = dotted(body, self.error_path) if self.error_path else None
        if name is None and isinstance(body, Mapping):
            error = body.get("error")
            name = error.get("name") or error.get("code") if isinstance(error, Mapping) else error
        text = str(name) if name is not None else ""
        if text and len(text) <= 80 and text.isprintable():
            return f"{text} (HTTP {status})"
        return f"HTTP {status}"

    def credential_headers(self, credential: Credential) -> Mapping[str, str]:
        return credential.fields

    def identity(self) -> str:
        # another account means another session; a short digest, never the values themselves
        digest = hashlib.sha256(
            "\n".join(f"{k}={v.reveal()}" for k, v in sorted(self.credentials.items())).encode()
        ).hexdigest()[:12]
        return f"{self.kind}|{self.login_url}|{digest}"
