"""proxy/tls.py: a provider's client certificate is checked when the config is read, and the
context built from it passes a real TLS handshake with a server that requires one."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from proxy.egress import ProxyTarget, open_tunnel
from proxy.sandbox.connect_proxy import ConnectProxy
from proxy.schema import Node, Problems
from proxy.tls import TlsSettings, client_context, read_tls

CLIENT_CN = "keyhop-client.example"
PASSWORD = "pem-pass-phrase-7"


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    """The CA the partner trusts for client certificates (not the one for its server)."""
    return trustme.CA()


@pytest.fixture(scope="module")
def client_cert(client_ca: trustme.CA) -> trustme.LeafCert:
    return client_ca.issue_cert("client@keyhop.example", common_name=CLIENT_CN)


@pytest.fixture
def pems(tmp_path: Path, client_cert: trustme.LeafCert, ca_file: str) -> dict[str, str]:
    cert = tmp_path / "client.crt"
    key = tmp_path / "client.key"
    cert.write_bytes(b"".join(b.bytes() for b in client_cert.cert_chain_pems))
    client_cert.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return {"cert": str(cert), "key": str(key), "ca_file": ca_file}


def read(tls: Any) -> tuple[TlsSettings | None, list[str]]:
    problems = Problems("test.yaml")
    node = Node({"tls": tls}, "providers.bank", problems)
    settings = read_tls(node)
    node.finish()
    return settings, problems.items


def encrypted_key(leaf: trustme.LeafCert, password: str) -> bytes:
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )


# --- reading the config --------------------------------------------------------------------


def test_no_tls_block_means_no_client_certificate() -> None:
    problems = Problems("test.yaml")
    node = Node({}, "providers.bank", problems)
    assert read_tls(node) is None
    node.finish()
    assert problems.items == []


def test_cert_and_key_files_are_read_and_the_subject_is_the_certificates(
    pems: dict[str, str],
) -> None:
    settings, problems = read(pems)
    assert problems == []
    assert settings is not None
    assert f"CN={CLIENT_CN}" in settings.subject


def test_inline_pem_text_is_accepted_as_from_a_file_interpolation(
    client_cert: trustme.LeafCert,
) -> None:
    # `${file:...}` leaves the file's text (trailing newline dropped) in the value
    cert = client_cert.cert_chain_pems[0].bytes().decode().rstrip("\n")
    key = client_cert.private_key_pem.bytes().decode().rstrip("\n")
    settings, problems = read({"cert": cert, "key": key})
    assert problems == []
    assert settings is not None and CLIENT_CN in settings.subject


def test_one_combined_file_holds_certificate_and_key(
    tmp_path: Path, client_cert: trustme.LeafCert
) -> None:
    combined = tmp_path / "client.pem"
    combined.write_bytes(
        client_cert.private_key_pem.bytes() + client_cert.cert_chain_pems[0].bytes()
    )
    settings, problems = read({"cert": str(combined)})
    assert problems == []
    assert settings is not None


def test_an_encrypted_key_with_its_password_is_accepted(
    tmp_path: Path, pems: dict[str, str], client_cert: trustme.LeafCert
) -> None:
    key = tmp_path / "enc.key"
    key.write_bytes(encrypted_key(client_cert, PASSWORD))
    settings, problems = read({**pems, "key": str(key), "key_password": PASSWORD})
    assert problems == []
    assert settings is not None
    assert PASSWORD not in repr(settings)
    assert settings.secrets() == {PASSWORD}


def _case_files(tmp: Path, leaf: trustme.LeafCert, other: trustme.LeafCert) -> dict[str, str]:
    files = {
        "garbage": b"hello, not a PEM\n",
        "enc": encrypted_key(leaf, PASSWORD),
        "other_key": other.private_key_pem.bytes(),
        "cert_only": leaf.cert_chain_pems[0].bytes(),
    }
    out = {}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        out[name] = str(tmp / name)
    out["missing"] = str(tmp / "nope.pem")
    return out


@pytest.mark.parametrize(
    "change, key_path, expected",
    [
        ({"cert": "missing"}, "tls.cert", "cannot read {missing}: No such file or directory"),
        ({"key": "missing"}, "tls.key", "cannot read {missing}: No such file or directory"),
        ({"cert": "garbage"}, "tls.cert", "{garbage} holds no PEM certificate"),
        ({"key": "garbage"}, "tls.key", "{garbage} holds no PEM private key"),
        ({"key": "cert_only"}, "tls.key", "{cert_only} holds no PEM private key"),
        ({"key": "enc"}, "tls.key", "the private key in {enc} is encrypted: set key_password"),
        (
            {"key": "enc", "key_password": "wrong"},
            "tls.key_password",
            "does not decrypt the private key in {enc}",
        ),
        (
            {"key_password": "unneeded"},
            "tls.key_password",
            "is set, but the private key in {key} is not encrypted",
        ),
        (
            {"key": "other_key"},
            "tls.key",
            "the private key in {other_key} does not belong to the first certificate",
        ),
        ({"ca_file": "garbage"}, "tls.ca_file", "{garbage} holds no PEM certificate"),
        ({"ca_file": "missing"}, "tls.ca_file", "cannot read {missing}"),
        ({"cert": None}, "tls.cert", "required, missing"),
        ({"passphrase": "x"}, "tls.passphrase", "unknown key"),
    ],
    ids=[
        "unreadable certificate file",
        "unreadable key file",
        "certificate file that is not PEM",
        "key file that is not PEM",
        "key file holding a certificate only",
        "encrypted key without a password",
        "encrypted key with the wrong password",
        "password for a key that is not encrypted",
        "key of another certificate",
        "ca_file without a certificate",
        "unreadable ca_file",
        "no certificate",
        "a typo among the keys",
    ],
)
def test_bad_client_certificates_are_located_config_errors(
    tmp_path: Path,
    pems: dict[str, str],
    client_cert: trustme.LeafCert,
    client_ca: trustme.CA,
    change: dict[str, str | None],
    key_path: str,
    expected: str,
) -> None:
    files = _case_files(tmp_path, client_cert, client_ca.issue_cert("other.example"))
    files["key"] = pems["key"]
    tls: dict[str, Any] = dict(pems)
    for k, v in change.items():
        if v is None:
            tls.pop(k)
        else:
            tls[k] = files.get(v, v)
    settings, problems = read(tls)
    assert settings is None or key_path.endswith(("ca_file", "passphrase"))
    wanted = f"test.yaml: providers.bank.{key_path}: {expected.format(**files)}"
    assert any(p.startswith(wanted) for p in problems), problems


def test_an_unreadable_key_is_reported_beside_a_bad_certificate(
    tmp_path: Path, pems: dict[str, str]
) -> None:
    (tmp_path / "bad.pem").write_text("not a PEM\n")
    missing = str(tmp_path / "missing.key")
    _, problems = read({"cert": str(tmp_path / "bad.pem"), "key": missing})
    where = {p.split(": ", 2)[1]: p for p in problems}
    assert sorted(where) == ["providers.bank.tls.cert", "providers.bank.tls.key"]
    assert f"cannot read {missing}: No such file" in where["providers.bank.tls.key"]


def test_errors_about_inline_pems_never_quote_them(
    client_cert: trustme.LeafCert, client_ca: trustme.CA
) -> None:
    other_key = client_ca.issue_cert("x.example").private_key_pem.bytes().decode()
    _, problems = read({"cert": client_cert.cert_chain_pems[0].bytes().decode(), "key": other_key})
    assert len(problems) == 1
    assert "the private key in the inline PEM does not belong" in problems[0]
    body = other_key.splitlines()[1]
    assert body not in problems[0] and "PRIVATE KEY" not in problems[0]


def test_a_chain_with_the_client_certificate_not_first_says_so(
    tmp_path: Path, client_cert: trustme.LeafCert, client_ca: trustme.CA, pems: dict[str, str]
) -> None:
    wrong_order = tmp_path / "chain.pem"
    wrong_order.write_bytes(client_ca.cert_pem.bytes() + client_cert.cert_chain_pems[0].bytes())
    settings, problems = read({**pems, "cert": str(wrong_order)})
    assert settings is None
    assert len(problems) == 1
    assert f"the certificate of CN={CLIENT_CN}" in problems[0]
    assert problems[0].endswith("must come first, then its chain")


def test_the_private_key_never_shows_in_a_repr(pems: dict[str, str]) -> None:
    settings, _ = read(pems)
    assert settings is not None
    key_body = Path(pems["key"]).read_text().splitlines()[1]
    assert key_body not in repr(settings) and "PRIVATE" not in repr(settings)
    assert key_body not in str(settings)


# --- the handshake -------------------------------------------------------------------------


@pytest.fixture
async def mtls_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    ca: trustme.CA,
    client_ca: trustme.CA,
) -> str:
    """A partner that REQUIRES a client certificate from `client_ca` and says whose it got."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(ctx)

    async def whoami(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item[0] for item in peer["subject"]) if peer else {}
        return web.json_response({"cn": subject.get("commonName")})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    server = await aiohttp_server(app, ssl=ctx)
    return f"https://127.0.0.1:{server.port}/whoami"


