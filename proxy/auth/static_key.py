"""`static` (fixed headers, e.g. Spaaza privileged) and `none` (the client's own auth passes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from proxy.auth.base import CredentialFlow, SchemeContext
from proxy.schema import Node, Secret
from proxy.tokens import Credential


@dataclass(frozen=True)
class StaticKey:
    """Headers only; `token` is available to header templates as `{token}`."""

    kind: ClassVar[str] = "static"
    default_headers: ClassVar[Mapping[str, str]] = {}
    refetchable: ClassVar[bool] = False

    token: Secret | None = field(default=None, repr=False)
    client_id_value: str | None = None

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> StaticKey:
        return cls(token=node.secret("token"), client_id_value=node.string("client_id"))

    @property
    def client_id(self) -> str | None:
        return self.client_id_value

    @property
    def signing_key(self) -> Secret | None:
        return self.token

    def template_vars(self) -> Mapping[str, str | Secret]:
        out: dict[str, str | Secret] = {}
        if self.token is not None:
            out["token"] = self.token
        if self.client_id_value is not None:
            out["client_id"] = self.client_id_value
        return out

    def credential_flow(
        self, previous: Credential | None, tenant: str | None, now: float
    ) -> CredentialFlow | None:
        return None

    def credential_headers(self, credential: Credential) -> Mapping[str, str]:
        return {}


@dataclass(frozen=True)
class NoAuth(StaticKey):
    """Adds nothing; the only type under which the client's own Authorization is forwarded."""

    kind: ClassVar[str] = "none"

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> NoAuth:
        return cls(client_id_value=node.string("client_id"))
