"""`keyhop sandbox`: local emulation of the five providers' auth, and of a signed crypto
exchange (Binance-like) that shows an `hmac` recipe at work.

The same fakes serve the test suite (each `Fake*.app` on its own test server) and the
`keyhop sandbox` command (all mounted on one server by `build_sandbox`), so the tests
exercise exactly what a user tries. Fixed credentials: `proxy.sandbox.credentials`.
"""

from __future__ import annotations

from proxy.sandbox.base import FakeProvider
from proxy.sandbox.exchange import FakeExchange
from proxy.sandbox.kibo import FakeKibo
from proxy.sandbox.paynet import FakePayNet
from proxy.sandbox.saison import FakeSaison
from proxy.sandbox.server import FAKES, build_sandbox, main, parse_listen
from proxy.sandbox.sesami import FakeSesami
from proxy.sandbox.spaaza import FakeSpaaza

__all__ = [
    "FAKES",
    "FakeExchange",
    "FakeKibo",
    "FakePayNet",
    "FakeProvider",
    "FakeSaison",
    "FakeSesami",
    "FakeSpaaza",
    "build_sandbox",
    "main",
    "parse_listen",
]
