"""MkDocs hook: a line ``<!-- options: fdalign.train.config.TrainConfig eval -->`` becomes the table of that
config dataclass's fields (name, type, default, help).

A field's help is its ``option(...)`` metadata, else the help of the flag of the same name in the named
``fdalign`` sub-command (``eval`` above; the dataclasses of eval / meta-eval are filled from their flags),
else its entry in the class docstring's ``Attributes:`` section.
A field with neither stops the build: every option users can set is documented.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- options: (?P<cls>[\w.]+)(?: (?P<command>[\w-]+))? -->$", re.M)


def _flag_helps(command: str | None) -> dict[str, str]:
    """``{dest: help}`` of every option of ``fdalign COMMAND`` (nested sub-commands included)."""
    if not command:
        return {}
    from fdalign.cli import build_parser

    found: dict[str, str] = {}

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:  # argparse has no public listing of its actions
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if not path or path[0] == name:
                        walk(sub, path[1:])
            elif not path and action.help and action.help != argparse.SUPPRESS:
                found.setdefault(action.dest, action.help)

    walk(build_parser(), [command])
    return found


def _attribute_helps(cls: type) -> dict[str, str]:
    """``{name: text}`` of the ``Attributes:`` section of the class docstring (Google style)."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    found: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        m = re.match(r"^    (\w+)(?: \([^)]*\))?: (.*)$", line)
        if m:
            name, found[m[1]] = m[1], m[2]
        elif name and line.startswith("        "):
            found[name] += " " + line.strip()
        elif line.strip():
            name = None
    return found


def _cell(text: str) -> str:
    # pipes would split the cell; square brackets would read as Markdown reference links ([val/] [test/])
    return " ".join(str(text).split()).replace("|", "\\|").replace("[", "\\[")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{f.default_factory()!r}`"
    return "required"


def options_table(dotted: str, command: str | None) -> str:
    module, name = dotted.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    helps = {**_attribute_helps(cls), **_flag_helps(command)}
    rows, missing = [], []
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help") or helps.get(f.name)
        if not text:
            missing.append(f.name)
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append(f"| `{f.name}` | `{_cell(kind)}` | {_cell(_default(f))} | {_cell(text)} |")
    if missing:
        raise PluginError(f"{dotted}: no help for the field(s) {', '.join(missing)}; give them option(..., help)")
    return "\n".join(["| field | type | default | what it sets |", "|---|---|---|---|", *rows])


def on_page_markdown(markdown: str, page, config, files) -> str:
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    return MARKER.sub(lambda m: options_table(m["cls"], m["command"]), markdown)
