"""The console's cookies: the client key kept once given, the CSRF token, the flash message.

Rules:
- Every cookie is HttpOnly and SameSite=Strict: no script reads them and a cross-site form
  post never carries them (RFC 6265bis 8.8.2).
- The client key cookie has Path=/-/ so it is never sent on a proxied request; only the
  console accepts it (the gate, and so /-/providers, still want the X-Keyhop-Key header).
- CSRF: a signed double-submit token (OWASP CSRF cheat sheet). The cookie holds a random
  nonce, the form the HMAC of it under a key made when the process starts; compared in
  constant time. A forged post carries neither, a restart only asks for a reload.
- A flash message says what an action did, on the page the 303 leads to, then is cleared.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from typing import Final

from aiohttp import web

from proxy.messages import parse_json

KEY_COOKIE: Final = "keyhop_key"
CSRF_COOKIE: Final = "keyhop_csrf"
FLASH_COOKIE: Final = "keyhop_flash"
CONSOLE: Final = "/-/console"
FLASH_MAX: Final = 600  # characters: a flash is a sentence, and a cookie is at most 4 KiB


def _csrf_key() -> bytes:
    """Per process: forms from before a restart are refused. Workers share their supervisor's
    (proxy/supervisor.py passes it in the environment) so a form one shows another accepts."""
    given = os.environ.pop("KEYHOP_CSRF_KEY", "")
    try:
        key = bytes.fromhex(given)
    except ValueError:
        key = b""
    return key if len(key) == 32 else secrets.token_bytes(32)


_CSRF_KEY: Final = _csrf_key()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _set(response: web.StreamResponse, name: str, value: str, path: str) -> None:
    response.set_cookie(name, value, path=path, httponly=True, samesite="Strict")


# -- the client key ------------------------------------------------------------------------------


def cookie_key(request: web.BaseRequest) -> bytes:
    """The client key the console's cookie holds (empty when there is none)."""
    return _unb64(request.cookies.get(KEY_COOKIE, "")) or b""


def keep_key(response: web.StreamResponse, key: str) -> None:
    # a session cookie (no Max-Age): closing the browser forgets the key
    _set(response, KEY_COOKIE, _b64(key.encode("utf-8", "surrogateescape")), "/-/")


def forget_key(response: web.StreamResponse) -> None:
    response.del_cookie(KEY_COOKIE, path="/-/", httponly=True, samesite="Strict")


# -- CSRF ----------------------------------------------------------------------------------------


def _sign(nonce: str) -> str:
    return hmac.new(
        _CSRF_KEY, b"keyhop-console-csrf\n" + nonce.encode(), hashlib.sha256
    ).hexdigest()


def csrf_token(request: web.BaseRequest, response: web.StreamResponse) -> str:
    """The token to put in this page's forms; a fresh nonce cookie when there is none yet."""
    nonce = request.cookies.get(CSRF_COOKIE, "")
    if len(nonce) != 43 or _unb64(nonce) is None:
        nonce = _b64(secrets.token_bytes(32))
        _set(response, CSRF_COOKIE, nonce, CONSOLE)
    return _sign(nonce)


def csrf_ok(request: web.BaseRequest, given: str) -> bool:
    nonce = request.cookies.get(CSRF_COOKIE, "")
    if not nonce or not given:
        return False
    return hmac.compare_digest(_sign(nonce).encode(), given.encode("utf-8", "surrogateescape"))


# -- flash ---------------------------------------------------------------------------------------


def set_flash(response: web.StreamResponse, text: str, ok: bool = True) -> None:
    payload = json.dumps({"ok": ok, "text": text[:FLASH_MAX]}, separators=(",", ":"))
    _set(response, FLASH_COOKIE, _b64(payload.encode()), CONSOLE)


def pop_flash(request: web.BaseRequest, response: web.StreamResponse) -> tuple[bool, str] | None:
    """The flash the last action left, cleared on `response`; None when there is none."""
    raw = request.cookies.get(FLASH_COOKIE)
    if raw is None:
        return None
    response.del_cookie(FLASH_COOKIE, path=CONSOLE, httponly=True, samesite="Strict")
    data = _unb64(raw)
    payload = parse_json(data) if data else None  # a cookie is the client's: bounded
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        return None
    return bool(payload.get("ok")), payload["text"][:FLASH_MAX]
