"""Every --help of aks-kms-operator (and its lab) reads as plain text and shows an example.

argparse prints descriptions as they are: reStructuredText markup from a docstring (double
backticks) used to reach users verbatim. New subcommands are found by walking the parsers, so one
added later without an example fails here.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from aks_kms_lab import cli as lab_cli
from aks_kms_operator import cli


def _walk(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _walk(sub, f"{name} {sub_name}")


PARSERS = dict([*_walk(cli.build_parser(), "aks-kms-operator"),
                *_walk(lab_cli.build_parser(), "aks-kms-operator lab")])


def test_every_subcommand_is_covered() -> None:
    assert {"aks-kms-operator run", "aks-kms-operator plan", "aks-kms-operator lab",
            "aks-kms-operator lab up", "aks-kms-operator lab verify"} <= set(PARSERS)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_is_plain_text_with_an_example(name: str) -> None:
    text = PARSERS[name].format_help()
    assert "``" not in text, f"{name} --help shows reStructuredText markup:\n{text}"
    assert ":func:" not in text and ":class:" not in text, text
    assert "example" in text.lower(), f"{name} --help has no example:\n{text}"
    assert PARSERS[name].description, f"{name} --help says nothing about what it does"


def test_usage_errors_do_not_look_like_a_planned_change(capsys: pytest.CaptureFixture[str]) -> None:
    """plan exits 2 for "change planned": a typo on the command line must not exit 2 too."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plan", "--output", "yaml", "x"])
    assert exit_info.value.code == cli.EXIT_USAGE != 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plan"])
    assert exit_info.value.code == cli.EXIT_USAGE
