"""The route map (SPEC 2, 3, 3.1): typed, strict, every problem named, secrets never shown."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, ProviderConfig, load_config, parse_config
from proxy.errors import ConfigError
from tests.support import ROOT, write_config

SOURCE = "conf/keyhop.yaml"
TOKEN = "tok-Sup3rS3cret-0001"


def good() -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:8080",
        "store": "memory:",
        "providers": {
            "p": {
                "auth": {"type": "static", "token": TOKEN},
                "headers": {"Authorization": "Bearer {token}"},
                "timeouts": {"connect": 2, "read": 5},
            }
        },
        "routes": [{"prefix": "/p", "upstream": "https://api.example.test/v1", "provider": "p"}],
    }


def with_(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `value` set at a dotted path (`routes.0.prefix`)."""
    out = copy.deepcopy(data)
    node: Any = out
    *parents, last = path.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def problems(data: Any, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SOURCE, **kw)
    assert info.value.problems, "a ConfigError must list its problems"
    return info.value.problems


def headers_of(provider: ProviderConfig) -> dict[str, str]:
    return {h.name: h.render({"token": "", "tenant": ""}) for h in provider.headers}


def test_a_good_config_loads_into_frozen_records() -> None:
    config = parse_config(good(), SOURCE)
    assert isinstance(config, Config)
    assert [r.prefix for r in config.routes] == ["/p"]
    assert headers_of(config.providers["p"]) == {"Authorization": f"Bearer {TOKEN}"}
    with pytest.raises(AttributeError):
        config.store = "sqlite:///tmp/x.db"  # type: ignore[misc]


# --- unknown keys ------------------------------------------------------------------------------

TYPOS = [
    ("top-level", "drain_timout", 5, "drain_timout", "drain_timeout"),
    ("top-level-listen", "lisen", "127.0.0.1:9", "lisen", "listen"),
    ("provider", "providers.p.heders", {"X": "1"}, "providers.p.heders", "headers"),
    ("provider-timeouts", "providers.p.timeouts.raed", 3, "providers.p.timeouts.raed", "read"),
    ("auth", "providers.p.auth.tokne", "x", "providers.p.auth.tokne", "token"),
    ("route", "routes.0.websockt", True, "routes[0].websockt", "websocket"),
    ("clients", "clients.key", ["k-123456"], "clients.key", "keys"),
]


@pytest.mark.parametrize(
    ("where", "dotted", "value", "key_path", "hint"), TYPOS, ids=[t[0] for t in TYPOS]
)
def test_a_typoed_key_anywhere_is_an_error_naming_file_key_path_and_a_hint(
    where: str, dotted: str, value: Any, key_path: str, hint: str
) -> None:
    found = problems(with_(good(), dotted, value))
    assert len(found) == 1, found
    line = found[0]
    assert line.startswith(f"{SOURCE}: {key_path}: "), line
    assert "unknown" in line.lower()
    assert re.search(rf"\b{re.escape(hint)}\b", line.removeprefix(f"{SOURCE}: {key_path}: "))


def test_a_typoed_key_beside_a_preset_is_an_error_too() -> None:
    data = good()
    data["providers"]["p"] = {"preset": "spaaza_privileged", "auth": {"tokn": "ID:SECRET"}}
    found = problems(data)
    assert any(line.startswith(f"{SOURCE}: providers.p.auth.tokn: ") for line in found), found


def test_a_wrong_type_names_what_was_expected_and_what_was_found() -> None:
    (line,) = problems(with_(good(), "providers.p.timeouts.read", "soon"))
    assert line.startswith(f"{SOURCE}: providers.p.timeouts.read: ")
    assert "number" in line and "soon" in line


# --- secrets ----------------------------------------------------------------------------------


def test_an_environment_variable_fills_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYHOP_TEST_TOKEN", "from-env-123456")
    config = parse_config(with_(good(), "providers.p.auth.token", "${KEYHOP_TEST_TOKEN}"), SOURCE)
    assert headers_of(config.providers["p"]) == {"Authorization": "Bearer from-env-123456"}


