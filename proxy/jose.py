"""The JWTs keyhop signs: keys read once at load, header and claims built by pure functions.

Rules: no I/O, no clock (`now` and `jti` are passed in), and the key never shows itself in a
repr, a message or an exception. Signing is PyJWT's over `cryptography` keys: it takes the
key objects loaded (and checked against the algorithm) here, signs RS256, PS256, ES256 and
EdDSA without deprecation noise (joserfc warns on "EdDSA" since RFC 9864, which a vendor
still verifying "EdDSA" cannot follow), and is the most used JOSE library in Python.
The tests verify with joserfc, so the two never share a bug.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from proxy.schema import Node, Secret, describe

#: RFC 7518 3.1 / RFC 8037 3.1 names keyhop signs private-key JWTs with
KEY_ALGORITHMS: Final = ("RS256", "PS256", "ES256", "EdDSA")
#: RFC 7518 3.2: an HMAC key at least as long as the hash output (256 bits for HS256)
HS256_MIN_BYTES: Final = 32
#: RFC 7518 3.3 and 3.5: RSA keys of 2048 bits or larger
RSA_MIN_BITS: Final = 2048

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
SigningMaterial = PrivateKey | ed448.Ed448PrivateKey | bytes


class KeyProblem(ValueError):
    """Why a configured key cannot sign; the message never holds any of the key."""


def load_private_key(pem: Secret, alg: str, passphrase: Secret | None = None) -> SigningMaterial:
    """A PEM private key checked against the algorithm that will sign with it."""
    data = pem.reveal().encode()
    if b"-----BEGIN" not in data:
        raise KeyProblem("not a PEM private key (expected -----BEGIN ... PRIVATE KEY-----)")
    password = passphrase.reveal().encode() if passphrase is not None else None
    try:
        key = load_pem_private_key(data, password=password)
    except TypeError:
        # cryptography raises TypeError both for "encrypted, no password" and the reverse
        if password is None:
            raise KeyProblem("the PEM key is encrypted: give `key_passphrase`") from None
        raise KeyProblem("the PEM key is not encrypted: drop `key_passphrase`") from None
    except ValueError:
        raise KeyProblem("not a readable PEM private key (or a wrong `key_passphrase`)") from None
    except Exception:  # cryptography's UnsupportedAlgorithm and the like
        raise KeyProblem("a PEM private key of a type keyhop cannot sign with") from None
    if alg in ("RS256", "PS256"):
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyProblem(f"{alg} needs an RSA key, this is {_kind(key)}")
        if key.key_size < RSA_MIN_BITS:
            raise KeyProblem(f"{alg} needs an RSA key of >= {RSA_MIN_BITS} bits (RFC 7518 3.3)")
        return key
    if alg == "ES256":
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise KeyProblem(f"ES256 needs a P-256 EC key (RFC 7518 3.4), this is {_kind(key)}")
        return key
    if alg == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            raise KeyProblem(
                f"EdDSA needs an Ed25519 or Ed448 key (RFC 8037), this is {_kind(key)}"
            )
        return key
    raise KeyProblem(f"unknown algorithm {alg!r}; expected one of: {', '.join(KEY_ALGORITHMS)}")


def _kind(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "an RSA key"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC key on {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return "an EdDSA key"
    return "another kind of key"


def hmac_key(secret: Secret) -> bytes:
    """The client secret as an HS256 key (OIDC Core 9: client_secret_jwt)."""
    key = secret.reveal().encode()
    if len(key) < HS256_MIN_BYTES:
        raise KeyProblem(
            f"HS256 needs a key of >= {HS256_MIN_BYTES} bytes (RFC 7518 3.2); "
            "this client secret is shorter"
        )
    return key


def new_jti() -> str:
    """A fresh JWT ID (RFC 7519 4.1.7): 128 random bits, so a collision is negligible."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class JwtSigner:
    """An algorithm, its key and the key id: what every JWT keyhop sends is signed with."""

    alg: str
    key: SigningMaterial = field(repr=False, compare=False)
    kid: str | None = None

    def header(self) -> dict[str, str]:
        """RFC 7515 4.1: alg, typ JWT (RFC 7519 5.1) and the key id when configured."""
        header = {"alg": self.alg, "typ": "JWT"}
        if self.kid:
            header["kid"] = self.kid
        return header

    def sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self.key, algorithm=self.alg, headers=self.header())


def read_signer(
    node: Node,
    *,
    key: Secret | None = None,
    kid: str | None = None,
    default_alg: str = "RS256",
    algorithms: tuple[str, ...] = KEY_ALGORITHMS,
    key_required: bool = True,
) -> tuple[JwtSigner | None, Secret | None]:
    """`key` (PEM), `key_passphrase`, `alg`, `kid` of a node; the key may come from elsewhere
    (a service-account file). The signer is None when a problem was reported; the PEM is
    returned too, for the redactor."""
    alg = node.choice("alg", algorithms, default_alg)
    kid = node.string("kid") or kid
    pem = node.secret("key", required=key is None and key_required) or key
    passphrase = node.secret("key_passphrase")
    if pem is None:
        return None, None
    try:
        material = load_private_key(pem, alg, passphrase)
    except KeyProblem as problem:
        node.error("key", str(problem))
        return None, pem
    return JwtSigner(alg, material, kid), pem


Build = Callable[[float, str], tuple[Mapping[str, Any], Mapping[str, Any]]]


def check_vectors(node: Node, build: Build) -> None:
    """`vectors: [{given: {now, jti}, expect: {header, claims}}]`: each pins what keyhop signs.

    A mismatch is a config error showing both sides (header and claims hold no key).
    """
    for i, raw in enumerate(node.seq("vectors")):
        vector = Node(raw, f"{node.at('vectors')}[{i}]", node.problems)
        given = vector.child("given")
        now = given.number("now", 0.0)
        if not given.has("now"):
            given.error("now", "required, missing (the unix time the example was signed at)")
        jti = given.string("jti", "vector-jti") or "vector-jti"
        given.finish()
        expect = vector.child("expect")
        header, claims = build(now, jti)
        for part, computed in (("header", header), ("claims", claims)):
            if not expect.has(part):
                continue
            wanted = expect.get(part)
            if not isinstance(wanted, Mapping):
                expect.error(part, f"expected a mapping, found {describe(wanted)}")
            elif dict(wanted) != dict(computed):
                expect.error(
                    part,
                    f"computed {json.dumps(computed, sort_keys=True)}, "
                    f"expected {json.dumps(dict(wanted), sort_keys=True, default=str)}",
                )
        expect.finish()
        vector.finish()
