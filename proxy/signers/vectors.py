"""`vectors:` on a `sign:` block: the partner's own published examples, proved at load.

Each `{given: {...}, expect: {message, signature, headers}}` is signed with the example's
own key (`given.key`, default: the configured one) and a mismatch is a config error at
`providers.<p>.sign.vectors[i]` that shows the computed value next to the expected one.
What is shown is redacted against every secret the signer holds and the example's key.
"""

from __future__ import annotations

import json
from typing import Final

from proxy.schema import Node, Redactor
from proxy.signers.base import DEFAULT_PORTS, SignContext, Signer, SignRequest

#: what `given` may hold (values are the strings as they would be rendered; port an int)
GIVEN_KEYS: Final = (
    "method",
    "target",
    "host",
    "port",
    "scheme",
    "timestamp",
    "nonce",
    "body",
    "token",
    "key",
    "headers",
    "client_id",
    "tenant",
    "now",
)


def _show(text: str) -> str:
    """One line, escapes visible (a message's line breaks shown as \\n)."""
    return json.dumps(text, ensure_ascii=False)


def vector_request(given: Node) -> SignRequest:
    """The frozen request a vector describes (defaults: GET https://example.com/)."""
    scheme = given.choice("scheme", ("https", "http"), "https")
    target = given.string("target", "/") or "/"
    path, _, query = target.partition("?")
    headers: list[tuple[str, str]] = []
    hnode = given.child("headers")
    for name in hnode.raw:
        value = hnode.string(str(name), "")
        headers.append((str(name), value or ""))
    hnode.finish()
    body = given.string("body")
    return SignRequest(
        method=given.string("method", "GET") or "GET",
        scheme=scheme,
        host=(given.string("host", "example.com") or "example.com").lower(),
        port=given.integer("port", DEFAULT_PORTS[scheme], minimum=1),
        path=path,
        query=query,
        headers=tuple(headers),
        body=body.encode() if body is not None else b"",
    )


def check_vectors(signer: Signer, node: Node) -> None:
    """Sign every vector under `node` (a `sign:` block) and report each mismatch."""
    for i, raw in enumerate(node.seq("vectors")):
        path = f"{node.at('vectors')}[{i}]"
        vector = Node(raw, path, node.problems)
        given = vector.child("given")
        expect = vector.child("expect")
        before = len(node.problems.items)
        request = vector_request(given)
        key = given.secret("key")
        options = {
            name: value
            for name in signer.vector_options
            if (value := given.string(name)) is not None
        }
        ctx = SignContext(
            now=given.number("now", 0.0),
            token=given.string("token", "") or "",
            client_id=given.string("client_id", "") or "",
            tenant=given.string("tenant", "") or "",
            nonce=given.string("nonce"),
            timestamp=given.string("timestamp"),
        )
        want_message = expect.string("message")
        want_signature = expect.string("signature")
        want_headers = _expected_headers(expect)
        given.finish((*GIVEN_KEYS, *signer.vector_options))
        expect.finish(("message", "signature", "headers"))
        vector.finish()
        if want_message is None and want_signature is None and not want_headers:
            vector.error("expect", "needs `message`, `signature` and/or `headers` to compare")
        if len(node.problems.items) != before:
            continue
        redact = Redactor([*signer.secrets(), key.reveal() if key else ""])
        try:
            who = signer.with_options(options) if options else signer
            who = who.with_key(key.reveal()) if key is not None else who
            got = who.sign(request, ctx)
        except ValueError as exc:  # a key that does not decode, an unsafe value
            node.problems.add(path, redact(f"could not sign the example: {exc}"))
            continue
        _compare(node, path, "message", got.message, want_message, redact)
        _compare(node, path, "signature", got.signature, want_signature, redact)
        sent = {name.lower(): value for name, value in got.headers}
        for name, value in want_headers.items():
            _compare(node, path, f"header {name}", sent.get(name.lower(), ""), value, redact)


def _expected_headers(expect: Node) -> dict[str, str]:
    sub = expect.child("headers")
    out = {str(name): sub.string(str(name), "") or "" for name in sub.raw}
    sub.finish()
    return out


def _compare(
    node: Node, path: str, what: str, got: str, want: str | None, redact: Redactor
) -> None:
    if want is None or got == want:
        return
    node.problems.add(
        path,
        redact(f"computed {what} {_show(got)} does not match the expected {_show(want)}"),
    )