async def test_with_the_client_certificate_the_server_sees_its_subject(
    mtls_server: str, pems: dict[str, str]
) -> None:
    settings, _ = read(pems)
    context = client_context(settings)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    async with aiohttp.ClientSession() as session, session.get(mtls_server, ssl=context) as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"cn": CLIENT_CN}


async def test_the_provider_ca_file_is_used_when_tls_has_none(
    mtls_server: str, pems: dict[str, str], ca_file: str
) -> None:
    settings, _ = read({"cert": pems["cert"], "key": pems["key"]})
    context = client_context(settings, ca_file)
    async with aiohttp.ClientSession() as session, session.get(mtls_server, ssl=context) as resp:
        assert (await resp.json()) == {"cn": CLIENT_CN}


async def test_an_encrypted_key_presents_the_certificate_too(
    mtls_server: str, tmp_path: Path, pems: dict[str, str], client_cert: trustme.LeafCert
) -> None:
    key = tmp_path / "enc.key"
    key.write_bytes(encrypted_key(client_cert, PASSWORD))
    settings, problems = read({**pems, "key": str(key), "key_password": PASSWORD})
    assert problems == []
    async with (
        aiohttp.ClientSession() as session,
        session.get(mtls_server, ssl=client_context(settings)) as resp,
    ):
        assert (await resp.json()) == {"cn": CLIENT_CN}


