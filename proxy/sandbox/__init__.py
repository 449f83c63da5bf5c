"""`keyhop sandbox`: local emulation of the five providers' auth."""

from __future__ import annotations

import sys


def main(listen: str) -> int:
    print("keyhop sandbox: not available in this build", file=sys.stderr)
    return 2
