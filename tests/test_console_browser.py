"""The console in a real browser (SPEC 6.1): Debian's headless chromium driven through
chromedriver by selenium, against real `keyhop sandbox` and `keyhop serve` processes.

Connect Saison by clicking through the sandbox's login page, see it valid; revoke it with
the confirmation, see it not connected; a hostile tenant id stays text. Screenshots of each
step go to tests/artifacts/. If chromium cannot start, this test fails: `make test`
installs it (the `chromium` target).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from proxy.store import SqliteStore
from proxy.tokens import Credential
from tests.support import ROOT, KeyhopProcess
from tests.test_sandbox_e2e import stack  # noqa: F401  (the sandbox and keyhop processes)

ARTIFACTS = ROOT / "tests" / "artifacts"
HOSTILE = "<script>alert(1)</script>"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromedriver are missing: run `make chromium`"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    # the Debian driver, never one selenium would download
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(15)
    try:
        yield chrome
    finally:
        chrome.quit()


def shot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"console-{name}.png"
    assert browser.save_screenshot(str(path))
    return path


def row(browser: WebDriver, provider: str, tenant: str) -> WebElement:
    for tr in browser.find_elements(By.CSS_SELECTOR, "tr[data-provider]"):
        if (
            tr.get_attribute("data-provider") == provider
            and tr.get_attribute("data-tenant") == tenant
        ):
            return tr
    raise AssertionError(
        f"no row {provider}/{tenant} in: {browser.find_element(By.TAG_NAME, 'body').text}"
    )


def state_words(browser: WebDriver, provider: str, tenant: str) -> str:
    return row(browser, provider, tenant).find_elements(By.TAG_NAME, "td")[1].text


def on_console(browser: WebDriver) -> None:
    WebDriverWait(browser, 10).until(
        lambda b: b.current_url.endswith("/-/console") and b.find_elements(By.TAG_NAME, "main")
    )


async def test_connect_and_revoke_saison_by_clicking_in_chromium(
    stack: tuple[str, str, KeyhopProcess],  # noqa: F811
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    _, keyhop, proc = stack
    try:
        await scenario(browser, keyhop, tmp_path / "s.db")
    except BaseException:
        shot(browser, "failed")  # where the browser was when it failed
        raise
    assert "sandbox-saison-secret" not in proc.logs()
    assert time.monotonic() - started < 30


async def scenario(browser: WebDriver, keyhop: str, store_path: Path) -> None:
    async with aiohttp.ClientSession() as s:  # some traffic: credentials to show
        for path in ("/kibo/api/x", "/paynet/api/y", "/spaaza-admin/admin/users"):
            async with s.get(keyhop + path) as r:
                assert r.status == 200, path

    browser.get(f"{keyhop}/-/console")
    on_console(browser)
    assert browser.find_element(By.TAG_NAME, "h1").text == "keyhop console"
    assert state_words(browser, "saison", "sandbox-member") == "not connected"
    assert state_words(browser, "kibo", "") == "valid"
    shot(browser, "1-not-connected")

    # Connect: the tenant field holds the default tenant; the sandbox's login page opens
    connect = browser.find_element(By.CSS_SELECTOR, "#p-saison form.connect")
    tenant = connect.find_element(By.NAME, "tenant")
    assert tenant.get_attribute("value") == "sandbox-member"
    connect.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 10).until(lambda b: "Saison sandbox login" in b.title + b.page_source)
    assert "/auth/screen/sandbox-member/authorize" in browser.current_url
    assert "Log in as member sandbox-member" in browser.find_element(By.TAG_NAME, "body").text
    shot(browser, "2-saison-login")
    browser.find_element(By.CSS_SELECTOR, "button[value=allow]").click()

    # back on the console, connected
    on_console(browser)
    WebDriverWait(browser, 10).until(
        lambda b: state_words(b, "saison", "sandbox-member") == "valid"
    )
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Connected saison for sandbox-member." in body
    expires = row(browser, "saison", "sandbox-member").find_elements(By.TAG_NAME, "td")[2].text
    assert expires.startswith("in "), expires
    shot(browser, "3-connected")

    # a tenant id that requests cannot name can still sit in a shared store (an older
    # version, another tool); the page must show it as text
    store = SqliteStore(str(store_path))
    await store.open()
    await store.put("saison", HOSTILE, Credential("t", time.time() + 900, time.time(), "r"))
    await store.close()

    # Revoke: asks first, then revokes
    row(browser, "saison", "sandbox-member").find_element(By.CSS_SELECTOR, "button.danger").click()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "form.confirm"))
    assert (
        browser.find_element(By.TAG_NAME, "h1").text == "Revoke saison for tenant sandbox-member?"
    )
    shot(browser, "4-revoke-confirm")
    browser.find_element(By.CSS_SELECTOR, "form.confirm button").click()
    on_console(browser)
    assert (
        "Revoked saison (tenant sandbox-member)." in browser.find_element(By.TAG_NAME, "body").text
    )
    assert state_words(browser, "saison", "sandbox-member") == "not connected"
    assert row(browser, "saison", HOSTILE).find_element(By.TAG_NAME, "td").text == HOSTILE
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018  (the script never ran)
    shot(browser, "5-revoked")

    assert "sandbox-saison-secret" not in browser.page_source