async def test_without_a_client_certificate_the_server_refuses(
    mtls_server: str, ca_file: str
) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(mtls_server, ssl=client_context(None, ca_file)) as resp:
                await resp.read()


async def test_a_server_certificate_from_another_ca_is_not_trusted(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    other_ca_ssl: ssl.SSLContext,
    pems: dict[str, str],
) -> None:
    app = web.Application()
    server = await aiohttp_server(app, ssl=other_ca_ssl)
    settings, _ = read(pems)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"https://127.0.0.1:{server.port}/", ssl=client_context(settings))


def test_loading_leaves_no_key_file_and_no_open_descriptor(pems: dict[str, str]) -> None:
    settings, _ = read(pems)
    before = set(os.listdir("/proc/self/fd"))
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    for _ in range(20):
        client_context(settings)
    assert set(os.listdir("/proc/self/fd")) == before
    assert set(os.listdir(tempfile.gettempdir())) == tmp_before


def test_a_key_openssl_refuses_is_a_config_error_too(tmp_path: Path) -> None:
    # cryptography reads a 1024-bit RSA key, but OpenSSL's default security level (2: at
    # least 112 bits of security, RSA >= 2048; SSL_CTX_set_security_level(3)) refuses it
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "weak.crt", tmp_path / "weak.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings, problems = read({"cert": str(cert_path), "key": str(key_path)})
    assert settings is None
    assert problems == [
        "test.yaml: providers.bank.tls.cert: OpenSSL cannot use this certificate and key: "
        "EE_KEY_TOO_SMALL"
    ]


async def test_the_client_certificate_reaches_the_partner_through_an_egress_tunnel(
    mtls_server: str, pems: dict[str, str]
) -> None:
    # TLS is end to end: the proxy only relays, the partner sees keyhop's client certificate
    settings, _ = read(pems)
    context = client_context(settings)
    proxy = await ConnectProxy().start()
    try:
        port = int(mtls_server.split(":")[2].split("/")[0])
        # the request path: open_tunnel, then TLS over the tunnel's socket
        sock = await open_tunnel(ProxyTarget(proxy.host, proxy.port), "127.0.0.1", port, timeout=5)
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname="127.0.0.1"
        )
        writer.write(b"GET /whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b'{"cn": "' + CLIENT_CN.encode() + b'"}')
        # the token client: aiohttp through the same proxy
        async with (
            aiohttp.ClientSession() as session,
            session.get(mtls_server, ssl=context, proxy=proxy.url) as resp,
        ):
            assert (await resp.json()) == {"cn": CLIENT_CN}
    finally:
        await proxy.stop()
    assert proxy.targets == [f"127.0.0.1:{port}"] * 2
    assert proxy.tunnels == 2
