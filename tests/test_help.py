"""Every command's --help renders: the top level and each sub-command, nested ones included.

The commands are found by walking the argparse tree, so a new sub-command is covered without
editing this file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from fdalign.cli import build_parser, main


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Yield ``(path, parser)`` for ``parser`` and every sub-parser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


def _commands() -> list[tuple[str, ...]]:
    return [path for path, _ in _walk(build_parser())]


def test_the_walk_finds_nested_commands():
    paths = set(_commands())
    for expected in [(), ("train",), ("meta-eval",), ("data", "check"), ("world", "render")]:
        assert expected in paths, f"{expected} missing from the command tree"


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "fdalign")
def test_help_renders(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fdalign"), out[:200]
    assert " ".join(("fdalign",) + path) in out.splitlines()[0]


def test_bare_fdalign_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_python_m_fdalign_help_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-m", "fdalign", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "meta-eval" in done.stdout and "Traceback" not in done.stderr
