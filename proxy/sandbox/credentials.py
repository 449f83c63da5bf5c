"""The sandbox's fixed credentials: public test values, valid nowhere but `keyhop sandbox`.

They are written here (and shown on the sandbox's index page) so that a newcomer can run
keyhop end to end without any vendor account. Every fake takes its own values as
constructor arguments; these are only the defaults.

=========  ===========================  ================================================
provider   field                        value
=========  ===========================  ================================================
(all)      listen                       ``127.0.0.1:9090``, each provider under its prefix
kibo       prefix                       ``/kibo``
kibo       client_id (also API-Key)     ``sandbox-kibo-client``
kibo       client_secret                ``sandbox-kibo-secret``
paynet     prefix                       ``/paynet``
paynet     client_id                    ``sandbox-paynet-client``
paynet     client_secret (signing key)  ``sandbox-paynet-secret``
paynet     X-Fiid                       ``SANDBOXFI``
saison     prefix                       ``/saison``
saison     client_id                    ``sandbox-saison-client``
saison     client_secret (MAC key)      ``sandbox-saison-secret``
saison     member (any name works)      ``sandbox-member``
sesami     prefix                       ``/sesami``
sesami     client_id                    ``sandbox-sesami-client``
sesami     client_secret (hmac key)     ``sandbox-sesami-secret``
sesami     shop id (any id works)       ``65f0c0ffee00000000000001``
sesami     app install URL              ``http://127.0.0.1:8080/-/oauth/sesami/install``
sesami     app webhook URL              ``http://127.0.0.1:8080/-/oauth/sesami/webhook``
spaaza     prefix                       ``/spaaza``
spaaza     admin username               ``sandbox-admin@example.com``
spaaza     admin password               ``sandbox-admin-password``
spaaza     privileged token_id          ``sandbox-token-id``
spaaza     privileged token_secret      ``sandbox-token-secret``
exchange   prefix                       ``/exchange``
exchange   API key (X-MBX-APIKEY)       ``sandbox-exchange-api-key``
exchange   secret key (HMAC-SHA256)     ``sandbox-exchange-secret-key``
=========  ===========================  ================================================
"""

from __future__ import annotations

from typing import Final

LISTEN: Final = "127.0.0.1:9090"

KIBO_PREFIX: Final = "/kibo"
KIBO_CLIENT_ID: Final = "sandbox-kibo-client"
KIBO_CLIENT_SECRET: Final = "sandbox-kibo-secret"

PAYNET_PREFIX: Final = "/paynet"
PAYNET_CLIENT_ID: Final = "sandbox-paynet-client"
PAYNET_CLIENT_SECRET: Final = "sandbox-paynet-secret"
PAYNET_FIID: Final = "SANDBOXFI"

SAISON_PREFIX: Final = "/saison"
SAISON_CLIENT_ID: Final = "sandbox-saison-client"
SAISON_CLIENT_SECRET: Final = "sandbox-saison-secret"
SAISON_MEMBER: Final = "sandbox-member"

SESAMI_PREFIX: Final = "/sesami"
SESAMI_CLIENT_ID: Final = "sandbox-sesami-client"
SESAMI_CLIENT_SECRET: Final = "sandbox-sesami-secret"
SESAMI_SHOP_ID: Final = "65f0c0ffee00000000000001"
SESAMI_INSTALL_URL: Final = "http://127.0.0.1:8080/-/oauth/sesami/install"
SESAMI_WEBHOOK_URL: Final = "http://127.0.0.1:8080/-/oauth/sesami/webhook"

SPAAZA_PREFIX: Final = "/spaaza"
SPAAZA_USERNAME: Final = "sandbox-admin@example.com"
SPAAZA_PASSWORD: Final = "sandbox-admin-password"
SPAAZA_TOKEN_ID: Final = "sandbox-token-id"
SPAAZA_TOKEN_SECRET: Final = "sandbox-token-secret"

EXCHANGE_PREFIX: Final = "/exchange"
EXCHANGE_API_KEY: Final = "sandbox-exchange-api-key"
EXCHANGE_SECRET_KEY: Final = "sandbox-exchange-secret-key"

#: provider name -> mount prefix in `keyhop sandbox`
PREFIXES: Final[dict[str, str]] = {
    "kibo": KIBO_PREFIX,
    "paynet": PAYNET_PREFIX,
    "saison": SAISON_PREFIX,
    "sesami": SESAMI_PREFIX,
    "spaaza": SPAAZA_PREFIX,
    "exchange": EXCHANGE_PREFIX,
}