def test_a_missing_environment_variable_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEYHOP_TEST_UNSET_VAR", raising=False)
    found = problems(with_(good(), "providers.p.auth.token", "${KEYHOP_TEST_UNSET_VAR}"))
    assert any(
        line.startswith(f"{SOURCE}: providers.p.auth.token: ") and "KEYHOP_TEST_UNSET_VAR" in line
        for line in found
    ), found


def test_a_default_stands_in_for_a_missing_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEYHOP_TEST_UNSET_VAR", raising=False)
    data = with_(good(), "providers.p.headers.X-Host", "${KEYHOP_TEST_UNSET_VAR:-shop.example}")
    config = parse_config(data, SOURCE)
    assert headers_of(config.providers["p"])["X-Host"] == "shop.example"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("file-secret-123456\n", "file-secret-123456"),
        ("file-secret-123456", "file-secret-123456"),
        ("  file-secret-123456 \n", "  file-secret-123456 "),
    ],
    ids=["trailing-newline-dropped", "no-newline", "only-the-newline-dropped"],
)
def test_a_file_reference_reads_the_file_and_drops_its_trailing_newline(
    tmp_path: Path, content: str, expected: str
) -> None:
    secret = tmp_path / "token"
    secret.write_text(content)
    config = parse_config(with_(good(), "providers.p.auth.token", f"${{file:{secret}}}"), SOURCE)
    assert headers_of(config.providers["p"]) == {"Authorization": f"Bearer {expected}"}


def test_a_missing_secret_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "token"
    found = problems(with_(good(), "providers.p.auth.token", f"${{file:{missing}}}"))
    assert any(
        line.startswith(f"{SOURCE}: providers.p.auth.token: ") and str(missing) in line
        for line in found
    ), found


# --- presets, auth types, URLs, listen ---------------------------------------------------------


def test_an_unknown_preset_is_an_error_listing_the_known_ones() -> None:
    data = good()
    data["providers"]["p"] = {"preset": "kibbo"}
    (line,) = problems(data)
    assert line.startswith(f"{SOURCE}: providers.p.preset: ")
    assert "kibbo" in line
    for known in ("kibo", "paynet", "saison", "sesami", "spaaza_privileged", "spaaza_user"):
        assert re.search(rf"\b{known}\b", line), line


def test_an_unknown_auth_type_is_an_error_listing_the_known_ones() -> None:
    (line,) = problems(with_(good(), "providers.p.auth", {"type": "oauth3"}))
    assert line.startswith(f"{SOURCE}: providers.p.auth.type: ")
    for known in ("static", "none", "oauth2_client_credentials", "oauth2_authorization_code"):
        assert re.search(rf"\b{known}\b", line), line


@pytest.mark.parametrize(
    ("dotted", "value", "key_path"),
    [
        ("providers.p.auth", {"type": "oauth2_client_credentials", "token_url": "not a URL",
         "client_id": "id", "client_secret": "sec-123456"}, "providers.p.auth.token_url"),
        ("providers.p.auth", {"type": "oauth2_client_credentials", "token_url": "ftp://x/t",
         "client_id": "id", "client_secret": "sec-123456"}, "providers.p.auth.token_url"),
        ("routes.0.upstream", "api.example.test/v1", "routes[0].upstream"),
        ("routes.0.upstream", "file:///etc/passwd", "routes[0].upstream"),
    ],
    ids=["token-url-text", "token-url-ftp", "upstream-without-scheme", "upstream-file"],
)  # fmt: skip
def test_a_bad_url_is_an_error_at_its_key_path(dotted: str, value: Any, key_path: str) -> None:
    found = problems(with_(good(), dotted, value))
    assert any(line.startswith(f"{SOURCE}: {key_path}: ") for line in found), found


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.168.1.10:8080"], ids=str)
def test_listening_beyond_loopback_without_client_keys_is_an_error(listen: str) -> None:
    found = problems(with_(good(), "listen", listen))
    assert any(line.startswith(f"{SOURCE}: clients.keys: ") for line in found), found


