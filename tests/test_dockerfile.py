"""The Dockerfile read as text (SPEC 4.7): runs everywhere, no container engine needed.
tests/test_docker.py builds the image and runs it."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

import pytest

from tests.support import ROOT

DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def argv(self) -> list[str]:
        """Exec form (`["a", "b"]`) or shell form, as a list of words."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list)
            return [str(v) for v in value]
        return shlex.split(text)


def instructions() -> list[Instruction]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


@pytest.fixture(scope="module")
def final_stage() -> list[Instruction]:
    steps = instructions()
    starts = [i for i, step in enumerate(steps) if step.keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return steps[starts[-1] :]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [step for step in stage if step.keyword == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]


def test_the_base_is_a_build_argument_defaulting_to_a_slim_python_image() -> None:
    steps = instructions()
    # a global ARG (before the first FROM) is the only kind a FROM line may use
    first_from = next(i for i, step in enumerate(steps) if step.keyword == "FROM")
    args = dict(step.args.split("=", 1) for step in steps[:first_from] if step.keyword == "ARG")
    assert re.fullmatch(
        r"(docker\.io/)?(library/)?python:3\.1[1-9][\w.\-]*slim[\w.\-]*(@sha256:\w+)?",
        args.get("BASE", ""),
    ), args
    stage_names = {s.argv()[2] for s in steps if s.keyword == "FROM" and len(s.argv()) == 3}
    for step in steps:
        if step.keyword == "FROM":
            assert step.argv()[0] in ("${BASE}", "$BASE"), step.args
        if step.keyword == "COPY" and step.args.startswith("--from="):
            assert step.args.split()[0].removeprefix("--from=") in stage_names, step.args


def test_the_image_runs_as_a_non_root_user(final_stage: list[Instruction]) -> None:
    # the last USER of the final stage is the one the container runs as
    user = only(final_stage, "USER").argv()[0].partition(":")[0]
    assert user not in ("root", "0", "")


def test_the_healthcheck_hits_health(final_stage: list[Instruction]) -> None:
    check = only(final_stage, "HEALTHCHECK")
    assert "CMD" in check.args.split()
    assert "/-/health" in check.args
    assert "8080" in check.args


def test_the_image_exposes_8080(final_stage: list[Instruction]) -> None:
    ports = [p.partition("/")[0] for s in final_stage if s.keyword == "EXPOSE" for p in s.argv()]
    assert "8080" in ports


def test_the_entrypoint_is_keyhop_serving_config_keyhop_yaml_on_8080(
    final_stage: list[Instruction],
) -> None:
    entrypoint = only(final_stage, "ENTRYPOINT").argv()
    assert entrypoint[0] in ("keyhop", "/opt/keyhop/bin/keyhop")
    command = entrypoint[1:] + only(final_stage, "CMD").argv()
    assert command[0] == "serve"
    config_env = [s for s in final_stage if s.keyword == "ENV" and "/config/keyhop.yaml" in s.args]
    config_arg = "--config" in command and command[command.index("--config") + 1]
    assert config_arg == "/config/keyhop.yaml" or (not config_arg and config_env)
    assert "--listen" in command
    assert command[command.index("--listen") + 1].endswith(":8080")


def test_the_image_installs_the_package_that_provides_the_keyhop_command() -> None:
    text = DOCKERFILE.read_text()
    # keyhop's own wheel, built from the copied source (`.`), installed into the shipped venv
    assert re.search(r"pip (install|wheel)[^\n]*\s\.(\s|;|$|\[)", text), "keyhop is never built"
    assert re.search(r"/opt/keyhop/bin/pip install", text), "nothing installs into /opt/keyhop"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^keyhop\s*=\s*"proxy\.cli:main"', pyproject, re.M)
