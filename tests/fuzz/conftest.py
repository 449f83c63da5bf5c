"""Hypothesis profiles for the fuzz campaign (issue 12, "And keep it that way").

`make test` runs the `ci` profile: derandomized (one fixed sequence of examples, so a red
run is reproducible and a green one stays green), small example counts that keep all fuzz
tests near a minute together, and no example database written. `make fuzz` sets
KEYHOP_FUZZ=long: random seeds, many more examples, and a database under
tests/fuzz/.hypothesis (git-ignored) that replays what an earlier long run found.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

LONG = os.environ.get("KEYHOP_FUZZ", "") == "long"
HOME = Path(__file__).parent / ".hypothesis"  # git-ignored (tests/fuzz/.gitignore)

set_hypothesis_home_dir(HOME)  # hypothesis's caches too, not a .hypothesis/ wherever pytest runs

_COMMON = {
    "deadline": None,  # real sockets: one slow example on a busy machine is not a failure
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile(
    "long",
    database=DirectoryBasedExampleDatabase(HOME / "examples"),
    **_COMMON,
)
settings.load_profile("long" if LONG else "ci")