def test_a_command_line_listen_beyond_loopback_needs_client_keys_too() -> None:
    found = problems(good(), listen_override="0.0.0.0:8080")
    assert any(line.startswith(f"{SOURCE}: clients.keys: ") for line in found), found


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "[::1]:8080", "localhost:8080"], ids=str)
def test_loopback_needs_no_client_keys(listen: str) -> None:
    assert parse_config(with_(good(), "listen", listen), SOURCE).client_keys == ()


def test_listening_beyond_loopback_with_client_keys_is_fine() -> None:
    data = with_(good(), "listen", "0.0.0.0:8080")
    data["clients"] = {"keys": ["client-key-abcdef"]}
    assert parse_config(data, SOURCE).listen.port == 8080


def test_an_unknown_header_placeholder_is_an_error_at_the_header() -> None:
    found = problems(with_(good(), "providers.p.headers.X-Shop", "{shop_id}"))
    assert any(
        line.startswith(f"{SOURCE}: providers.p.headers.X-Shop: ") and "shop_id" in line
        for line in found
    ), found


@pytest.mark.parametrize("name", ["X:Y", "Bad Name", "X-\u00e9", ""])
def test_a_header_name_that_is_not_a_token_is_an_error(name: str) -> None:
    data = good()
    data["providers"]["p"]["headers"][name] = "v"
    found = problems(data)
    assert any(
        line.startswith(f"{SOURCE}: providers.p.headers.{name}: ") and "header name" in line
        for line in found
    ), found


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x1bb"])
def test_a_header_value_with_a_line_break_is_an_error_that_never_quotes_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KEYHOP_TEST_HEADER", "Sq7x" + value)
    found = problems(with_(good(), "providers.p.headers.X-Key", "${KEYHOP_TEST_HEADER}"))
    assert any(
        line.startswith(f"{SOURCE}: providers.p.headers.X-Key: ") and "control character" in line
        for line in found
    ), found
    assert not any("Sq7x" in line or "Injected" in line for line in found)


def test_a_tab_in_a_header_value_is_fine() -> None:
    provider = parse_config(with_(good(), "providers.p.headers.X-Tab", "a\tb"), SOURCE)
    assert headers_of(provider.providers["p"])["X-Tab"] == "a\tb"


def test_a_missing_ca_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    found = problems(with_(good(), "providers.p.ca_file", str(missing)))
    assert any(
        line.startswith(f"{SOURCE}: providers.p.ca_file: ") and str(missing) in line
        for line in found
    ), found


def test_a_route_to_an_undefined_provider_is_an_error_listing_the_defined_ones() -> None:
    found = problems(with_(good(), "routes.0.provider", "kibo"))
    prefix = f"{SOURCE}: routes[0].provider: "
    (line,) = [line for line in found if line.startswith(prefix)]
    rest = line.removeprefix(prefix)
    assert "kibo" in rest and re.search(r"\bp\b", rest), line


def test_every_problem_is_listed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYHOP_TEST_UNSET_VAR", raising=False)
    data = with_(good(), "providers.p.heders", {"X": "1"})
    data = with_(data, "routes.0.prefx", "/q")
    data = with_(data, "providers.p.auth.token", "${KEYHOP_TEST_UNSET_VAR}")
    found = problems(data)
    for key_path in ("providers.p.heders", "routes[0].prefx", "providers.p.auth.token"):
        assert any(line.startswith(f"{SOURCE}: {key_path}: ") for line in found), found


def test_two_typos_give_exactly_two_lines() -> None:
    data = with_(good(), "providers.p.heders", {"X": "1"})
    data = with_(data, "routes.0.prefx", "/q")
    found = problems(data)
    assert sorted(line.partition(": ")[2].partition(":")[0] for line in found) == [
        "providers.p.heders",
        "routes[0].prefx",
    ], found


