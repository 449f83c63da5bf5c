"""The `routes:` list of the config (SPEC 3, 4.1): prefixes, upstreams (with a base path),
providers, tenants and websockets, each problem located by its key path."""

from __future__ import annotations

from urllib.parse import urlsplit

from proxy.routing import DEFAULT_PORTS, Route, Upstream, check_prefix
from proxy.schema import Node, Problems, describe, is_url


def read_routes(root: Node, problems: Problems) -> list[Route]:
    """Every route that reads whole, in order; a repeated prefix is reported."""
    routes: list[Route] = []
    for i, item in enumerate(root.seq("routes")):
        rnode = Node(item, f"routes[{i}]", problems)
        prefix = rnode.string("prefix", required=True)
        upstream = read_upstream(rnode, "upstream")
        provider_name = rnode.string("provider", required=True)
        tenant = rnode.choice("tenant", ("header", "path"), "header")
        websocket = rnode.boolean("websocket", False)
        rnode.finish()
        if prefix is not None:
            err = check_prefix(prefix)
            if err:
                rnode.error("prefix", err)
                prefix = None
        if prefix is None or upstream is None or provider_name is None:
            continue
        routes.append(Route(prefix.rstrip("/") or "/", upstream, provider_name, tenant, websocket))
    seen: dict[str, int] = {}
    for i, route in enumerate(routes):
        if route.prefix in seen:
            problems.add(
                f"routes[{i}].prefix", f"{route.prefix!r} is already routes[{seen[route.prefix]}]"
            )
        seen.setdefault(route.prefix, i)
    return routes


def read_upstream(node: Node, key: str) -> Upstream | None:
    text = node.string(key, required=True)
    if text is None:
        return None
    parts = urlsplit(text)
    if not is_url(text) or parts.query or parts.fragment or parts.username or parts.password:
        node.error(key, f"expected http(s)://host[:port][/base/path], found {describe(text)}")
        return None
    base_path = parts.path.rstrip("/")
    if any(seg in (".", "..") for seg in base_path.split("/")):
        node.error(key, "the base path may not hold dot-segments")
        return None
    port = parts.port
    return Upstream(
        scheme=parts.scheme,
        host=(parts.hostname or "").lower(),
        port=port or DEFAULT_PORTS[parts.scheme],
        explicit_port=port is not None,
        base_path=base_path,
    )
