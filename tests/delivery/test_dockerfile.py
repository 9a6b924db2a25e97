"""Static checks of the Dockerfile (no Docker engine here): the properties the issue asks for."""

from __future__ import annotations

import re
from typing import Any

import pytest


def _stages(tools: Any) -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = (tools.ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    stages: list[list[str]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return [s for s in stages if s]


@pytest.fixture(scope="module")
def final(tools: Any) -> list[str]:
    return _stages(tools)[-1]


def test_multi_stage_with_a_slim_python_final_image(tools: Any, final: list[str]) -> None:
    stages = _stages(tools)
    froms = [s[0] for s in stages if s[0].upper().startswith("FROM")]
    assert len(froms) >= 2
    text = (tools.ROOT / "Dockerfile").read_text()
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim\b", text)
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    assert any(re.match(r"COPY --from=builder /opt/capo /opt/capo$", i) for i in final)


def test_final_image_has_no_build_tools_and_no_package_installs(final: list[str]) -> None:
    for instruction in final:
        assert not instruction.upper().startswith("RUN"), instruction
        assert not re.search(r"\b(gcc|build-essential|apt-get|pip install)\b", instruction), instruction


def test_runs_as_numeric_non_root_user(final: list[str]) -> None:
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and re.fullmatch(r"65532(:65532)?", users[-1])


def test_environment_entrypoint_and_no_healthcheck(tools: Any, final: list[str]) -> None:
    env = " ".join(i for i in final if i.upper().startswith("ENV "))
    assert "TZ=UTC" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    assert 'ENTRYPOINT ["capo-operator"]' in final
    assert 'CMD ["run"]' in final
    assert "HEALTHCHECK" not in (tools.ROOT / "Dockerfile").read_text().replace("# No HEALTHCHECK", "")


def test_build_context_is_only_the_package(tools: Any) -> None:
    ignore = (tools.ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("**") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!capo_operator/"]
    copies = [i for s in _stages(tools) for i in s if i.upper().startswith("COPY") and "--from" not in i]
    sources = {src for c in copies for src in c.split()[1:-1]}
    assert sources <= {"pyproject.toml", "README.md", "capo_operator"}