def test_a_missing_environment_variable_is_reported_once_not_also_as_an_empty_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEYHOP_TEST_UNSET_VAR", raising=False)
    found = problems(with_(good(), "providers.p.auth.token", "${KEYHOP_TEST_UNSET_VAR}"))
    assert [line for line in found if "providers.p.auth.token" in line] == [
        f"{SOURCE}: providers.p.auth.token: environment variable KEYHOP_TEST_UNSET_VAR is not set"
    ], found


# --- secrets never shown -----------------------------------------------------------------------

SECRETS = {
    "KEYHOP_TEST_STATIC": "static-Zq8sW2-secret",
    "KEYHOP_TEST_CLIENT_SECRET": "client-Xk4mP9-secret",
    "KEYHOP_TEST_CLIENT_KEY": "clientkey-Rt7vB3-secret",
    "KEYHOP_TEST_HEADER": "header-Lm2nQ5-secret",
    "KEYHOP_TEST_VAR": "var-Yp6cD1-secret",
    "KEYHOP_TEST_SIGN": "sign-Hj3kF8-secret",
    "KEYHOP_TEST_PARAM": "param-Wq5eR7-secret",
}


def secret_config(file_secret: Path) -> dict[str, Any]:
    return {
        "listen": "0.0.0.0:8080",
        "store": "memory:",
        "clients": {"keys": ["${KEYHOP_TEST_CLIENT_KEY}"]},
        "providers": {
            "static": {
                "auth": {"type": "static", "token": "${KEYHOP_TEST_STATIC}"},
                "headers": {"Authorization": "Bearer {token}", "X-Api": "${KEYHOP_TEST_HEADER}"},
            },
            "cc": {
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": "https://auth.example.test/token",
                    "client_id": "the-client-id",
                    "client_secret": "${KEYHOP_TEST_CLIENT_SECRET}",
                    "token_params": {"audience": "${KEYHOP_TEST_PARAM}"},
                },
                "vars": {"fiid": "${KEYHOP_TEST_VAR}"},
                "headers": {"X-Fiid": "{fiid}"},
                "sign": {"type": "x_signature", "key": "${KEYHOP_TEST_SIGN}"},
            },
            "filed": {
                "auth": {"type": "static", "token": f"${{file:{file_secret}}}"},
                "headers": {"X-Key": "{token}"},
            },
        },
        "routes": [
            {"prefix": "/s", "upstream": "https://a.example.test", "provider": "static"},
            {"prefix": "/c", "upstream": "https://b.example.test", "provider": "cc"},
            {"prefix": "/f", "upstream": "https://c.example.test", "provider": "filed"},
        ],
    }


FILE_SECRET = "filed-Nb4xT6-secret"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "file-secret"
    path.write_text(FILE_SECRET + "\n")
    return path


def all_secrets() -> list[str]:
    return [*SECRETS.values(), FILE_SECRET]


def test_secrets_never_appear_in_reprs(secret_env: Path) -> None:
    config = parse_config(secret_config(secret_env), SOURCE)
    texts = [repr(config), str(config)]
    for provider in config.providers.values():
        texts += [repr(provider), str(provider), repr(provider.scheme), repr(provider.headers)]
        if provider.sign is not None:
            texts.append(repr(provider.sign))
    texts += [repr(route) for route in config.routes]
    texts += [repr(config.client_keys)]
    blob = "\n".join(texts)
    for secret in all_secrets():
        assert secret not in blob, f"{secret} leaked into a repr"


def assert_not_shown(exc: ConfigError) -> None:
    blob = "\n".join([*exc.problems, str(exc), repr(exc)])
    for secret in all_secrets():
        assert secret not in blob, f"{secret} leaked into an error: {blob}"


