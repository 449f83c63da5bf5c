"""The one seam every auth type plugs into.

A scheme is a small frozen dataclass with no I/O. Getting a credential is a generator
(`CredentialFlow`) that yields HttpRequests, is sent the HttpResponses, and returns the
Credential; forward.run_flow is the only code that does the sending. Adding a provider of
a known kind needs YAML only; adding a kind needs one class here and one line in SCHEMES.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from proxy.messages import HttpRequest, HttpResponse
from proxy.schema import Node, Secret
from proxy.tokens import Credential

CredentialFlow = Generator[HttpRequest, HttpResponse, Credential]


@dataclass(frozen=True)
class SchemeContext:
    """What a scheme's options are read against: its provider's name and base URL, and
    whether the provider presents a client certificate (its `tls:` block, SPEC 5.3)."""

    provider: str
    base_url: str | None  # endpoints written as paths resolve against it
    #: RFC 8705 tls_client_auth is only possible when the transport has a certificate to show
    client_certificate: bool = False


class AuthScheme(Protocol):
    """An auth type, e.g. `oauth2_client_credentials`.

    - `default_headers` are the templates sent unless the provider's `headers` override them
      (`{token}` is the credential, `{tenant}` the tenant).
    - `template_vars` are values known at config time (`{client_id}`, a static `{token}`).
    - `credential_flow` returns None when the scheme needs no credential, or a flow; it raises
      NotConnected when only a person can provide one (a login, an app install).
    - `credential_headers` turns a credential's named fields into headers (session ids).
    """

    kind: ClassVar[str]
    default_headers: ClassVar[Mapping[str, str]]
    #: the credential can be fetched again at will (no person involved); drives refresh_on
    refetchable: ClassVar[bool]
    #: requests wait for a credential (False: headers only, or nothing at all)
    needs_credential: ClassVar[bool]
    #: the client's own Authorization header is forwarded (only `none`)
    passes_client_auth: ClassVar[bool]

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> AuthScheme: ...

    @property
    def client_id(self) -> str | None: ...

    @property
    def signing_key(self) -> Secret | None: ...

    def template_vars(self) -> Mapping[str, str | Secret]: ...

    def credential_flow(
        self, previous: Credential | None, tenant: str | None, now: float
    ) -> CredentialFlow | None: ...

    def credential_headers(self, credential: Credential) -> Mapping[str, str]: ...

    def identity(self) -> str:
        """What a stored credential must have been obtained with to be reused (its type,
        endpoint and client): after a config change, records of the old setup are ignored."""
        ...


class FetchedBearer:
    """The answers most schemes give: keyhop fetches the credential itself, at will, and
    sends it as a bearer token. Mixed in; a scheme that differs says so itself."""

    default_headers: ClassVar[Mapping[str, str]] = {"Authorization": "Bearer {token}"}
    refetchable: ClassVar[bool] = True
    needs_credential: ClassVar[bool] = True
    passes_client_auth: ClassVar[bool] = False


class ClientApp:
    """What every scheme identified by a client id and secret shares: `{client_id}` for
    header templates, and the secret as the default `sign:` key. Mixed into the dataclass."""

    client_id_value: str
    client_secret: Secret | None

    @property
    def client_id(self) -> str | None:
        return self.client_id_value

    @property
    def signing_key(self) -> Secret | None:
        return self.client_secret

    def template_vars(self) -> Mapping[str, str | Secret]:
        return {"client_id": self.client_id_value}

    def credential_headers(self, credential: Credential) -> Mapping[str, str]:
        return {}

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def identity(self) -> str:
        return f"{getattr(self, 'kind', '')}|{self.endpoint}|{self.client_id_value}"
