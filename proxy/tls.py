"""A provider's client certificate (mTLS, SPEC 5.3; RFC 8705 `tls_client_auth`) and the TLS
context its upstream and token connections use.

Rules:
- `tls: {cert, key, key_password, ca_file}`: each of cert, key and ca_file is a path to a PEM
  file or the PEM text itself (what `${file:...}` or `${ENV}` leaves there); text that starts
  with `-----BEGIN` is PEM, anything else a path. `key` may be left out when `cert` holds the
  key too (one combined file). An encrypted key needs `key_password`.
- Everything is checked when the config is read, each problem a located config error: a file
  that cannot be read, no certificate, no private key, an encrypted key without (or with the
  wrong) password, a key that does not belong to the certificate (their public keys differ).
- The private key and its password never appear in a repr, a log line or an error; the key
  never touches a disk that it was not already on (an in-memory file on Linux).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from proxy.schema import Node, Secret

PEM_MARK: Final = "-----BEGIN"
MAX_PEM_BYTES: Final = 1024 * 1024  # a certificate chain or key file is a few KiB
_SPKI: Final = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class TlsSettings:
    """A validated client certificate (leaf first, then its chain) and its private key, plus
    an optional CA for the server's certificate. Only the subject shows in a repr."""

    subject: str
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)  # PKCS#8, encrypted under key_password when one is set
    key_password: Secret | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)

    def secrets(self) -> set[str]:
        """For the config's redaction list."""
        return {self.key_password.reveal()} if self.key_password is not None else set()


def _read_pem(node: Node, key: str, value: str) -> bytes | None:
    """The PEM bytes of `value`: the text itself, or the file it names."""
    if value.lstrip().startswith(PEM_MARK):
        return value.encode("utf-8")
    try:
        with open(value, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        node.error(key, f"cannot read {value}: {exc.strerror or type(exc).__name__}")
        return None
    if len(data) > MAX_PEM_BYTES:
        node.error(key, f"{value} is over {MAX_PEM_BYTES} bytes: not a PEM certificate or key")
        return None
    return data


def _source(value: str) -> str:
    """How a value is named in a message: its path, or "the inline PEM" (never its text)."""
    return "the inline PEM" if value.lstrip().startswith(PEM_MARK) else value


def _load_key(
    node: Node, key: str, data: bytes, where: str, password: Secret | None
) -> PrivateKeyTypes | None:
    if b"PRIVATE KEY-----" not in data:
        node.error(key, f"{where} holds no PEM private key (BEGIN ... PRIVATE KEY)")
        return None
    # PKCS#8 "ENCRYPTED PRIVATE KEY" or the legacy "Proc-Type: 4,ENCRYPTED" header (RFC 1421)
    encrypted = b"ENCRYPTED" in data
    if encrypted and password is None:
        node.error(key, f"the private key in {where} is encrypted: set key_password")
        return None
    if not encrypted and password is not None:
        node.error("key_password", f"is set, but the private key in {where} is not encrypted")
        return None
    try:
        return serialization.load_pem_private_key(
            data, password.reveal().encode("utf-8") if password is not None else None
        )
    except ValueError:
        if encrypted:
            node.error("key_password", f"does not decrypt the private key in {where}")
        else:
            node.error(key, f"the private key in {where} cannot be read (damaged or unsupported)")
    except (TypeError, UnsupportedAlgorithm):
        node.error(key, f"the private key in {where} is of a kind keyhop cannot use")
    return None


def read_tls(node: Node, key: str = "tls") -> TlsSettings | None:
    """`tls:` of a provider, or None when it has none (problems are reported on `node`)."""
    if not node.has(key):
        node.get(key)
        return None
    tnode = node.child(key)
    cert_value = tnode.string("cert", required=True)
    key_value = tnode.secret("key")
    password = tnode.secret("key_password")
    ca_value = tnode.string("ca_file")
    tnode.finish()

    ca_pem = None
    if ca_value is not None:
        ca_data = _read_pem(tnode, "ca_file", ca_value)
        if ca_data is not None:
            try:
                x509.load_pem_x509_certificates(ca_data)
                ca_pem = ca_data.decode("ascii")
            except (ValueError, UnicodeDecodeError):
                tnode.error("ca_file", f"{_source(ca_value)} holds no PEM certificate")
    # both files are read before either is judged: every problem is listed at once
    cert_data = _read_pem(tnode, "cert", cert_value) if cert_value is not None else None
    key_data = _read_pem(tnode, "key", key_value.reveal()) if key_value is not None else None
    if cert_value is None or cert_data is None:
        return None
    cert_where = _source(cert_value)
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        tnode.error("cert", f"{cert_where} holds no PEM certificate (BEGIN CERTIFICATE)")
        return None
    if key_value is not None:
        key_where = _source(key_value.reveal())
    else:  # one combined file: the certificate's PEM carries the key too
        key_where, key_data = cert_where, cert_data
    if key_data is None:
        return None
    private_key = _load_key(tnode, "key" if key_value else "cert", key_data, key_where, password)
    if private_key is None:
        return None
    leaf = chain[0]
    spki = private_key.public_key().public_bytes(*_SPKI)
    if spki != leaf.public_key().public_bytes(*_SPKI):
        # RFC 8446 4.4.2: the sender's own certificate comes first, then the ones certifying it
        owner = next((c for c in chain[1:] if c.public_key().public_bytes(*_SPKI) == spki), None)
        where = f"{cert_where} (subject {leaf.subject.rfc4514_string()})"
        tnode.error(
            "key" if key_value else "cert",
            f"the private key in {key_where} does not belong to the first certificate in {where}"
            + (
                f": the certificate of {owner.subject.rfc4514_string()} must come first, "
                "then its chain"
                if owner is not None
                else ": their public keys differ"
            ),
        )
        return None
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        encryption = serialization.BestAvailableEncryption(password.reveal().encode("utf-8"))
    settings = TlsSettings(
        subject=leaf.subject.rfc4514_string(),
        cert_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        key_pem=private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        ),
        key_password=password,
        ca_pem=ca_pem,
    )
    try:  # what cryptography reads, OpenSSL may still refuse: say so now, not at first use
        client_context(settings)
    except ssl.SSLError as exc:
        tnode.error("cert", f"OpenSSL cannot use this certificate and key: {exc.reason or exc}")
        return None
    return settings


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path to `data` for the one ssl call that only takes paths: an in-memory file where
    the OS has them (Linux memfd), otherwise a temporary file of mode 0600, removed after."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("keyhop-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="keyhop-tls-")  # mode 0600 (tempfile docs)
    try:
        os.write(fd, data)
        os.close(fd)
        fd = -1
        yield path
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)


def client_context(settings: TlsSettings | None, ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying TLS client context (hostname and chain checked, ALPN http/1.1) presenting
    the client certificate of `settings`. The server's certificate is checked against
    `tls.ca_file` when set, else the provider's `ca_file`, else the system's trust store."""
    if settings is not None and settings.ca_pem is not None:
        context = ssl.create_default_context(cadata=settings.ca_pem)
    else:
        context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])  # what keyhop speaks (RFC 7301)
    if settings is not None:
        with _private_file(settings.cert_pem) as cert, _private_file(settings.key_pem) as key:
            password = settings.key_password.reveal() if settings.key_password else None
            context.load_cert_chain(cert, key, password)
    return context
