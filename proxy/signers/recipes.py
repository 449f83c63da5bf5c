"""The presets' signatures as `hmac` recipes, each carrying its vendor's example as a vector.

Plain dicts (the YAML a user would write), so presets.py can use them as they are and
`type: x_signature` / `type: mac` keep working as names for them.
"""

from __future__ import annotations

import string
from typing import Any, Final

#: PayNet One Stop Portal (SPEC 1, 4.3): X-Signature = hex(HMAC-SHA256(key, X-Timestamp)).
#: The vector is SPEC 1's corrected value (the vendor document's own example is wrong).
PAYNET_RECIPE: Final[dict[str, Any]] = {
    "type": "hmac",
    "message": "{timestamp}",
    "algorithm": "sha256",
    "encoding": "hex",
    "timestamp": "unix",
    "headers": {"X-Timestamp": "{timestamp}", "X-Signature": "{signature}"},
    "vectors": [
        {
            "given": {"key": "my_secret_key", "timestamp": "1700000000"},
            "expect": {
                "message": "1700000000",
                "signature": "70ba7735fc01fec6d9d374332ea71c0c6183f4ac57273c8d8f7ca36fbf4dc359",
            },
        }
    ],
}

#: Saison Connect (SPEC 4.2): the OAuth 2.0 MAC draft's normalized request string with
#: HMAC-SHA256, base64. The draft's own example (draft-ietf-oauth-v2-http-mac-02 1.1:
#: mac="bhCQXTVyfj5cmA9uKkPFx1zeOXM=", key 489dks293j39) is illustrative: it reproduces under
#: neither hmac-sha-1 nor hmac-sha-256 (tests/signers/test_hmac.py), so the vector is
#: keyhop's Saison golden (tests/golden/saison_post_profile.*).
SAISON_RECIPE: Final[dict[str, Any]] = {
    "type": "hmac",
    "message": "{timestamp}\n{nonce}\n{method}\n{target}\n{host}\n{port}\n\n",
    "algorithm": "sha256",
    "encoding": "base64",
    "timestamp": "unix",
    "nonce": {
        "length": 10,
        "alphabet": string.digits + string.ascii_letters,
    },
    "headers": {
        "Authorization": 'MAC id="{token}" ts="{timestamp}" nonce="{nonce}" mac="{signature}"'
    },
    "vectors": [
        {
            "given": {
                "key": "my_client_secret",
                "method": "POST",
                "target": "/auth/account/profile",
                "host": "apit.saisoncard.co.jp",
                "port": 443,
                "timestamp": "1700000000",
                "nonce": "abcde12345",
                "token": "at-123",
            },
            "expect": {
                "message": "1700000000\nabcde12345\nPOST\n/auth/account/profile\n"
                "apit.saisoncard.co.jp\n443\n\n",
                "signature": "hgvd4v5OGFtpeagtndM2Un0IdGRFZj6O/QaxqVi3DUU=",
                "headers": {
                    "Authorization": 'MAC id="at-123" ts="1700000000" nonce="abcde12345" '
                    'mac="hgvd4v5OGFtpeagtndM2Un0IdGRFZj6O/QaxqVi3DUU="'
                },
            },
        }
    ],
}
