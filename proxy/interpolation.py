"""`${NAME}`, `${NAME:-default}` and `${file:/path}` in config values (SPEC 3.1).

Every value read this way is collected so that it is never quoted back: not in a config
error, a log line or an answer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final

from proxy.schema import Problems

_INTERP: Final = re.compile(r"\$\$|\$\{([^}]*)\}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(value: Any, path: str, problems: Problems, found: set[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: interpolate(v, f"{path}.{k}" if path else str(k), problems, found)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", problems, found) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        ref = m.group(1)
        if ref.startswith("file:"):
            file_path = ref[5:]
            try:
                text = Path(file_path).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                problems.add(path, f"secret file {file_path} is not UTF-8 text")
                problems.reported.add(path)
                return ""
            except OSError as exc:
                problems.add(path, f"cannot read secret file {file_path}: {exc.strerror}")
                problems.reported.add(path)
                return ""
            text = text[:-1] if text.endswith("\n") else text
            found.add(text)
            return text
        name, sep, fallback = ref.partition(":-")
        if not _ENV_NAME.fullmatch(name):
            problems.add(path, f"bad reference ${{{ref}}}; expected ${{NAME}} or ${{file:/path}}")
            problems.reported.add(path)
            return ""
        env = os.environ.get(name)
        if env is None:
            if sep:
                return fallback
            problems.add(path, f"environment variable {name} is not set")
            problems.reported.add(path)
            return ""
        found.add(env)
        return env

    return _INTERP.sub(substitute, value)
