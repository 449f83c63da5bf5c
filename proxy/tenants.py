"""Which account a request is for (SPEC 3.3): the X-Keyhop-Tenant header, or the first path
segment after the prefix on a `tenant: path` route."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.errors import BadRequest, TenantRequired
from proxy.providers import TENANT_RE, TENANT_RULE, ProviderConfig
from proxy.routing import RouteMatch


def pick_tenant(
    headers: Mapping[str, str], match: RouteMatch, provider: ProviderConfig
) -> str | None:
    if not provider.tenants:
        return None
    if match.route.tenant == "path":
        tenant = match.tenant
    else:
        tenant = headers.get("X-Keyhop-Tenant")
    tenant = tenant or provider.default_tenant
    if not tenant:
        how = (
            f"the first path segment after {match.route.prefix}"
            if match.route.tenant == "path"
            else "an X-Keyhop-Tenant header"
        )
        raise TenantRequired(
            f"{provider.name} serves several accounts: name one with {how}",
            route=match.route.prefix,
            provider=provider.name,
        )
    if not TENANT_RE.fullmatch(tenant):
        raise BadRequest(TENANT_RULE, route=match.route.prefix, provider=provider.name)
    return tenant
