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
    """Headers only; `token` (or `token_id:token_secret`) is `{token}` in header templates."""

    kind: ClassVar[str] = "static"
    default_headers: ClassVar[Mapping[str, str]] = {}
    refetchable: ClassVar[bool] = False
    needs_credential: ClassVar[bool] = False
    passes_client_auth: ClassVar[bool] = False

    token: Secret | None = field(default=None, repr=False)
    client_id_value: str | None = None

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> StaticKey:
        token = node.secret("token")
        token_id, token_secret = node.string("token_id"), node.secret("token_secret")
        if token_id is not None or token_secret is not None:
            # a key pair as issued (Spaaza: token_id and token_secret), sent as id:secret
            if token is not None or token_id is None or token_secret is None:
                node.error("token_id", "give token, or both token_id and token_secret")
            else:
                token = Secret(f"{token_id}:{token_secret.reveal()}")
        return cls(token=token, client_id_value=node.string("client_id"))

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

    def identity(self) -> str:
        return self.kind  # nothing is ever stored


@dataclass(frozen=True)
class NoAuth(StaticKey):
    """Adds nothing; the only type under which the client's own Authorization is forwarded."""

    kind: ClassVar[str] = "none"
    passes_client_auth: ClassVar[bool] = True

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> NoAuth:
        return cls(client_id_value=node.string("client_id"))
