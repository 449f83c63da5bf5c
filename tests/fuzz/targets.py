"""Generated request targets, and how servers behind keyhop would read a path.

The oracles: RFC 3986 5.2.4 (remove_dot_segments), applied to the path as sent, to the path
percent-decoded until it stops changing, and to the path as Tomcat and Spring read it:
`;` path parameters stripped from each segment, `\\` taken for `/`, decoded (issue 12 item 1:
`/..;/` is a dot-segment there), in every order, repeatedly.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote

from hypothesis import strategies as st

#: pieces of segments: dots, separators and parameters, raw and encoded once, twice, oddly
PIECES: Final = (
    *(".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2E.", "%252e", "%25252e", "%252E%252e"),
    *(";", ";x=1", ";jsessionid=1", "%3b", "%3B", "%253b", "..;", ".;", "%2e%2e;", "..%3b"),
    *("\\", "%5c", "%5C", "%255c", "%2f", "%2F", "%252f", "/", "//"),
    *("?", "#", "%3f", "%23", "%", "%25", "%2", "%g0", "%c0%ae", "%u002e", "%00"),
    *("a", "b", "B", "2", "e", "E", "f", "F", "3", "x"),
)
#: escapes keyhop is known to let through, each kept as a strict xfail case in
#: test_routing_targets.py; the generic fuzz tests do not fail on them, so they find new ones
KNOWN: Final[frozenset[str]] = frozenset()
PREFIXES: Final = ("/r", "/r/", "/q", "/q/", "/%72", "/R", "/rr", "/r;", "/r%2f", "/q/..")


@st.composite
def raw_targets(draw: st.DrawFn) -> str:
    """An origin-form target: a route prefix (or a near miss), segments built from PIECES,
    maybe a query and a fragment."""
    prefix = draw(st.sampled_from(PREFIXES))
    plain = st.text("abefBEF23x", min_size=1, max_size=3)
    odd = st.lists(st.sampled_from(PIECES), min_size=1, max_size=2).map("".join)
    segments = draw(st.lists(plain | odd, max_size=4))
    target = prefix + "".join("/" + s for s in segments)
    if draw(st.booleans()):
        target += "?" + draw(st.lists(st.sampled_from(PIECES), max_size=3).map("".join))
    return target


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, step by step."""
    text, out = path, ""
    while text:
        if text.startswith("../"):
            text = text[3:]
        elif text.startswith("./"):
            text = text[2:]
        elif text.startswith("/./"):
            text = "/" + text[3:]
        elif text == "/.":
            text = "/"
        elif text.startswith("/../"):
            text = "/" + text[4:]
            out = out[: out.rfind("/")] if "/" in out else ""
        elif text == "/..":
            text = "/"
            out = out[: out.rfind("/")] if "/" in out else ""
        elif text in (".", ".."):
            text = ""
        else:
            start = 1 if text.startswith("/") else 0
            end = text.find("/", start)
            end = len(text) if end < 0 else end
            out += text[:end]
            text = text[end:]
    return out


def _strip_params(path: str) -> str:
    return "/".join(segment.partition(";")[0] for segment in path.split("/"))


def readings(path: str, params: bool = True) -> dict[str, str]:
    """The path after each server's normalization, named; `params=False` leaves `;` alone."""
    steps = {
        "decode": unquote,
        "params": _strip_params if params else str,
        "backslash": lambda p: p.replace("\\", "/"),
    }
    out = {"as sent": remove_dot_segments(path)}
    for first in steps:
        for second in steps:
            text = path
            for _ in range(6):  # until nothing changes: %25252e takes three rounds
                before = text
                for name in (first, second, *steps):
                    text = steps[name](text)
                if text == before:
                    break
            out[f"{first} first, then {second}, repeatedly"] = remove_dot_segments(text)
    out["decoded once"] = remove_dot_segments(unquote(path))
    if params:
        out["params stripped, decoded once (Tomcat)"] = remove_dot_segments(
            unquote(_strip_params(path))
        )
    return out


def escapes(path: str, base: str, known: frozenset[str] = KNOWN) -> list[str]:
    """How `path`, received by the upstream, climbs out of `base` or names another host."""
    problems = []
    if path.startswith("//") and "double-slash" not in known:
        # RFC 3986 4.2: a reference starting with "//" is network-path: the next segment is
        # read as a host by any URL resolver (keyhop refuses such a target from a client)
        problems.append(f"{path!r} starts with '//' (an authority to a URL resolver)")
    for name, normal in readings(path, params="dot-params" not in known).items():
        if base and not (normal == base or normal.startswith(base + "/")):
            problems.append(f"{path!r} read {name} is {normal!r}, outside {base!r}")
    return problems
