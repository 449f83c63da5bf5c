"""HTML for the console, escaped by default: `h(template, *values)` escapes every value that
is not already `Html`, so a tenant id or an upstream error message is always shown as text.

Plain string building with `html.escape` rather than a template library: the pages are a
few small fragments, keyhop gains no runtime dependency, and escaping is still the default
(a value is only ever markup when it was built by `h`). Pure: no aiohttp, no I/O.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable
from typing import Final

ASSETS: Final = "/-/console/assets"


class Html(str):
    """Markup built by `h`: inserted as it is."""

    __slots__ = ()


def h(template: str, *values: object) -> Html:
    """`template` (trusted markup with `{}` slots) filled with `values`, each HTML-escaped
    (quotes too: values also land in attributes) unless it is `Html` already."""
    return Html(
        template.format(*(v if isinstance(v, Html) else html.escape(str(v)) for v in values))
    )


def join(parts: Iterable[Html]) -> Html:
    return Html("".join(parts))


def page(title: str, body: Html, *, refresh_to: str | None = None) -> Html:
    """A whole document: every asset from keyhop itself (no CDN), the JS optional."""
    refresh = h('<meta http-equiv="refresh" content="0; url={}">', refresh_to) if refresh_to else ""
    return h(
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        "{}<title>{}</title>"
        '<link rel=stylesheet href="{}/console.css">'
        '<script src="{}/console.js" defer></script>'
        "</head><body>{}</body></html>\n",
        Html(refresh),
        title,
        ASSETS,
        ASSETS,
        body,
    )


@functools.lru_cache(maxsize=4096)  # the same few (csrf, provider) fields on every row
def hidden(name: str, value: str) -> Html:
    return h('<input type=hidden name="{}" value="{}">', name, value)


def form(action: str, csrf: str, fields: dict[str, str], inner: Html, css: str = "") -> Html:
    """A POST form carrying the CSRF token and hidden `fields`."""
    return h(
        '<form method=post action="{}" class="{}">{}{}{}</form>',
        action,
        css,
        hidden("csrf", csrf),
        join(hidden(k, v) for k, v in fields.items()),
        inner,
    )


def message_page(title: str, text: str, *, back: bool = True, ok: bool = False) -> Html:
    link = Html('<p><a href="/-/console">Back to the console</a></p>') if back else Html("")
    return page(
        f"keyhop: {title}",
        h(
            '<main class=narrow><h1>{}</h1><p class="flash {}">{}</p>{}</main>',
            title,
            "ok" if ok else "error",
            text,
            link,
        ),
    )


def key_page(csrf: str, refused: bool) -> Html:
    """The console asks for the client key once (the config sets `clients.keys`)."""
    why = (
        h("<p class='flash error'>{}</p>", "That key is not accepted.")
        if refused
        else Html("<p>This keyhop requires a client key (the X-Keyhop-Key value).</p>")
    )
    inner = h(
        "<label>Client key <input type=password name=key autocomplete=off required "
        "autofocus></label> <button type=submit>Open the console</button>"
    )
    return page(
        "keyhop console: client key",
        h(
            "<main class=narrow><h1>keyhop console</h1>{}{}"
            "<p class=hint>It is kept in a cookie (HttpOnly, SameSite=Strict) for this "
            "browser session.</p></main>",
            why,
            form("/-/console/key", csrf, {}, inner),
        ),
    )


def confirm_page(csrf: str, provider: str, tenant: str | None) -> Html:
    who = f"{provider} for tenant {tenant}" if tenant else provider
    fields = {"provider": provider, "tenant": tenant or "", "confirm": "yes"}
    inner = h("<button type=submit class=danger>Revoke</button>")
    return page(
        "keyhop console: revoke?",
        h(
            "<main class=narrow><h1>Revoke {}?</h1>"
            "<p>keyhop deletes the stored credential (as <code>keyhop tokens revoke</code>) "
            "and stops using it. {}</p>{}"
            '<p><a href="/-/console">Cancel</a></p></main>',
            who,
            "A login or install is needed to connect it again.",
            form("/-/console/revoke", csrf, fields, inner, "confirm"),
        ),
    )


def install_page(provider: str, app_url: str, shop: str | None, link: str | None) -> Html:
    direct = (
        h(
            "<h2>Shop {}</h2><p>Give the shop owner this link: it opens {}'s own page where "
            "they approve the app; {} then calls keyhop's callback and the shop shows as "
            'valid on the console.</p><p><a class=install href="{}">{}</a></p>',
            shop,
            provider,
            provider,
            link,
            link,
        )
        if shop and link
        else Html("")
    )
    return page(
        f"keyhop console: install {provider}",
        h(
            "<main class=narrow><h1>Install {}</h1>{}"
            "<h2>App URL</h2><p>Installs started from {}'s app store arrive here, signed by {} "
            "(register it as the app's install URL):</p><p><code>{}</code></p>"
            '<p><a href="/-/console">Back to the console</a></p></main>',
            provider,
            direct,
            provider,
            provider,
            app_url,
        ),
    )
