"""CPU time keyhop spends on one JWT-authenticated token fetch (SPEC 5.2, issue 14).

    .venv/bin/python bench/jwt_fetch.py

Builds the token request of a private_key_jwt client-credentials provider (claims, header,
signature, form encoding: everything keyhop computes for one fetch) and the app JWT of a
github_app provider, many times each, and prints the process CPU time per fetch. This runs
once per token life (typically an hour), never per proxied request. Keys are generated here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.config import parse_config


def pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def per_fetch(scheme: Any, tenant: str | None, rounds: int) -> float:
    start = time.process_time()
    for i in range(rounds):
        flow = scheme.credential_flow(None, tenant, 1_700_000_000.0 + i)
        next(flow)
        flow.close()
    return (time.process_time() - start) / rounds


def main() -> None:
    keys = {
        "RS256": pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ES256": pem(ec.generate_private_key(ec.SECP256R1())),
    }
    providers: dict[str, Any] = {}
    routes = []
    for alg, key in keys.items():
        name = f"pkjwt_{alg.lower()}"
        providers[name] = {
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": "https://idp.test/token",
                "client_id": "c",
                "client_auth": {"type": "private_key_jwt", "key": key, "alg": alg},
            }
        }
        routes.append({"prefix": f"/{name}", "upstream": "https://api.test", "provider": name})
    providers["github_app"] = {"preset": "github_app", "auth": {"iss": "1", "key": keys["RS256"]}}
    routes.append({"prefix": "/gh", "upstream": "https://api.github.com", "provider": "github_app"})
    config = parse_config({"store": "memory:", "providers": providers, "routes": routes}, "bench")
    print("| token fetch | CPU per fetch |\n| --- | --- |")
    for name, provider in config.providers.items():
        tenant = "1" if provider.tenants else None
        per_fetch(provider.scheme, tenant, 20)  # warm up
        rounds = 300 if "es256" in name else 200
        cost = per_fetch(provider.scheme, tenant, rounds)
        print(f"| {name} ({rounds} rounds) | {cost * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
