"""Every command's --help (found by walking the parser, so a new command cannot be missed) has a one-line
description and an example; ``sftlab --help`` lists an example per command."""

from __future__ import annotations

import argparse

import pytest

from sftlab.cli import build_parser, main


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from walk(sub, (*path, name))


COMMANDS = [path for path, _ in walk(build_parser())]


def test_walk_finds_the_commands():
    names = {" ".join(p) for p in COMMANDS}
    assert {"train", "chat", "generate", "report", "runs", "data inspect", "config show", "tokenizer train"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_help_has_a_description_and_an_example(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    blocks = out.split("\n\n")
    assert blocks[0].startswith("usage: sftlab " + " ".join(path))
    description = blocks[1].strip()
    assert description and not description.startswith(("positional arguments", "options")), out
    examples = [line for line in out.splitlines() if line.startswith("example: sftlab ")]
    assert len(examples) == 1 and examples[0].startswith("example: sftlab " + path[0]), out


def test_top_level_help_lists_an_example_per_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    top = {p[0] for p in COMMANDS}
    for name in top:
        assert f"\n  sftlab {name}" in out.split("examples (sftlab COMMAND --help for more):")[1], name
