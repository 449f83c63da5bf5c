"""RFC 9421 3.3 signature algorithms: loading a key for one, and signing with it.

All primitives are the `cryptography` package's; a key that is not one of the chosen
algorithm is refused with a message that never quotes it.
"""

from __future__ import annotations

import hmac
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from proxy.signers.hmac_config import decode_key

ALGORITHMS: Final = (
    "hmac-sha256",
    "ed25519",
    "ecdsa-p256-sha256",
    "rsa-pss-sha512",
    "rsa-v1_5-sha256",
)
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def sign_bytes(algorithm: str, key: bytes | PrivateKey, data: bytes) -> bytes:
    """RFC 9421 3.3: the signature primitive for `algorithm`."""
    if algorithm == "hmac-sha256":
        assert isinstance(key, bytes)
        return hmac.digest(key, data, "sha256")
    if algorithm == "ed25519":
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return key.sign(data)
    if algorithm == "ecdsa-p256-sha256":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        # 3.3.4: r and s as two 32-byte big-endian integers, not DER
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert isinstance(key, rsa.RSAPrivateKey)
    if algorithm == "rsa-pss-sha512":
        # 3.3.1: MGF1 with SHA-512 and a 64-byte salt
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
        return key.sign(data, pss, hashes.SHA512())
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def load_key(algorithm: str, text: str, key_encoding: str = "base64") -> bytes | PrivateKey:
    """The key for `algorithm`; ValueError (never quoting the key) when it is not one."""
    if algorithm == "hmac-sha256":
        return decode_key(text, key_encoding)
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"not a PEM private key (unencrypted) for {algorithm}") from None
    wanted: dict[str, type] = {
        "ed25519": ed25519.Ed25519PrivateKey,
        "ecdsa-p256-sha256": ec.EllipticCurvePrivateKey,
        "rsa-pss-sha512": rsa.RSAPrivateKey,
        "rsa-v1_5-sha256": rsa.RSAPrivateKey,
    }
    ok = isinstance(key, wanted[algorithm])
    if ok and isinstance(key, ec.EllipticCurvePrivateKey):
        ok = isinstance(key.curve, ec.SECP256R1)
    if not ok:
        raise ValueError(f"a PEM private key, but not one for {algorithm}")
    return key  # type: ignore[return-value]
