"""The console's main page, from `admin.providers_view` (which already redacts errors).

Pure: the view, the clock and a few facts in; one HTML document out. Every value goes
through `h` (escaped); state is said in words and in colour (the CSS class), never colour
alone. Countdowns are text the server computes; console.js only keeps them ticking.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.console_html import Html, form, h, join, page


@dataclass(frozen=True)
class ProviderFacts:
    """What the view does not say but the page needs: how a person connects the provider
    ("login", "install" or None) and the tenant a request without one uses."""

    connect: str | None = None
    default_tenant: str | None = None


def _ts(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float) -> str:
    """A duration as a person reads it (console.js writes the same)."""
    s = int(abs(seconds))
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def countdown(ts: float, now: float) -> Html:
    """A <time> console.js keeps counting; its words are right without the script too."""
    words = f"in {span(ts - now)}" if ts > now else f"{span(now - ts)} ago"
    return h(
        '<time datetime="{}" data-at="{}" title="{}">{}</time>',
        datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds"),
        f"{ts:.0f}",
        when(ts),
        words,
    )


def state_of(row: Mapping[str, Any], facts: ProviderFacts) -> str:
    state = str(row["state"])
    if state == "missing" and facts.connect is not None:
        return "not connected"  # only a person can fix it (a login, an install)
    return state


_WORDS = {
    "missing": "missing (fetched on the first request)",
    "static": "static (nothing to fetch)",
}


def _state_cell(state: str, row: Mapping[str, Any], throttled: float | None, now: float) -> Html:
    parts = [
        h('<span class="state s-{}">{}</span>', state.replace(" ", "-"), _WORDS.get(state, state))
    ]
    backoff = _ts(row.get("next_attempt_at"))
    if backoff is not None and backoff > now:
        parts.append(h(' <span class="state s-backoff">backing off until {}</span>', when(backoff)))
    if throttled is not None:
        parts.append(
            h(' <span class="state s-throttled">throttled until {}</span>', when(throttled))
        )
    return join(parts)


def _row(
    name: str,
    row: Mapping[str, Any],
    facts: ProviderFacts,
    throttled: float | None,
    now: float,
    csrf: str,
) -> Html:
    tenant = row.get("tenant")
    state = state_of(row, facts)
    expires = _ts(row.get("expires_at"))
    if expires is not None:
        expiry = countdown(expires, now)
    else:
        expiry = Html("never") if row.get("kind") else Html("—")
    error = Html("")
    if row.get("last_error"):
        at = _ts(row.get("last_error_at"))
        error = h(
            "<span class=error>{}</span>{}",
            row["last_error"],
            h(" <small>{}</small>", countdown(at, now)) if at is not None else Html(""),
        )
    keys = {"provider": name, "tenant": tenant or ""}
    actions = []
    if facts.connect == "login":
        actions.append(form("/-/console/connect", csrf, keys, Html("<button>Connect</button>")))
    if state != "static" and row.get("renewable") and facts.connect != "install":
        actions.append(form("/-/console/renew", csrf, keys, Html("<button>Renew now</button>")))
    if state != "static" and row.get("kind"):
        actions.append(
            form("/-/console/revoke", csrf, keys, Html("<button class=danger>Revoke</button>"))
        )
    return h(
        '<tr data-provider="{}" data-tenant="{}" data-state="{}"><td>{}</td><td>{}</td>'
        "<td>{}</td><td>{}</td><td>{}</td><td class=actions>{}</td></tr>",
        name,
        tenant or "",
        state,
        tenant or "—",
        _state_cell(state, row, throttled, now),
        expiry,
        error,
        row.get("fetches", 0),
        join(actions),
    )


def _connect_form(name: str, wants_tenant: bool, facts: ProviderFacts, csrf: str) -> Html:
    if facts.connect == "login":
        field = (
            h(
                '<label>Tenant <input name=tenant value="{}" required '
                'pattern="[A-Za-z0-9][A-Za-z0-9._~\\-]{{0,127}}"></label> ',
                facts.default_tenant or "",
            )
            if wants_tenant
            else Html("")
        )
        inner = h("{}<button class=primary>Connect {}</button>", field, name)
        return form("/-/console/connect", csrf, {"provider": name}, inner, "connect")
    if facts.connect == "install":
        inner = h(
            "<label>Shop id <input name=tenant placeholder=optional></label> "
            "<button>Install link</button>"
        )
        return form("/-/console/install", csrf, {"provider": name}, inner, "connect")
    return Html("")


def _provider(
    name: str,
    p: Mapping[str, Any],
    facts: ProviderFacts,
    throttled: float | None,
    now: float,
    csrf: str,
) -> tuple[Html, list[str]]:
    rows = list(p["tenants"])
    if p.get("tenants_required") and facts.default_tenant:
        if not any(r.get("tenant") == facts.default_tenant for r in rows):
            rows.insert(0, {"tenant": facts.default_tenant, "state": "missing", "fetches": 0})
    states = [state_of(r, facts) for r in rows]
    body = join(_row(name, r, facts, throttled, now, csrf) for r in rows)
    if not rows:
        body = Html("<tr><td colspan=6 class=empty>no tenant connected yet</td></tr>")
    badge = (
        h(' <span class="state s-throttled">throttled until {}</span>', when(throttled))
        if throttled is not None
        else Html("")
    )
    routes = join(h("<code>{}</code> ", r) for r in p.get("routes", [])) or Html("none")
    return (
        h(
            '<section class=provider id="p-{}"><h2>{} <span class=kind>{}</span>{}</h2>'
            "<p class=routes>Routes: {}</p>"
            "<table><thead><tr><th>Tenant</th><th>State</th><th>Expires</th><th>Last error</th>"
            "<th>Fetches</th><th>Actions</th></tr></thead><tbody>{}</tbody></table>{}</section>",
            name,
            name,
            p["auth"],
            badge,
            routes,
            body,
            _connect_form(name, bool(p.get("tenants_required")), facts, csrf),
        ),
        states,
    )


def console_page(
    view: Mapping[str, Any],
    now: float,
    *,
    facts: Mapping[str, ProviderFacts],
    throttled: Mapping[str, float],
    csrf: str,
    flash: tuple[bool, str] | None = None,
    can_leave: bool = False,
) -> Html:
    sections, counts = [], Counter[str]()
    for name, p in view["providers"].items():
        section, states = _provider(
            name, p, facts.get(name, ProviderFacts()), throttled.get(name), now, csrf
        )
        sections.append(section)
        counts.update(states)
    store = view["store"]
    health = h(
        '<span class="state {}">{}</span>',
        "s-valid" if store["ok"] else "s-expired",
        "reachable" if store["ok"] else "unreachable (keyhop serves from memory)",
    )
    summary = " · ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no providers"
    notice = (
        h('<p class="flash {}" role=status>{}</p>', "ok" if flash[0] else "error", flash[1])
        if flash
        else Html("")
    )
    leave = (
        form("/-/console/logout", csrf, {}, Html("<button>Forget the key</button>"), "logout")
        if can_leave
        else Html("")
    )
    header = h(
        "<header><h1>keyhop console</h1><p>Token store <code>{}</code> is {}</p>"
        "<p class=summary>{}</p><p class=hint>As of {} · "
        '<a href="/-/console">refresh</a></p>{}</header>',
        store["engine"],
        health,
        summary,
        when(now),
        leave,
    )
    return page("keyhop console", h("{}{}<main>{}</main>", header, notice, join(sections)))
