"""Built-in vendor presets (SPEC 1, 3): what a provider gets from `preset: NAME`.

Keys written beside `preset:` override these; mappings merge key by key, so a test can
point `auth.token_url` at a local server and keep the rest. Endpoints written as a path
resolve against the provider's `base_url` (by default the origin of its first route).
A header set to null removes a default header.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from proxy.signers.recipes import PAYNET_RECIPE, SAISON_RECIPE

KIBO_THROTTLE_CODES: Final = ["ERR_403_DEVELOPER_OVER_QPS", "ERR_403_DEVELOPER_OVER_RATE"]

PRESETS: Final[dict[str, dict[str, Any]]] = {
    # Kibo OMS (Shopatron): client_credentials with HTTP Basic, API-Key on resource calls.
    "kibo": {
        "auth": {
            "type": "oauth2_client_credentials",
            "token_url": "https://auth.shopatron.com/oauthserver/oauth2/token",
            "client_auth": "basic",
        },
        "headers": {"API-Key": "{client_id}"},
        # Mashery answers throttling with 403 too: only these 403s mean a bad token.
        "refresh_on": [
            401,
            {"status": 403, "header": {"X-Mashery-Error-Code": "ERR_403_NOT_AUTHORIZED"}},
        ],
        "throttle_on": [
            429,
            {"status": 403, "header": {"X-Mashery-Error-Code": KIBO_THROTTLE_CODES}},
        ],
    },
    # PayNet One Stop Portal: client_credentials in the body, X-Fiid, X-Timestamp/X-Signature.
    "paynet": {
        "auth": {"type": "oauth2_client_credentials", "token_url": "/token", "client_auth": "body"},
        "headers": {"X-Fiid": "{fiid}"},
        "sign": copy.deepcopy(PAYNET_RECIPE),
        "refresh_on": [401],
    },
    # Saison Connect: authorization code per member, then refresh; MAC-signed requests.
    "saison": {
        "auth": {
            "type": "oauth2_authorization_code",
            "authorize_url": "/auth/screen/{tenant}/authorize",
            "token_url": "/auth/token",
            "client_auth": "body",
            "token_headers": {"X-API-VERSION": "1"},
        },
        "headers": {"X-API-VERSION": "1"},
        "sign": copy.deepcopy(SAISON_RECIPE),
        "tenants": True,
        "refresh_on": [401],
    },
    # Sesami: app install per shop, offline token kept until the shop uninstalls.
    "sesami": {
        "auth": {
            "type": "oauth2_app_install",
            "authorize_url": "https://api.sesami.co/api/v1/oauth/authorization",
            "access_token_url": "https://api.sesami.co/api/v1/oauth/access-token",
        },
        "headers": {
            "x-api-key": "{token}",
            "x-client-id": "{client_id}",
            "x-shop-id": "{tenant}",
            "Authorization": None,
        },
        "tenants": True,
    },
    # Spaaza privileged: Authorization: Bearer <token_id>:<token_secret>.
    "spaaza_privileged": {
        "auth": {"type": "static"},
        "headers": {"Authorization": "Bearer {token}"},
    },
    # Spaaza admin: one shared login session; expired sessions answer 401 with error code 6.
    "spaaza_admin": {
        "auth": {
            "type": "session_login",
            "login_url": "/auth/login",
            "session_headers": {
                "X-Spaaza-Session-User-Id": "results.session_info.session_user_id",
                "X-Spaaza-Session-Key": "results.session_info.session_key",
            },
            "expires_at": "results.session_info.session_expires_date",
            "valid_for_hours": "results.session_info.session_key_validity",
            "error_path": "error.name",
        },
        "refresh_on": [{"status": 401, "json": {"error.code": 6}}],
    },
    # Spaaza user: the app's own session headers pass through untouched.
    "spaaza_user": {"auth": {"type": "none"}},
    # GitHub App installation tokens (docs.github.com, "Generating a JSON Web Token (JWT) for
    # a GitHub App" and "Generating an installation access token"): the user adds `iss` (the
    # app's client id or app id) and `key` (its private key PEM); the installation id is the
    # tenant. Upstream calls carry `Authorization: Bearer <installation token>`.
    "github_app": {
        "auth": {
            "type": "jwt_exchange",
            "token_url": "https://api.github.com/app/installations/{tenant}/access_tokens",
            "alg": "RS256",
            "backdate": 60,  # iat 60 s in the past, against clock drift
            "lifetime": 540,  # exp = now + 540: 10 minutes after iat, GitHub's maximum
            "token_path": "token",
            "expires_at_path": "expires_at",
            "error_path": "message",
            "token_headers": {
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            },
        },
        "tenants": True,
        "refresh_on": [401],
    },
}


def merge(base: Any, override: Any) -> Any:
    """Deep merge: mappings key by key, anything else replaced by the override."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return override
