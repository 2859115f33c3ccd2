"""Promises the image makes that the chart relies on (hadolint runs in `make lint`)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
VALUES = yaml.safe_load((REPO / "charts" / "aks-kms-operator" / "values.yaml").read_text())


def instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def test_base_is_python_311_pinned_by_patch_tag() -> None:
    (arg,) = [a for a in instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", arg), arg
    assert instructions("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_runs_as_the_uid_the_chart_expects() -> None:
    (user,) = instructions("USER")
    uid, gid = user.split(":")
    assert int(uid) == VALUES["podSecurityContext"]["runAsUser"] != 0
    assert int(gid) == VALUES["podSecurityContext"]["runAsGroup"]


def test_runtime_dependencies_only() -> None:
    code = "\n".join(ln for ln in DOCKERFILE.splitlines() if not ln.lstrip().startswith("#"))
    assert "[" not in code.split("pip install", 1)[1].split("\n", 1)[0], "no extras in the image"
    assert "pip install --compile . " in code


def test_entrypoint_is_the_operator() -> None:
    assert instructions("ENTRYPOINT") == ['["aks-kms-operator"]']
    (cmd,) = instructions("CMD")
    assert cmd.startswith('["run", "--liveness=http://0.0.0.0:8080/healthz"')


def test_build_context_is_only_what_the_image_needs() -> None:
    lines = [ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!operator/"} <= set(lines)
