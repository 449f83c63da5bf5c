"""errors.py: every answer keyhop can give is a ProxyError there, and each is documented in
the README's table of error codes (datasette's test_docs.py)."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import proxy
import proxy.errors
from proxy.errors import ProxyError
from tests.support import ROOT


def all_errors() -> list[type[ProxyError]]:
    """Every ProxyError subclass anywhere in the package (every module is imported)."""
    for module in pkgutil.walk_packages(proxy.__path__, "proxy."):
        if not module.name.endswith("__main__"):  # that one runs the CLI
            importlib.import_module(module.name)
    out, todo = [], [ProxyError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def readme_table() -> dict[str, int]:
    text = (ROOT / "README.md").read_text()
    return {
        code: int(status) for code, status in re.findall(r"^\| `(\w+)` \| (\d{3}) \|", text, re.M)
    }


@pytest.mark.parametrize("cls", all_errors(), ids=lambda c: c.code)
def test_every_error_code_is_in_the_readme_with_its_status(cls: type[ProxyError]) -> None:
    table = readme_table()
    assert cls.code in table, f"README's error table lacks {cls.code}"
    assert table[cls.code] == cls.status


def test_every_error_class_lives_in_errors_py() -> None:
    misplaced = [
        c.__module__ + "." + c.__name__
        for c in all_errors()
        if c.__module__ != proxy.errors.__name__
    ]
    assert misplaced == []