def test_secrets_never_appear_in_error_messages(secret_env: Path) -> None:
    data = secret_config(secret_env)
    data["providers"]["static"]["heders"] = {"X": "1"}
    data["providers"]["cc"]["auth"]["scop"] = "read"
    data["providers"]["cc"]["auth"]["client_auth"] = "digest"
    data["providers"]["filed"]["sign"] = {"type": "hmac"}
    data["routes"][0]["tenant"] = "query"
    with pytest.raises(ConfigError) as info:
        parse_config(data, SOURCE)
    assert len(info.value.problems) >= 5, info.value.problems
    assert_not_shown(info.value)


@pytest.mark.parametrize(
    ("dotted", "reference"),
    [
        ("providers.cc.timeouts", {"read": "${KEYHOP_TEST_STATIC}"}),
        ("routes.0.tenant", "${KEYHOP_TEST_HEADER}"),
        ("providers.cc.auth.client_auth", "${KEYHOP_TEST_CLIENT_SECRET}"),
        ("providers.cc.auth.token_url", "${KEYHOP_TEST_SIGN}"),
        ("listen", "${KEYHOP_TEST_CLIENT_KEY}"),
    ],
    ids=["number", "choice", "client-auth", "url", "listen"],
)
def test_a_wrong_value_read_from_a_secret_reference_is_not_quoted_back(
    secret_env: Path, dotted: str, reference: Any
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_(secret_config(secret_env), dotted, reference), SOURCE)
    assert_not_shown(info.value)


# --- keyhop check, a real subprocess -----------------------------------------------------------


def check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_keyhop_check_exits_0_on_a_good_config(tmp_path: Path) -> None:
    result = check(write_config(tmp_path / "keyhop.yaml", good()))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_keyhop_check_exits_2_with_every_error_on_stderr_and_no_traceback(
    tmp_path: Path,
) -> None:
    data = with_(good(), "providers.p.heders", {"X": "1"})
    data = with_(data, "routes.0.prefx", "/q")
    data = with_(data, "providers.p.auth.token", "${KEYHOP_TEST_UNSET_VAR}")
    path = write_config(tmp_path / "keyhop.yaml", data)
    env = {k: v for k, v in os.environ.items() if k != "KEYHOP_TEST_UNSET_VAR"}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for key_path in ("providers.p.heders", "routes[0].prefx", "providers.p.auth.token"):
        assert f"{path}: {key_path}: " in result.stderr, result.stderr
    assert "KEYHOP_TEST_UNSET_VAR" in result.stderr


@pytest.mark.parametrize(
    "text",
    ["providers: [unclosed\n", "just a string\n", ""],
    ids=["broken-yaml", "not-a-mapping", "empty"],
)
def test_keyhop_check_exits_2_on_an_unreadable_config_without_a_traceback(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "keyhop.yaml"
    path.write_text(text)
    result = check(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert str(path) in result.stderr


def test_keyhop_check_exits_2_on_a_missing_file(tmp_path: Path) -> None:
    result = check(tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "absent.yaml" in result.stderr


def test_keyhop_check_shows_no_secret_when_it_fails(secret_env: Path, tmp_path: Path) -> None:
    data = secret_config(secret_env)
    data["providers"]["static"]["heders"] = {"X": "1"}
    path = write_config(tmp_path / "keyhop.yaml", data)
    result = check(path, env=dict(SECRETS))
    assert result.returncode == 2
    for secret in all_secrets():
        assert secret not in result.stdout + result.stderr


# --- the shipped examples ---------------------------------------------------------------------

EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def test_the_repository_ships_an_example_config() -> None:
    assert ROOT / "config" / "keyhop.yaml" in EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_shipped_config_loads_with_its_variables_set(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = path.read_text()
    yaml.safe_load(text)  # valid YAML first
    for name in sorted(set(_REF.findall(text))):
        monkeypatch.setenv(name, f"dummy-{name.lower()}")
    try:
        config = load_config(str(path))
    except ConfigError as exc:
        pytest.fail(f"{path.name} does not load:\n" + "\n".join(exc.problems))
    assert config.routes
    assert {r.provider for r in config.routes} <= set(config.providers)
